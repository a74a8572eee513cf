/*
 * fenv.c: the floating-point environment rule, run as `test_fenv ENGINE`
 * (fiber, thread or buffer) at windows 1, 2 and the default.  The rule
 * (docs/API.md): the source always runs with the floating-point control
 * modes of the thread that called lockstep_run, whichever stack calls it;
 * each consumer starts with the caller's modes at open, and a change it
 * makes stays its own (neither the source, another consumer nor the caller
 * sees it); a change the source makes is the caller's, as if the caller
 * had made it.  Each check reads the mode twice: fegetround (the x87
 * control word on x86-64) and what a double-to-float conversion does (the
 * MXCSR on x86-64, the FPCR on aarch64), so both registers are covered.
 */
#include "check.h"
#include "engine_arg.h"
#include "lockstep.h"
#include "rounding.h"

#include <fenv.h>
#include <stdint.h>

static lockstep_engine engine;

#define N_ITEMS 1000

/* Returns 1 when the calling thread's mode is mode, by both readings. */
static int mode_is(int mode)
{
    int conv = mode == FE_TOWARDZERO ? FE_DOWNWARD : mode;
    return fegetround() == mode && conversion_mode() == conv;
}

/* ------------------------------------------------------------------------
 * A source and consumers that check the mode on every call.
 * ------------------------------------------------------------------------ */

typedef struct {
    int64_t next, limit;
    int expect;        /* the mode every call must see */
    int set_mode;      /* if not -1: set this mode on the call for item set_at, then expect it */
    int64_t set_at;
    long wrong;        /* calls that saw another mode */
} checking_source;

static int checking_pull(void *arg, void *item)
{
    checking_source *src = arg;
    if (src->next == src->set_at && src->set_mode != -1) {
        fesetround(src->set_mode);
        src->expect = src->set_mode;
    }
    if (!mode_is(src->expect))
        src->wrong++;
    if (src->next >= src->limit)
        return 0;
    *(int64_t *)item = src->next++;
    return 1;
}

typedef struct {
    int expect_start;  /* the mode it must find when it starts */
    int set_after;     /* set own_mode after this many items; -1: never */
    int own_mode;
    long wrong;        /* items at which it saw a mode not its own */
    int64_t count;
} checking_consumer;

/* Checks its mode before its first item and after every lockstep_next;
 * from item set_after on, it expects the mode it set itself. */
static int checking_fn(lockstep_iter *it, void *arg)
{
    checking_consumer *c = arg;
    int expect = c->expect_start;
    if (!mode_is(expect))
        c->wrong++;
    for (;;) {
        if (c->count == c->set_after) {
            fesetround(c->own_mode);
            expect = c->own_mode;
        }
        const int64_t *x = lockstep_next(it);
        if (!mode_is(expect))
            c->wrong++;
        if (x == NULL)
            break;
        c->count++;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * The tests.
 * ------------------------------------------------------------------------ */

/* Consumers change the mode, at once or midway; the source and a consumer
 * that changes nothing keep the caller's; the caller keeps its own. */
static void test_consumer_changes_stay_own(int caller_mode, size_t window)
{
    fesetround(caller_mode);
    checking_source src = {0, N_ITEMS, caller_mode, -1, 0, 0};
    checking_consumer cs[3] = {
        {caller_mode, 0, FE_UPWARD, 0, 0},          /* changes at once */
        {caller_mode, -1, 0, 0, 0},                 /* never changes */
        {caller_mode, 5, FE_TOWARDZERO, 0, 0},      /* changes midway */
    };
    lockstep_consumer list[3] = {{checking_fn, &cs[0]}, {checking_fn, &cs[1]}, {checking_fn, &cs[2]}};
    lockstep_options o = engine_opts(engine, window, NULL);
    CHECK_EQ(lockstep_run(checking_pull, &src, sizeof(int64_t), list, 3, &o), 0);
    CHECK_EQ(src.wrong, 0);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(cs[i].wrong, 0);
        CHECK_EQ(cs[i].count, N_ITEMS);
    }
    CHECK(mode_is(caller_mode));
    fesetround(FE_TONEAREST);
}

/* The source changes its own mode on the call for item set_at: it keeps
 * it on every later call from whatever stack, the consumers (started at
 * open) do not see it, and the caller has it after the run, as if it had
 * called the source itself.  At item 0 the producer makes the call; at
 * item N_ITEMS / 2 a consumer's context does on the fiber engine (the
 * window is refilled by the consumer that ends a round). */
static void test_source_change_is_callers(size_t window, int64_t set_at)
{
    fesetround(FE_TONEAREST);
    checking_source src = {0, N_ITEMS, FE_TONEAREST, FE_DOWNWARD, set_at, 0};
    checking_consumer cs[2] = {{FE_TONEAREST, -1, 0, 0, 0}, {FE_TONEAREST, 3, FE_UPWARD, 0, 0}};
    lockstep_consumer list[2] = {{checking_fn, &cs[0]}, {checking_fn, &cs[1]}};
    lockstep_options o = engine_opts(engine, window, NULL);
    CHECK_EQ(lockstep_run(checking_pull, &src, sizeof(int64_t), list, 2, &o), 0);
    CHECK_EQ(src.wrong, 0);
    CHECK_EQ(cs[0].wrong, 0);
    CHECK_EQ(cs[1].wrong, 0);
    CHECK(mode_is(FE_DOWNWARD));
    fesetround(FE_TONEAREST);
}

/* Push mode: consumers start with the modes the caller had at open; the
 * caller changing its mode between pushes is its own affair, and a
 * consumer's change never reaches the caller. */
static void test_push(size_t window)
{
    fesetround(FE_UPWARD);
    checking_consumer cs[2] = {{FE_UPWARD, -1, 0, 0, 0}, {FE_UPWARD, 2, FE_DOWNWARD, 0, 0}};
    lockstep_consumer list[2] = {{checking_fn, &cs[0]}, {checking_fn, &cs[1]}};
    lockstep_options o = engine_opts(engine, window, NULL);
    lockstep_stream *s;
    CHECK_EQ(lockstep_open(&s, sizeof(int64_t), list, 2, &o), 0);
    if (s == NULL)
        return;
    fesetround(FE_TONEAREST);
    long wrong = 0, short_pushes = 0;
    for (int64_t i = 0; i < N_ITEMS; i++) {
        short_pushes += lockstep_push(s, &i, 1) != 2;
        wrong += !mode_is(FE_TONEAREST);
    }
    CHECK_EQ(short_pushes, 0);
    CHECK_EQ(wrong, 0);
    CHECK_EQ(lockstep_close(s), 0);
    CHECK(mode_is(FE_TONEAREST));
    CHECK_EQ(cs[0].wrong, 0);
    CHECK_EQ(cs[1].wrong, 0);
    CHECK_EQ(cs[0].count, N_ITEMS);
    fesetround(FE_TONEAREST);
}

int main(int argc, char **argv)
{
    int status;
    if (!engine_test_begin(argc, argv, &engine, &status))
        return status;
    CHECK(mode_is(FE_TONEAREST));
    const size_t windows[] = {1, 2, 0}; /* 0: the engine's default */
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        test_consumer_changes_stay_own(FE_TONEAREST, windows[w]);
        test_consumer_changes_stay_own(FE_DOWNWARD, windows[w]);
        test_source_change_is_callers(windows[w], 0);
        test_source_change_is_callers(windows[w], N_ITEMS / 2);
        test_push(windows[w]);
    }
    char label[64];
    snprintf(label, sizeof label, "fenv[%s]", lockstep_engine_name(engine));
    return CHECK_SUMMARY(label);
}
