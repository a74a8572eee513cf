/*
 * conformance.c: the one conformance suite every engine must pass.  Run it
 * as `test_conformance ENGINE` (fiber, thread or buffer).  It covers the
 * semantics the README promises: order, early exit and the pull bound,
 * cancellation, the deterministic outcome, push API, nesting, bad input,
 * misuse, scale, and allocation failure.  Beyond hand-written cases it runs
 * thousands of random scripted runs and compares each with an independent
 * model of strict lockstep and with the buffer engine (the oracle).
 */
#include "check.h"
#include "engine_arg.h"
#include "counter_source.h"
#include "push_chunks.h"
#include "internal.h" /* lockstep__fault_arm, for the allocation-failure test */
#include "lockstep.h"

#include <inttypes.h>
#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

static lockstep_engine engine;
static int is_buffer; /* the buffer engine is exempt from the pull bound */

/* ------------------------------------------------------------------------
 * Sources.
 * ------------------------------------------------------------------------ */


/* ------------------------------------------------------------------------
 * Scripted consumers: the building block of the model-based tests.
 * ------------------------------------------------------------------------ */

enum { SUM, STOP_AT, FAIL_AT, NEST_AT };
/* How a scripted consumer asks for items: lockstep_next, lockstep_take or
 * lockstep_read, up to `chunk` at a time, or a mix of all three. */
enum { BY_NEXT, BY_TAKE, BY_READ, BY_MIX, BY_COUNT };
#define READ_CHUNK_MAX 16
/* How a test feeds the stream: lockstep_run, lockstep_push or
 * lockstep_run_read. */
enum { FEED_RUN, FEED_PUSH, FEED_READ, FEED_COUNT };
static const char *const feed_names[FEED_COUNT] = {"run", "push", "run_read"};


typedef struct {
    int kind;
    uint64_t k;     /* STOP_AT/FAIL_AT/NEST_AT: after receiving k items */
    int fail_code;
    int by;         /* BY_* */
    size_t chunk;   /* BY_TAKE/BY_READ/BY_MIX: items asked per call */
    int64_t buf[READ_CHUNK_MAX];
    /* observed */
    int64_t sum, max;
    uint64_t count;
    uint64_t order_errors;
    int saw_cancel, saw_end, returned;
    int nest_rc;
} script;

static void script_init(script *sc, int kind, uint64_t k, int fail_code)
{
    memset(sc, 0, sizeof *sc);
    sc->kind = kind;
    sc->k = k;
    sc->fail_code = fail_code;
    sc->max = INT64_MIN;
    sc->chunk = 1;
}

/* Asks for the next items the script's way, never past its scripted stop
 * (k), and returns them with *got set (NULL and 0 when there are none). */
static const int64_t *script_pull(lockstep_iter *it, script *sc, size_t *got)
{
    size_t max = sc->chunk;
    int limited = sc->kind == STOP_AT || sc->kind == FAIL_AT || (sc->kind == NEST_AT && !sc->nest_rc);
    if (limited && sc->k > sc->count && sc->k - sc->count < max)
        max = (size_t)(sc->k - sc->count);
    int by = sc->by == BY_MIX ? (int)(sc->count % 3) : sc->by;
    if (by == BY_READ && max > READ_CHUNK_MAX)
        max = READ_CHUNK_MAX;
    switch (by) {
    case BY_TAKE:
        return lockstep_take(it, max, got);
    case BY_READ:
        *got = lockstep_read(it, sc->buf, max);
        return *got ? sc->buf : NULL;
    default: {
        const int64_t *item = lockstep_next(it);
        *got = item != NULL;
        return item;
    }
    }
}

static int sum_max_consumer(lockstep_iter *it, void *arg);

/* Runs a small inner run from inside a consumer (nesting). */
static int nested_run(void)
{
    script inner[2];
    script_init(&inner[0], SUM, 0, 0);
    script_init(&inner[1], STOP_AT, 7, 0);
    lockstep_consumer cs[2] = {{sum_max_consumer, &inner[0]}, {sum_max_consumer, &inner[1]}};
    counter_source src = counter(100);
    lockstep_options o = LOCKSTEP_OPTIONS_INIT;
    o.engine = engine;
    o.window = 3;
    int rc = lockstep_run(counter_pull, &src, sizeof(int64_t), cs, 2, &o);
    if (rc != 0 || inner[0].sum != 4950 || inner[1].count != 7)
        return rc ? rc : -1;
    return 0;
}

/* Consumes int64 items that should equal their stream position, keeping
 * sum, max and count, and stops, fails or nests as scripted. */
static int sum_max_consumer(lockstep_iter *it, void *arg)
{
    script *sc = arg;
    for (;;) {
        if (sc->kind == STOP_AT && sc->count == sc->k)
            break;
        if (sc->kind == FAIL_AT && sc->count == sc->k) {
            sc->returned = 1;
            return sc->fail_code;
        }
        if (sc->kind == NEST_AT && sc->count == sc->k && sc->nest_rc == 0)
            sc->nest_rc = nested_run() ? -1 : 1;
        size_t got;
        const int64_t *items = script_pull(it, sc, &got);
        if (items == NULL) {
            sc->saw_cancel = lockstep_cancelled(it);
            sc->saw_end = !sc->saw_cancel;
            break;
        }
        if (lockstep_position(it) != sc->count + got)
            sc->order_errors++;
        for (size_t i = 0; i < got; i++) {
            if ((uint64_t)items[i] != sc->count)
                sc->order_errors++;
            sc->sum += items[i];
            if (items[i] > sc->max)
                sc->max = items[i];
            sc->count++;
        }
    }
    sc->returned = 1;
    return 0;
}

/* ------------------------------------------------------------------------
 * The model: what strict lockstep gives, computed without running anything.
 * ------------------------------------------------------------------------ */

typedef struct {
    int code;
    long failed;
    uint64_t position;
    uint64_t last_stop; /* where the last consumer stops when nothing fails */
} outcome;

/* Where consumer sc stops on its own in a stream of n items. */
static uint64_t natural_end(const script *sc, uint64_t n)
{
    if (sc->kind == STOP_AT || sc->kind == FAIL_AT)
        return sc->k < n ? sc->k : n;
    return n;
}

static outcome model(const script *sc, size_t count, const counter_source *src)
{
    outcome m = {0, LOCKSTEP_FAILED_NONE, 0, 0};
    uint64_t n = src->fail_at < src->limit ? src->fail_at : src->limit;
    for (size_t i = 0; i < count; i++) {
        uint64_t end = natural_end(&sc[i], n);
        if (end > m.last_stop)
            m.last_stop = end;
        if (sc[i].kind == FAIL_AT && sc[i].k <= n &&
            (m.failed == LOCKSTEP_FAILED_NONE || sc[i].k < m.position)) {
            m.failed = (long)i;
            m.position = sc[i].k;
            m.code = sc[i].fail_code;
        }
    }
    /* The source's failure counts when some consumer asks for that item
     * and no consumer failed at or before it. */
    if (src->fail_at != UINT64_MAX && src->fail_at <= src->limit) {
        int wanted = 0;
        for (size_t i = 0; i < count; i++)
            if (sc[i].kind == SUM || sc[i].kind == NEST_AT || sc[i].k > src->fail_at)
                wanted = 1;
        if (wanted && (m.failed == LOCKSTEP_FAILED_NONE || m.position > src->fail_at)) {
            m.failed = LOCKSTEP_FAILED_SOURCE;
            m.position = src->fail_at;
            m.code = src->fail_code;
        }
    }
    return m;
}

/* Checks one finished run against the model, consumer by consumer. */
static void check_against_model(const script *sc, size_t count, const counter_source *src,
                                int rc, const lockstep_report *rep, size_t window)
{
    outcome m = model(sc, count, src);
    CHECK_EQ(rc, m.code);
    CHECK_EQ(rep->code, rc);
    CHECK_EQ(rep->failed, m.failed);
    if (m.failed != LOCKSTEP_FAILED_NONE)
        CHECK_EQ(rep->position, m.position);
    uint64_t n = src->fail_at < src->limit ? src->fail_at : src->limit;
    for (size_t i = 0; i < count; i++) {
        uint64_t end = natural_end(&sc[i], n);
        CHECK(sc[i].returned);
        CHECK_EQ(sc[i].order_errors, 0);
        /* Untouched by the failure: it stops on its own before the failure's
         * position, or exactly there without asking for more. */
        int stops_itself = (sc[i].kind == STOP_AT || sc[i].kind == FAIL_AT) && sc[i].k == end;
        int untouched = m.failed == LOCKSTEP_FAILED_NONE || end < m.position ||
                        (end == m.position && stops_itself);
        uint64_t reached = untouched ? end : m.position;
        if (sc[i].kind == NEST_AT && sc[i].k < reached)
            CHECK_EQ(sc[i].nest_rc, 1);
        if (untouched) {
            /* Exactly its own items. */
            CHECK_EQ(sc[i].count, end);
            CHECK_EQ(sc[i].sum, (int64_t)(end * (end ? end - 1 : 0) / 2));
            CHECK_EQ(sc[i].saw_cancel, 0);
        } else if ((long)i != m.failed) {
            /* Cancelled: it saw at least every item before the failure and
             * knew it was cancelled, unless an engine ran it to its own end
             * before the failure was known. */
            CHECK(sc[i].count >= m.position && sc[i].count <= end);
            CHECK(sc[i].saw_cancel || sc[i].count == end);
        }
    }
    if (m.failed == LOCKSTEP_FAILED_NONE && !is_buffer) {
        /* The pull bound: nothing more than window - 1 past the last stop. */
        uint64_t w = rep->window;
        CHECK(window == 0 || w == window);
        CHECK(src->pulls >= m.last_stop);
        CHECK(src->pulls <= m.last_stop + w - 1);
        CHECK_EQ(rep->items_read, src->pulls);
    }
}

/* ------------------------------------------------------------------------
 * Hand-written cases.
 * ------------------------------------------------------------------------ */

/* The original question: sum and max of 1..999 in one pass. */
typedef struct {
    int next;
} range_source;

static int range_pull(void *arg, void *item)
{
    range_source *r = arg;
    if (r->next >= 1000)
        return 0;
    *(int64_t *)item = r->next++;
    return 1;
}

static int sum_fn(lockstep_iter *it, void *arg)
{
    const int64_t *x;
    while ((x = lockstep_next(it)) != NULL)
        *(int64_t *)arg += *x;
    return 0;
}

/* max through the real function, not the header's inline fast path. */
static int max_fn(lockstep_iter *it, void *arg)
{
    const void *(*next)(lockstep_iter *) = &lockstep_next;
    const int64_t *x;
    while ((x = next(it)) != NULL)
        if (*x > *(int64_t *)arg)
            *(int64_t *)arg = *x;
    return 0;
}

static void test_sum_and_max(void)
{
    static const size_t windows[] = {1, 2, 7, 0, 999, 1000, 5000};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        range_source r = {1};
        int64_t sum = 0, max = 0;
        lockstep_consumer cs[] = {{sum_fn, &sum}, {max_fn, &max}};
        lockstep_report rep;
        lockstep_options o = engine_opts(engine, windows[w], &rep);
        CHECK_EQ(lockstep_run(range_pull, &r, sizeof(int64_t), cs, 2, &o), 0);
        CHECK_EQ(sum, 499500);
        CHECK_EQ(max, 999);
        CHECK_EQ(rep.items_read, 999);
        CHECK_EQ(rep.failed, LOCKSTEP_FAILED_NONE);
        CHECK_EQ(rep.window, windows[w]                          ? windows[w]
                             : engine == LOCKSTEP_ENGINE_THREAD ? LOCKSTEP_DEFAULT_THREAD_WINDOW
                                                                : LOCKSTEP_DEFAULT_WINDOW);
    }
}

static void test_zero_consumers_and_items(void)
{
    counter_source src = counter(100);
    lockstep_options o = engine_opts(engine, 0, NULL);
    CHECK_EQ(lockstep_run(counter_pull, &src, 8, NULL, 0, &o), 0);
    CHECK_EQ(src.pulls, 0);

    script sc[2];
    script_init(&sc[0], SUM, 0, 0);
    script_init(&sc[1], SUM, 0, 0);
    lockstep_consumer cs[2] = {{sum_max_consumer, &sc[0]}, {sum_max_consumer, &sc[1]}};
    src = counter(0);
    CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 2, &o), 0);
    CHECK(sc[0].returned && sc[1].returned && sc[0].saw_end && sc[1].saw_end);
    CHECK_EQ(sc[0].count + sc[1].count, 0);
}

/* A consumer that returns before asking for anything costs no pull. */
static int return_at_once(lockstep_iter *it, void *arg)
{
    (void)it;
    (void)arg;
    return 0;
}

static void test_early_exit_and_infinite_source(void)
{
    for (size_t w = 1; w <= 64; w *= 4) {
        script sc[3];
        script_init(&sc[0], STOP_AT, 10, 0);
        script_init(&sc[1], STOP_AT, 3, 0);
        script_init(&sc[2], STOP_AT, 25, 0);
        lockstep_consumer cs[3] = {{sum_max_consumer, &sc[0]},
                                   {sum_max_consumer, &sc[1]},
                                   {sum_max_consumer, &sc[2]}};
        counter_source src = counter(is_buffer ? 1000 : UINT64_MAX);
        lockstep_report rep;
        lockstep_options o = engine_opts(engine, w, &rep);
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 3, &o), 0);
        CHECK_EQ(sc[0].count, 10);
        CHECK_EQ(sc[1].count, 3);
        CHECK_EQ(sc[2].count, 25);
        CHECK_EQ(sc[2].sum, 300);
        if (!is_buffer) {
            CHECK(src.pulls >= 25 && src.pulls <= 25 + w - 1);
            if (w == 1)
                CHECK_EQ(src.pulls, 25);
        }
    }
    lockstep_consumer none[2] = {{return_at_once, NULL}, {return_at_once, NULL}};
    counter_source src = counter(UINT64_MAX);
    lockstep_options o = engine_opts(engine, 1, NULL);
    if (!is_buffer) {
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, none, 2, &o), 0);
        CHECK_EQ(src.pulls, 0);
    }
}

static void test_failures(void)
{
    /* Consumer 1 fails at 10: the others are cancelled there. */
    for (size_t w = 1; w <= 256; w *= 16) {
        script sc[3];
        script_init(&sc[0], SUM, 0, 0);
        script_init(&sc[1], FAIL_AT, 10, 42);
        script_init(&sc[2], SUM, 0, 0);
        lockstep_consumer cs[3] = {{sum_max_consumer, &sc[0]},
                                   {sum_max_consumer, &sc[1]},
                                   {sum_max_consumer, &sc[2]}};
        counter_source src = counter(1000);
        lockstep_report rep;
        lockstep_options o = engine_opts(engine, w, &rep);
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 3, &o), 42);
        CHECK_EQ(rep.failed, 1);
        CHECK_EQ(rep.position, 10);
        CHECK(sc[0].returned && sc[2].returned);
        /* Cancelled consumers see every item before the failure, and no
         * more than the rest of the window it was met in: rounds alternate
         * direction, so consumer 2 may take the window before 1 fails. */
        CHECK(sc[2].saw_cancel && sc[2].count >= 10 && sc[2].count < 10 + w);
        CHECK(sc[0].saw_cancel || is_buffer);
        check_against_model(sc, 3, &src, 42, &rep, w);
    }
    /* Ties: the lowest index wins; a consumer beats the source. */
    {
        script sc[3];
        script_init(&sc[0], SUM, 0, 0);
        script_init(&sc[1], FAIL_AT, 5, 11);
        script_init(&sc[2], FAIL_AT, 5, 22);
        lockstep_consumer cs[3] = {{sum_max_consumer, &sc[0]},
                                   {sum_max_consumer, &sc[1]},
                                   {sum_max_consumer, &sc[2]}};
        counter_source src = counter(100);
        src.fail_at = 5;
        src.fail_code = -7;
        lockstep_report rep;
        lockstep_options o = engine_opts(engine, 4, &rep);
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 3, &o), 11);
        CHECK_EQ(rep.failed, 1);
    }
    /* The source fails at 50: items before it are delivered. */
    {
        script sc[2];
        script_init(&sc[0], SUM, 0, 0);
        script_init(&sc[1], STOP_AT, 20, 0);
        lockstep_consumer cs[2] = {{sum_max_consumer, &sc[0]}, {sum_max_consumer, &sc[1]}};
        counter_source src = counter(100);
        src.fail_at = 50;
        src.fail_code = -9;
        lockstep_report rep;
        lockstep_options o = engine_opts(engine, 64, &rep);
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 2, &o), -9);
        CHECK_EQ(rep.failed, LOCKSTEP_FAILED_SOURCE);
        CHECK_EQ(rep.position, 50);
        CHECK_EQ(sc[0].count, 50);
        CHECK(sc[0].saw_cancel);
        CHECK_EQ(sc[1].count, 20);
    }
    /* A source error met while reading ahead is ignored when nobody needs
     * that item. */
    {
        script sc[1];
        script_init(&sc[0], STOP_AT, 40, 0);
        lockstep_consumer cs[1] = {{sum_max_consumer, &sc[0]}};
        counter_source src = counter(100);
        src.fail_at = 50;
        src.fail_code = -9;
        lockstep_options o = engine_opts(engine, 64, NULL);
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 1, &o), 0);
        CHECK_EQ(sc[0].count, 40);
    }
}

/* Reads to the end, then fails: in strict lockstep it learns of the end
 * only after every consumer that fails at that position without asking
 * for more has done so, and after the source's read. */
static int fail_after_end(lockstep_iter *it, void *arg)
{
    while (lockstep_next(it) != NULL) {
    }
    return lockstep_cancelled(it) ? 0 : *(int *)arg;
}

static void test_failure_after_end_ties(void)
{
    static const size_t windows[] = {1, 2, 3, 0};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        int after_end_code = 5;
        script sc[2];
        script_init(&sc[0], FAIL_AT, 2, 7); /* fails at 2 without asking for item 2 */
        lockstep_consumer cs[2] = {{fail_after_end, &after_end_code}, {sum_max_consumer, &sc[0]}};
        counter_source src = counter(2);
        lockstep_report rep;
        lockstep_options o = engine_opts(engine, windows[w], &rep);
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 2, &o), 7);
        CHECK_EQ(rep.failed, 1);
        CHECK_EQ(rep.position, 2);

        /* Alone, the consumer that fails after the end decides the run. */
        src = counter(2);
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 1, &o), 5);
        CHECK_EQ(rep.failed, 0);
        CHECK_EQ(rep.position, 2);

        /* Two consumers fail after the end: the lower index wins, whichever
         * of them the last round runs first (the other learns of the end
         * too, instead of being cancelled by the first failure). */
        int other_code = 6;
        lockstep_consumer both[2] = {{fail_after_end, &other_code},
                                     {fail_after_end, &after_end_code}};
        for (int64_t n = 0; n < 5; n++) {
            src = counter(n);
            CHECK_EQ(lockstep_run(counter_pull, &src, 8, both, 2, &o), 6);
            CHECK_EQ(rep.failed, 0);
            CHECK_EQ(rep.position, n);
        }

        /* The source failing at 2 comes before an after-the-end failure
         * there: the consumer asked for item 2 and was cancelled. */
        src = counter(10);
        src.fail_at = 2;
        src.fail_code = -3;
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 1, &o), -3);
        CHECK_EQ(rep.failed, LOCKSTEP_FAILED_SOURCE);
    }
}

/* Each consumer keeps its previous pointer and checks it until the next
 * call: items are copied whole, and stay valid as promised. */
typedef struct {
    unsigned char bytes[1000];
} big_item;

typedef struct {
    uint64_t next;
    uint64_t limit;
} big_source;

static int big_pull(void *arg, void *item)
{
    big_source *b = arg;
    if (b->next == b->limit)
        return 0;
    memset(item, (int)(b->next % 251), sizeof(big_item));
    b->next++;
    return 1;
}

static int big_consumer(lockstep_iter *it, void *arg)
{
    long *errors = arg;
    const big_item *item;
    uint64_t i = 0;
    while ((item = lockstep_next(it)) != NULL) {
        for (size_t b = 0; b < sizeof item->bytes; b += 97)
            if (item->bytes[b] != (unsigned char)(i % 251))
                (*errors)++;
        i++;
    }
    return i == 3000 ? 0 : 1;
}

static void test_big_items(void)
{
    long errors[3] = {0, 0, 0};
    lockstep_consumer cs[3] = {{big_consumer, &errors[0]}, {big_consumer, &errors[1]},
                               {big_consumer, &errors[2]}};
    big_source b = {0, 3000};
    lockstep_options o = engine_opts(engine, 33, NULL);
    CHECK_EQ(lockstep_run(big_pull, &b, sizeof(big_item), cs, 3, &o), 0);
    CHECK_EQ(errors[0] + errors[1] + errors[2], 0);
}

static void test_nesting(void)
{
    script sc[3];
    script_init(&sc[0], NEST_AT, 0, 0);
    script_init(&sc[1], NEST_AT, 77, 0);
    script_init(&sc[2], SUM, 0, 0);
    lockstep_consumer cs[3] = {{sum_max_consumer, &sc[0]},
                               {sum_max_consumer, &sc[1]},
                               {sum_max_consumer, &sc[2]}};
    counter_source src = counter(500);
    lockstep_report rep;
    lockstep_options o = engine_opts(engine, 16, &rep);
    CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 3, &o), 0);
    CHECK_EQ(sc[0].nest_rc, 1);
    CHECK_EQ(sc[1].nest_rc, 1);
    check_against_model(sc, 3, &src, 0, &rep, 16);
}

/* A pipeline stage: an outer consumer feeds its own iterator, doubled, to
 * an inner run as that run's source.  The inner source may run on any of
 * the inner run's contexts (the fiber engine refills from the consumer that
 * ends a round), so an outer switch can start from an inner fiber's stack:
 * the sanitizer builds check that this is annotated right. */
typedef struct {
    size_t window;  /* the inner run's */
    int rc;         /* the inner run's return */
    script inner[3];
    uint64_t fed;   /* items the stage took from the outer run */
} pipe_stage;

static int pipe_pull(void *arg, void *item)
{
    lockstep_iter *outer = arg;
    const int64_t *x = lockstep_next(outer);
    if (x == NULL)
        return 0;
    *(int64_t *)item = *x;
    return 1;
}

static int pipe_consumer(lockstep_iter *it, void *arg)
{
    pipe_stage *ps = arg;
    script_init(&ps->inner[0], SUM, 0, 0);
    script_init(&ps->inner[1], STOP_AT, 40, 0);
    script_init(&ps->inner[2], SUM, 0, 0);
    lockstep_consumer cs[3] = {{sum_max_consumer, &ps->inner[0]},
                               {sum_max_consumer, &ps->inner[1]},
                               {sum_max_consumer, &ps->inner[2]}};
    lockstep_options o = LOCKSTEP_OPTIONS_INIT;
    o.engine = engine;
    o.window = ps->window;
    ps->rc = lockstep_run(pipe_pull, it, sizeof(int64_t), cs, 3, &o);
    ps->fed = lockstep_position(it);
    return 0;
}

static void test_pipeline(void)
{
    static const size_t windows[][2] = {{1, 1}, {1, 3}, {4, 1}, {16, 7}, {0, 0}};
    for (size_t k = 0; k < sizeof windows / sizeof windows[0]; k++) {
        pipe_stage ps[2] = {{.window = windows[k][1]}, {.window = windows[k][0]}};
        script plain;
        script_init(&plain, SUM, 0, 0);
        lockstep_consumer cs[3] = {{pipe_consumer, &ps[0]}, {sum_max_consumer, &plain},
                                   {pipe_consumer, &ps[1]}};
        counter_source src = counter(300);
        lockstep_options o = engine_opts(engine, windows[k][0], NULL);
        CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 3, &o), 0);
        CHECK_EQ(plain.sum, 300 * 299 / 2);
        for (int j = 0; j < 2; j++) {
            CHECK_EQ(ps[j].rc, 0);
            CHECK_EQ(ps[j].fed, 300);
            CHECK_EQ(ps[j].inner[0].sum, 300 * 299 / 2);
            CHECK_EQ(ps[j].inner[0].order_errors, 0);
            CHECK_EQ(ps[j].inner[1].count, 40);
            CHECK_EQ(ps[j].inner[2].max, 299);
        }
    }
}

static int noop_pull(void *arg, void *item)
{
    (void)arg;
    (void)item;
    return 0;
}

static void test_bad_input(void)
{
    lockstep_consumer ok[1] = {{return_at_once, NULL}};
    lockstep_consumer null_fn[2] = {{return_at_once, NULL}, {NULL, NULL}};
    lockstep_options o = engine_opts(engine, 0, NULL);
    CHECK_EQ(lockstep_run(NULL, NULL, 8, ok, 1, &o), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_run(noop_pull, NULL, 0, ok, 1, &o), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_run(noop_pull, NULL, 8, NULL, 1, &o), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_run(noop_pull, NULL, 8, null_fn, 2, &o), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_run(noop_pull, NULL, 8, ok, SIZE_MAX, &o), LOCKSTEP_EINVAL);
    o.window = SIZE_MAX;
    CHECK_EQ(lockstep_run(noop_pull, NULL, 8, ok, 1, &o), LOCKSTEP_EINVAL);
    o.window = LOCKSTEP_MAX_WINDOW;
    CHECK_EQ(lockstep_run(noop_pull, NULL, SIZE_MAX / 2, ok, 1, &o), LOCKSTEP_EINVAL);
    o.window = 0;
    o.stack_size = 100;
    CHECK_EQ(lockstep_run(noop_pull, NULL, 8, ok, 1, &o), LOCKSTEP_EINVAL);
    o.stack_size = 0;
    o.reserved[0] = &o;
    CHECK_EQ(lockstep_run(noop_pull, NULL, 8, ok, 1, &o), LOCKSTEP_EINVAL);
    o.reserved[0] = NULL;
    o.engine = (lockstep_engine)99;
    CHECK_EQ(lockstep_run(noop_pull, NULL, 8, ok, 1, &o), LOCKSTEP_EINVAL);
    CHECK(lockstep_next(NULL) == NULL);
    CHECK_EQ(lockstep_cancelled(NULL), 0);
    lockstep_stream *s = NULL;
    CHECK_EQ(lockstep_open(NULL, 8, ok, 1, NULL), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_push(NULL, "x", 1), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_fail(NULL, 1), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_close(NULL), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_live(NULL), LOCKSTEP_EINVAL);
    (void)s;
}

/* ------------------------------------------------------------------------
 * Bulk access: lockstep_take, lockstep_read, lockstep_run_read.
 * ------------------------------------------------------------------------ */

/* What a span checker saw: items must be contiguous positions, and no take
 * may return more than the window. */
typedef struct {
    size_t window;      /* the run's window (items) */
    size_t max;         /* items asked per take */
    uint64_t count;
    size_t largest;     /* largest take */
    long errors;
} span_check;

static int take_spans(lockstep_iter *it, void *arg)
{
    span_check *c = arg;
    size_t got;
    const int64_t *items;
    while ((items = lockstep_take(it, c->max, &got)) != NULL) {
        if (got == 0 || got > c->max || (c->window && got > c->window))
            c->errors++;
        for (size_t i = 0; i < got; i++)
            if ((uint64_t)items[i] != c->count + i)
                c->errors++;
        c->count += got;
        if (got > c->largest)
            c->largest = got;
        if (lockstep_position(it) != c->count)
            c->errors++;
    }
    if (got != 0)
        c->errors++;
    return 0;
}

/* Mixes next, take and read on one cursor, and checks the edges: max 0
 * consumes nothing, NULL arguments return nothing. */
static int mixed_access(lockstep_iter *it, void *arg)
{
    span_check *c = arg;
    int64_t buf[5];
    for (uint64_t round = 0;; round++) {
        size_t got = 0;
        const int64_t *items;
        uint64_t before = lockstep_position(it);
        CHECK(lockstep_take(it, 0, &got) == NULL && got == 0);
        CHECK_EQ(lockstep_read(it, buf, 0), 0);
        CHECK(lockstep_take(it, 3, NULL) == NULL);
        CHECK_EQ(lockstep_read(it, NULL, 3), 0);
        CHECK_EQ(lockstep_position(it), before);
        switch (round % 3) {
        case 0:
            items = lockstep_next(it);
            got = items != NULL;
            break;
        case 1:
            items = lockstep_take(it, 4, &got);
            break;
        default:
            got = lockstep_read(it, buf, 5);
            items = got ? buf : NULL;
            break;
        }
        if (items == NULL)
            break;
        for (size_t i = 0; i < got; i++)
            if ((uint64_t)items[i] != c->count + i)
                c->errors++;
        c->count += got;
    }
    /* After the end, every access keeps returning nothing. */
    size_t got = 1;
    CHECK(lockstep_next(it) == NULL);
    CHECK(lockstep_take(it, 9, &got) == NULL && got == 0);
    CHECK_EQ(lockstep_read(it, buf, 5), 0);
    return 0;
}

static void test_take_and_read(void)
{
    CHECK(lockstep_take(NULL, 1, NULL) == NULL);
    size_t got = 7;
    CHECK(lockstep_take(NULL, 1, &got) == NULL && got == 0);
    CHECK_EQ(lockstep_read(NULL, &got, 1), 0);
    static const size_t windows[] = {1, 7, 4096, 0};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        for (int feed = FEED_RUN; feed <= FEED_READ; feed += FEED_READ - FEED_RUN) {
            lockstep_report rep;
            lockstep_options o = engine_opts(engine, windows[w], &rep);
            size_t bound = is_buffer ? 0 : windows[w]; /* buffer: the whole stream */
            span_check c[3] = {{bound, SIZE_MAX, 0, 0, 0},
                               {bound, 3, 0, 0, 0},
                               {0, 0, 0, 0, 0}};
            lockstep_consumer cs[3] = {{take_spans, &c[0]}, {take_spans, &c[1]},
                                       {mixed_access, &c[2]}};
            counter_source src = counter(1000);
            int rc = feed == FEED_READ
                         ? lockstep_run_read(counter_read, &src, sizeof(int64_t), cs, 3, &o)
                         : lockstep_run(counter_pull, &src, sizeof(int64_t), cs, 3, &o);
            CHECK_EQ(rc, 0);
            for (int i = 0; i < 3; i++) {
                CHECK_EQ(c[i].count, 1000);
                CHECK_EQ(c[i].errors, 0);
            }
            CHECK(c[1].largest <= 3);
            /* A per-item source fills whole windows (the thread engine's
             * segments are a quarter of it): one take gets several. */
            if (feed == FEED_RUN && windows[w] == 7 && !is_buffer)
                CHECK(c[0].largest > 1);
            if (is_buffer)
                CHECK_EQ(c[0].largest, 1000);
            CHECK_EQ(rep.items_read, 1000);
        }
    }
}

/* Sums bytes it reads, `chunk` at a time, and stops after `stop` of them. */
typedef struct {
    size_t chunk;
    uint64_t stop;
    uint64_t count, sum;
} byte_reader;

static int read_bytes(lockstep_iter *it, void *arg)
{
    byte_reader *r = arg;
    unsigned char buf[64];
    while (r->count < r->stop) {
        size_t want = r->chunk < sizeof buf ? r->chunk : sizeof buf;
        if (want > r->stop - r->count)
            want = (size_t)(r->stop - r->count);
        size_t got = lockstep_read(it, buf, want);
        if (got == 0)
            break;
        for (size_t i = 0; i < got; i++)
            r->sum += buf[i];
        r->count += got;
    }
    return 0;
}

/* Bytes i % 251, forever or up to limit; counts what it produced. */
typedef struct {
    uint64_t next, limit, produced;
    long bad_count; /* when nonzero: return this many once, whatever max is */
} byte_source;

static long byte_read(void *arg, void *items, size_t max)
{
    byte_source *b = arg;
    if (b->bad_count != 0 && b->next >= 100) {
        long bad = b->bad_count;
        b->bad_count = 0;
        return bad;
    }
    if (b->next >= b->limit)
        return 0;
    size_t n = max;
    if (n > b->limit - b->next)
        n = (size_t)(b->limit - b->next);
    for (size_t i = 0; i < n; i++)
        ((unsigned char *)items)[i] = (unsigned char)((b->next + i) % 251);
    b->next += n;
    b->produced += n;
    return (long)n;
}

static uint64_t byte_sum(uint64_t n)
{
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++)
        s += i % 251;
    return s;
}

/* A consumer that stops reading returns and detaches: the others go on to
 * the end, on every engine and window (the Go io.Pipe + MultiWriter idiom
 * deadlocks here: its writer blocks on the reader that stopped).  With an
 * infinite source, the run ends once every consumer has stopped, having
 * read at most window - 1 bytes past the last stop. */
static void test_bytes_detach_and_bound(void)
{
    static const size_t windows[] = {1, 7, 4096, 0};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        /* A hand-off per byte at window 1: fewer bytes there (the thread
         * engine takes microseconds per hand-off). */
        uint64_t n = windows[w] == 1 ? 3000 : 100000;
        byte_reader r[3] = {{1, 10, 0, 0}, {3, UINT64_MAX, 0, 0}, {64, n / 2, 0, 0}};
        lockstep_consumer cs[3] = {{read_bytes, &r[0]}, {read_bytes, &r[1]}, {read_bytes, &r[2]}};
        byte_source b = {0, n, 0, 0};
        lockstep_report rep;
        lockstep_options o = engine_opts(engine, windows[w], &rep);
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 3, &o), 0);
        CHECK_EQ(r[0].count, 10);
        CHECK_EQ(r[1].count, n);
        CHECK_EQ(r[1].sum, byte_sum(n));
        CHECK_EQ(r[2].count, n / 2);
        CHECK_EQ(r[2].sum, byte_sum(n / 2));
        CHECK_EQ(rep.items_read, n);
        if (is_buffer)
            continue;
        /* Every consumer stops early on an endless source. */
        r[1].stop = n / 3;
        for (int i = 0; i < 3; i++)
            r[i].count = r[i].sum = 0;
        b = (byte_source){0, UINT64_MAX, 0, 0};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 3, &o), 0);
        CHECK_EQ(r[2].count, n / 2);
        CHECK(b.produced >= n / 2 && b.produced <= n / 2 + rep.window - 1);
        /* Nobody asks: nothing is read. */
        lockstep_consumer none[2] = {{return_at_once, NULL}, {return_at_once, NULL}};
        b = (byte_source){0, UINT64_MAX, 0, 0};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, none, 2, &o), 0);
        CHECK_EQ(b.produced, 0);
    }
}

/* A byte pipeline: a consumer runs its own lockstep_run_read whose read
 * function is lockstep_read on the outer consumer's iterator. */
typedef struct {
    size_t window;
    int rc;
    byte_reader inner[2];
} byte_stage;

static long read_outer(void *arg, void *items, size_t max)
{
    return (long)lockstep_read(arg, items, max);
}

static int byte_stage_consumer(lockstep_iter *it, void *arg)
{
    byte_stage *st = arg;
    lockstep_consumer cs[2] = {{read_bytes, &st->inner[0]}, {read_bytes, &st->inner[1]}};
    lockstep_options o = engine_opts(engine, st->window, NULL);
    st->rc = lockstep_run_read(read_outer, it, 1, cs, 2, &o);
    return 0;
}

static void test_read_pipeline(void)
{
    static const size_t windows[][2] = {{1, 1}, {7, 3}, {0, 0}, {4096, 7}};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        uint64_t n = windows[w][0] == 1 ? 2000 : 50000;
        byte_stage st = {windows[w][1], -1, {{5, UINT64_MAX, 0, 0}, {64, 1000, 0, 0}}};
        byte_reader plain = {3, UINT64_MAX, 0, 0};
        lockstep_consumer cs[2] = {{byte_stage_consumer, &st}, {read_bytes, &plain}};
        byte_source b = {0, n, 0, 0};
        lockstep_options o = engine_opts(engine, windows[w][0], NULL);
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 2, &o), 0);
        CHECK_EQ(st.rc, 0);
        CHECK_EQ(st.inner[0].count, n);
        CHECK_EQ(st.inner[0].sum, byte_sum(n));
        CHECK_EQ(st.inner[1].count, 1000);
        CHECK_EQ(st.inner[1].sum, byte_sum(1000));
        CHECK_EQ(plain.sum, byte_sum(n));
    }
}

/* Bad input, and a read function that returns more than it was asked for. */
static long never_read(void *arg, void *items, size_t max)
{
    (void)arg;
    (void)items;
    (void)max;
    return 0;
}

static void test_run_read_bad_input(void)
{
    lockstep_consumer ok[1] = {{return_at_once, NULL}};
    lockstep_report rep;
    lockstep_options o = engine_opts(engine, 0, &rep);
    CHECK_EQ(lockstep_run_read(NULL, NULL, 1, ok, 1, &o), LOCKSTEP_EINVAL);
    CHECK_EQ(rep.failed, LOCKSTEP_FAILED_LIBRARY);
    CHECK_EQ(lockstep_run_read(never_read, NULL, 0, ok, 1, &o), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_run_read(never_read, NULL, 1, NULL, 1, &o), LOCKSTEP_EINVAL);
    o.window = SIZE_MAX;
    CHECK_EQ(lockstep_run_read(never_read, NULL, 1, ok, 1, &o), LOCKSTEP_EINVAL);
    o.window = 0;
    CHECK_EQ(lockstep_run_read(never_read, NULL, 1, ok, 1, &o), 0);

    /* A count over max is the source's failure, LOCKSTEP_EINVAL, at the
     * position of that read: it counts only if someone needs that item. */
    static const size_t windows[] = {1, 7, 4096, 0};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        byte_reader r[2] = {{5, UINT64_MAX, 0, 0}, {1, 20, 0, 0}};
        lockstep_consumer cs[2] = {{read_bytes, &r[0]}, {read_bytes, &r[1]}};
        byte_source b = {0, 1000, 0, LONG_MAX};
        o = engine_opts(engine, windows[w], &rep);
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 2, &o), LOCKSTEP_EINVAL);
        CHECK_EQ(rep.failed, LOCKSTEP_FAILED_SOURCE);
        CHECK_EQ(rep.position, b.produced);
        CHECK(rep.position >= 100 && (is_buffer || rep.position < 100 + rep.window));
        CHECK_EQ(r[0].count, rep.position);
        CHECK_EQ(r[1].count, 20);
        /* The same read failing where nobody looks any more. */
        r[0].stop = 30;
        r[0].count = r[0].sum = r[1].count = r[1].sum = 0;
        b = (byte_source){0, 1000, 0, LONG_MAX};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 2, &o), 0);
        /* A negative code that does not fit an int. */
        r[0].stop = UINT64_MAX;
        r[0].count = r[0].sum = r[1].count = r[1].sum = 0;
        b = (byte_source){0, 1000, 0, LONG_MIN};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 2, &o), LOCKSTEP_EINVAL);
    }
}

/* The default window suits the item size: the whole byte budget below 8
 * bytes, the item count (no more than the budget) from 8 bytes up. */
static void test_default_window_by_item_size(void)
{
    int thread = engine == LOCKSTEP_ENGINE_THREAD;
    size_t items = thread ? LOCKSTEP_DEFAULT_THREAD_WINDOW : LOCKSTEP_DEFAULT_WINDOW;
    size_t bytes = thread ? LOCKSTEP_DEFAULT_THREAD_WINDOW_BYTES : LOCKSTEP_DEFAULT_WINDOW_BYTES;
    static const size_t sizes[] = {1, 2, 8, 64, 4096, 100000, (size_t)4 << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t size = sizes[k];
        size_t budget = bytes / size ? bytes / size : 1;
        size_t want = size < 8 ? budget : items < budget ? items : budget;
        lockstep_consumer none[1] = {{return_at_once, NULL}};
        lockstep_report rep;
        lockstep_options o = engine_opts(engine, 0, &rep);
        CHECK_EQ(lockstep_run_read(never_read, NULL, size, none, 1, &o), 0);
        CHECK_EQ(rep.window, want);
    }
    lockstep_report rep;
    lockstep_options o = engine_opts(engine, 0, &rep);
    lockstep_consumer none[1] = {{return_at_once, NULL}};
    CHECK_EQ(lockstep_run_read(never_read, NULL, 1, none, 1, &o), 0);
    CHECK_EQ(rep.window, thread ? (size_t)1 << 20 : (size_t)64 << 10);
    CHECK_EQ(lockstep_run_read(never_read, NULL, 4096, none, 1, &o), 0);
    CHECK_EQ(rep.window, thread ? 256 : 16);
}

/* Misuse: consumer 1 calls lockstep_next on consumer 0's iterator.  With
 * threads it waits until consumer 0 has returned: lockstep_next's inline
 * fast path reads the iterator unsynchronised, so calling it while its own
 * thread still runs would be a data race in the test itself. */
static lockstep_iter *stolen;
static atomic_int stolen_done;

static int stash_iter(lockstep_iter *it, void *arg)
{
    (void)arg;
    stolen = it;
    while (lockstep_next(it) != NULL) {
    }
    atomic_store(&stolen_done, 1);
    return 0;
}

static int use_stolen(lockstep_iter *it, void *arg)
{
    int *got_null = arg;
    while (lockstep_next(it) != NULL) {
    }
    while (engine == LOCKSTEP_ENGINE_THREAD && !atomic_load(&stolen_done))
        sched_yield();
    *got_null = lockstep_next(stolen) == NULL;
    return 0;
}

static void test_misuse(void)
{
    int got_null = 0;
    atomic_store(&stolen_done, 0);
    lockstep_consumer cs[2] = {{stash_iter, NULL}, {use_stolen, &got_null}};
    counter_source src = counter(10);
    lockstep_report rep;
    lockstep_options o = engine_opts(engine, 4, &rep);
    CHECK_EQ(lockstep_run(counter_pull, &src, 8, cs, 2, &o), LOCKSTEP_EPERM);
    CHECK(got_null);
    CHECK_EQ(rep.failed, LOCKSTEP_FAILED_LIBRARY);
}

/* Push API: the producer learns when nobody is left, and misuse is
 * refused. */
typedef struct {
    lockstep_stream *stream;
    long push_rc, close_rc;
} reentry;

static int reenter(lockstep_iter *it, void *arg)
{
    reentry *r = arg;
    int64_t x = 1;
    if (lockstep_next(it) != NULL) {
        r->push_rc = lockstep_push(r->stream, &x, 1);
        r->close_rc = lockstep_close(r->stream);
    }
    while (lockstep_next(it) != NULL) {
    }
    return 0;
}

static void test_push(void)
{
    script sc[2];
    script_init(&sc[0], STOP_AT, 5, 0);
    script_init(&sc[1], STOP_AT, 12, 0);
    lockstep_consumer cs[2] = {{sum_max_consumer, &sc[0]}, {sum_max_consumer, &sc[1]}};
    lockstep_report rep;
    lockstep_options o = engine_opts(engine, 4, &rep);
    lockstep_stream *s;
    CHECK_EQ(lockstep_open(&s, sizeof(int64_t), cs, 2, &o), 0);
    long live = lockstep_live(s);
    CHECK_EQ(live, is_buffer ? 2 : 2);
    int64_t x = 0;
    uint64_t pushed = 0;
    while (pushed < 1000 && (live = lockstep_push(s, &x, 1)) > 0) {
        x++;
        pushed++;
    }
    if (!is_buffer) {
        CHECK_EQ(live, 0);
        CHECK(pushed >= 11 && pushed <= 12 + 4);
    }
    CHECK_EQ(lockstep_close(s), 0);
    CHECK_EQ(sc[0].count, 5);
    CHECK_EQ(sc[1].count, 12);
    CHECK_EQ(sc[1].sum, 66);

    /* Bulk push, then a producer failure at 30. */
    script_init(&sc[0], SUM, 0, 0);
    script_init(&sc[1], SUM, 0, 0);
    CHECK_EQ(lockstep_open(&s, sizeof(int64_t), cs, 2, &o), 0);
    int64_t items[30];
    for (int i = 0; i < 30; i++)
        items[i] = i;
    CHECK_EQ(lockstep_push(s, items, 30), 2);
    CHECK_EQ(lockstep_push(s, NULL, 1), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_fail(s, 0), LOCKSTEP_EINVAL);
    CHECK_EQ(lockstep_fail(s, -5), 0);
    CHECK_EQ(lockstep_fail(s, -6), LOCKSTEP_ESTATE);
    CHECK_EQ(lockstep_push(s, items, 1), LOCKSTEP_ESTATE);
    CHECK_EQ(lockstep_live(s), 0);
    CHECK_EQ(lockstep_close(s), -5);
    CHECK_EQ(rep.failed, LOCKSTEP_FAILED_SOURCE);
    CHECK_EQ(rep.position, 30);
    CHECK_EQ(sc[0].count, 30);
    CHECK(sc[0].saw_cancel && sc[1].saw_cancel);

    /* Push or close from inside a consumer is refused. */
    reentry r = {NULL, 0, 0};
    lockstep_consumer rc[1] = {{reenter, &r}};
    CHECK_EQ(lockstep_open(&r.stream, sizeof(int64_t), rc, 1, &o), 0);
    CHECK_EQ(lockstep_push(r.stream, items, 30), is_buffer ? 1 : 1);
    CHECK_EQ(lockstep_close(r.stream), 0);
    CHECK_EQ(r.push_rc, LOCKSTEP_ESTATE);
    CHECK_EQ(r.close_rc, LOCKSTEP_ESTATE);
}

/* drop_items: every item is released exactly once, and never while some
 * consumer may still be handed it.  This is what lets the Python binding
 * keep references in the window. */
#define DROP_ITEMS 3000
static _Atomic int dropped[DROP_ITEMS];
static _Atomic long early_drops;

static void count_drops(void *arg, void *items, size_t count)
{
    (void)arg;
    for (size_t i = 0; i < count; i++) {
        int64_t pos = ((int64_t *)items)[i];
        if (pos >= 0 && pos < DROP_ITEMS)
            atomic_fetch_add(&dropped[pos], 1);
    }
}

static int check_not_dropped(lockstep_iter *it, void *arg)
{
    const int64_t *x;
    uint64_t stop = *(uint64_t *)arg;
    while (lockstep_position(it) < stop && (x = lockstep_next(it)) != NULL)
        if (atomic_load(&dropped[*x]) != 0)
            atomic_fetch_add(&early_drops, 1);
    return 0;
}

static void test_drop_items(void)
{
    static const size_t windows[] = {1, 3, 64, 0};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        for (int i = 0; i < DROP_ITEMS; i++)
            atomic_store(&dropped[i], 0);
        atomic_store(&early_drops, 0);
        uint64_t all = UINT64_MAX, some = 1234;
        lockstep_consumer cs[2] = {{check_not_dropped, &all}, {check_not_dropped, &some}};
        lockstep_options o = engine_opts(engine, windows[w], NULL);
        lockstep_stream *s;
        CHECK_EQ(lockstep_open(&s, sizeof(int64_t), cs, 2, &o), 0);
        s->drop_items = count_drops;
        int64_t pushed = 0;
        for (; pushed < DROP_ITEMS; pushed++)
            if (lockstep_push(s, &pushed, 1) <= 0)
                break;
        CHECK_EQ(lockstep_close(s), 0);
        CHECK_EQ(pushed, DROP_ITEMS);
        long wrong = 0;
        for (int i = 0; i < DROP_ITEMS; i++)
            wrong += atomic_load(&dropped[i]) != 1;
        CHECK_EQ(wrong, 0);
        CHECK_EQ(atomic_load(&early_drops), 0);
    }
}

/* Random scripted runs against the model and the buffer oracle. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rnd(uint64_t bound)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return bound ? rng_state % bound : 0;
}

static int run_scripted(lockstep_engine e, script *sc, size_t count, counter_source *src,
                        size_t window, int feed, lockstep_report *rep)
{
    lockstep_consumer cs[8];
    for (size_t i = 0; i < count; i++) {
        cs[i].fn = sum_max_consumer;
        cs[i].arg = &sc[i];
    }
    lockstep_options o;
    lockstep_options_init(&o);
    o.engine = e;
    o.window = window;
    o.report = rep;
    if (feed == FEED_PUSH)
        return run_by_push(counter_pull, src, sizeof(int64_t), cs, count, &o, 17, rnd);
    if (feed == FEED_READ)
        return lockstep_run_read(counter_read, src, sizeof(int64_t), cs, count, &o);
    return lockstep_run(counter_pull, src, sizeof(int64_t), cs, count, &o);
}

static void random_case(int feed)
{
    static const size_t windows[] = {1, 2, 3, 5, 8, 64, 0};
    size_t count = (size_t)rnd(7);
    size_t window = windows[rnd(sizeof windows / sizeof windows[0])];
    uint64_t n = rnd(300);
    script sc[8], oracle[8];
    for (size_t i = 0; i < count; i++) {
        int kind = (int)rnd(4);
        script_init(&sc[i], kind, rnd(n + 3), (int)(1 + rnd(5)));
        if (kind == NEST_AT && rnd(4) != 0)
            sc[i].kind = SUM;
        sc[i].by = (int)rnd(BY_COUNT);
        sc[i].chunk = rnd(4) == 0 ? SIZE_MAX : 1 + (size_t)rnd(READ_CHUNK_MAX);
        oracle[i] = sc[i];
    }
    counter_source src = counter(n), oracle_src;
    if (rnd(3) == 0) {
        src.fail_at = rnd(n + 1);
        src.fail_code = -(int)(1 + rnd(5));
    }
    oracle_src = src;
    lockstep_report rep, oracle_rep;
    long failed_before = check_failed;
    int rc = run_scripted(engine, sc, count, &src, window, feed, &rep);
    if (feed != FEED_PUSH)
        check_against_model(sc, count, &src, rc, &rep, window);
    int oracle_rc = run_scripted(LOCKSTEP_ENGINE_BUFFER, oracle, count, &oracle_src, window, 0,
                                 &oracle_rep);
    CHECK_EQ(rc, oracle_rc);
    CHECK_EQ(rep.failed, oracle_rep.failed);
    if (rep.failed != LOCKSTEP_FAILED_NONE)
        CHECK_EQ(rep.position, oracle_rep.position);
    if (check_failed != failed_before) {
        fprintf(stderr, "  case: %s, window %zu, %" PRIu64 " items, source fails at %" PRIu64
                        " (%d), consumers:", feed_names[feed], window, n, src.fail_at,
                src.fail_code);
        for (size_t i = 0; i < count; i++)
            fprintf(stderr, " [%d k=%" PRIu64 " code=%d by=%d chunk=%zu count=%" PRIu64 "]",
                    sc[i].kind, sc[i].k, sc[i].fail_code, sc[i].by, sc[i].chunk, sc[i].count);
        fprintf(stderr, "\n");
    }
}

static void test_random(void)
{
    const char *env = getenv("LOCKSTEP_TEST_CASES");
    long cases = env ? atol(env) : 3000;
    for (long i = 0; i < cases; i++)
        random_case(FEED_RUN);
    for (long i = 0; i < cases / 3; i++)
        random_case(FEED_PUSH);
    for (long i = 0; i < cases; i++)
        random_case(FEED_READ);
}

/* Scale: 10,000 consumers over 100,000 items (scaled down by
 * LOCKSTEP_TEST_SCALE for slow tools such as valgrind). */
static int count_consumer(lockstep_iter *it, void *arg)
{
    uint64_t n = 0;
    while (lockstep_next(it) != NULL)
        n++;
    return n == *(uint64_t *)arg ? 0 : 1;
}

static void test_scale(void)
{
    const char *env = getenv("LOCKSTEP_TEST_SCALE");
    uint64_t divisor = env ? (uint64_t)atol(env) : 1;
    size_t consumers = 10000 / (size_t)divisor;
    uint64_t items = 100000 / divisor;
    lockstep_consumer *cs = malloc(consumers * sizeof *cs);
    CHECK(cs != NULL);
    if (cs == NULL)
        return;
    for (size_t i = 0; i < consumers; i++) {
        cs[i].fn = count_consumer;
        cs[i].arg = &items;
    }
    counter_source src = counter(items);
    lockstep_options o = engine_opts(engine, 0, NULL);
    o.stack_size = 64 * 1024;
    CHECK_EQ(lockstep_run(counter_pull, &src, sizeof(int64_t), cs, consumers, &o), 0);
    CHECK_EQ(src.pulls, items);
    free(cs);
}

/* Every allocation and every stack mapping fails in turn: each run
 * reports LOCKSTEP_ENOMEM or succeeds, and the sanitizers see no leak. */
static void test_allocation_failure(void)
{
    for (int kind = LOCKSTEP__FAULT_ALLOC; kind <= LOCKSTEP__FAULT_MMAP; kind++) {
        long points = 0;
        for (long nth = 1;; nth++) {
            script sc[3];
            script_init(&sc[0], SUM, 0, 0);
            script_init(&sc[1], STOP_AT, 50, 0);
            script_init(&sc[2], NEST_AT, 10, 0);
            lockstep_consumer cs[3] = {{sum_max_consumer, &sc[0]},
                                       {sum_max_consumer, &sc[1]},
                                       {sum_max_consumer, &sc[2]}};
            counter_source src = counter(200);
            lockstep_options o = engine_opts(engine, 8, NULL);
            lockstep__fault_arm(kind, nth);
            int rc = lockstep_run(counter_pull, &src, sizeof(int64_t), cs, 3, &o);
            long seen = lockstep__fault_arm(kind, 0);
            CHECK(rc == 0 || rc == LOCKSTEP_ENOMEM);
            if (rc == 0)
                CHECK_EQ(sc[0].sum, 19900);
            if (seen < nth)
                break; /* the armed fault was never reached: all points covered */
            points++;
        }
        CHECK(points > 0 || kind == LOCKSTEP__FAULT_MMAP);
    }
}

static void test_errors_and_version(void)
{
    CHECK(strcmp(lockstep_strerror(LOCKSTEP_ENOMEM), "out of memory") == 0);
    CHECK(strcmp(lockstep_strerror(0), "success") == 0);
    CHECK(strcmp(lockstep_strerror(12345), "unknown error") == 0);
    CHECK(strcmp(lockstep_err_name(LOCKSTEP_EINVAL), "LOCKSTEP_EINVAL") == 0);
    CHECK(lockstep_err_name(7) == NULL);
    CHECK_EQ(lockstep_version(), LOCKSTEP_VERSION_HEX);
    CHECK(strcmp(lockstep_version_string(), "0.1.0") == 0);
    CHECK(strcmp(lockstep_engine_name(LOCKSTEP_ENGINE_BUFFER), "buffer") == 0);
    CHECK(lockstep_engine_name((lockstep_engine)42) == NULL);
    lockstep_options o;
    memset(&o, 0xff, sizeof o);
    lockstep_options_init(&o);
    CHECK(o.engine == LOCKSTEP_ENGINE_FIBER && o.window == 0 && o.report == NULL);
}

/* --- lockstep__detach: a consumer that closes its reader and goes on. --- */

/* A consumer that reads `stop` bytes, detaches, checks that its iterator
 * now behaves as at the end (not cancelled), optionally waits (thread
 * engine only) until `wait_for` is set, and returns `code`. */
typedef struct {
    uint64_t stop;
    int code;
    int read_to_end;         /* read until the end first, then detach */
    _Atomic int *wait_for;   /* NULL: do not wait */
    _Atomic int *done_flag;  /* set once it returns, if not NULL */
    uint64_t count;
    int after_ok;            /* what it saw after detaching was right */
} detacher;

static int detach_consumer(lockstep_iter *it, void *arg)
{
    detacher *d = arg;
    unsigned char b;
    while ((d->read_to_end || d->count < d->stop) && lockstep_read(it, &b, 1) == 1)
        d->count++;
    int ok = lockstep__detach(it) == 0 && lockstep__detach(it) == 0;
    size_t count = 99;
    ok = ok && lockstep_next(it) == NULL && lockstep_take(it, 5, &count) == NULL && count == 0 &&
         lockstep_read(it, &b, 1) == 0 && !lockstep_cancelled(it) &&
         lockstep_position(it) == d->count;
    d->after_ok = ok;
    if (d->wait_for != NULL)
        while (!atomic_load(d->wait_for))
            sched_yield();
    if (d->done_flag != NULL)
        atomic_store(d->done_flag, 1);
    return d->code;
}

/* Reads everything, then sets its flag. */
typedef struct {
    byte_reader r;
    _Atomic int *done_flag;
    int code;
} flagged_reader;

static int flagged_read(lockstep_iter *it, void *arg)
{
    flagged_reader *f = arg;
    read_bytes(it, &f->r);
    atomic_store(f->done_flag, 1);
    return f->code;
}

static void test_detach(void)
{
    static const size_t windows[] = {1, 7, 4096, 0};
    int threads = engine == LOCKSTEP_ENGINE_THREAD;
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        uint64_t n = windows[w] == 1 ? 2000 : 50000;
        /* It detaches and keeps running until the other has read the whole
         * stream: on the thread engine that is possible only if it no
         * longer holds the window (else this run would never end). */
        _Atomic int other_done = 0;
        detacher d = {10, 0, 0, threads ? &other_done : NULL, NULL, 0, 0};
        flagged_reader f = {{7, UINT64_MAX, 0, 0}, &other_done, 0};
        lockstep_consumer cs[2] = {{detach_consumer, &d}, {flagged_read, &f}};
        byte_source b = {0, n, 0, 0};
        lockstep_report rep;
        lockstep_options o = engine_opts(engine, windows[w], &rep);
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 2, &o), 0);
        CHECK_EQ(d.count, 10);
        CHECK(d.after_ok);
        CHECK_EQ(f.r.count, n);
        CHECK_EQ(f.r.sum, byte_sum(n));

        /* A failure returned after detaching ranks where it detached: it
         * wins over a later failure of a consumer that returned first. */
        other_done = 0;
        d = (detacher){10, -5, 0, threads ? &other_done : NULL, NULL, 0, 0};
        f = (flagged_reader){{7, 1000, 0, 0}, &other_done, -6};
        b = (byte_source){0, n, 0, 0};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 2, &o), -5);
        CHECK_EQ(rep.failed, 0);
        CHECK_EQ(rep.position, 10);
        CHECK(d.after_ok);
        /* ... and loses to an earlier one. */
        other_done = 0;
        d = (detacher){100, -5, 0, threads ? &other_done : NULL, NULL, 0, 0};
        f = (flagged_reader){{7, 50, 0, 0}, &other_done, -6};
        b = (byte_source){0, n, 0, 0};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 2, &o), -6);
        CHECK_EQ(rep.failed, 1);
        CHECK_EQ(rep.position, 50);

        /* Detached after seeing the end: its failure counts, at the end. */
        other_done = 0;
        d = (detacher){0, -5, 1, NULL, NULL, 0, 0};
        f = (flagged_reader){{7, UINT64_MAX, 0, 0}, &other_done, 0};
        lockstep_consumer swapped[2] = {{flagged_read, &f}, {detach_consumer, &d}};
        b = (byte_source){0, n, 0, 0};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, swapped, 2, &o), -5);
        CHECK_EQ(rep.failed, 1);
        CHECK_EQ(rep.position, n);
        CHECK_EQ(d.count, n);
        CHECK(d.after_ok);
        /* Both fail at n; the one that detached after seeing the end loses
         * to the one that stopped at n without asking for more, whatever
         * their indices, as when both return there.  (Where the other
         * fails first, on the fiber engine, it cancels the detacher.) */
        other_done = 0;
        d = (detacher){0, -5, 1, NULL, NULL, 0, 0};
        f = (flagged_reader){{7, n, 0, 0}, &other_done, -6};
        b = (byte_source){0, n, 0, 0};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, cs, 2, &o), -6);
        CHECK_EQ(rep.failed, 1);
        CHECK_EQ(rep.position, n);
        other_done = 0;
        d = (detacher){n, -5, 0, NULL, NULL, 0, 0};
        f = (flagged_reader){{7, UINT64_MAX, 0, 0}, &other_done, -6};
        b = (byte_source){0, n, 0, 0};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, swapped, 2, &o), -5);
        CHECK_EQ(rep.failed, 1);
        CHECK_EQ(rep.position, n);
        CHECK(d.after_ok);

        if (is_buffer)
            continue;
        /* Both detach on an endless source and go on computing: the run
         * reads at most window - 1 bytes past the last detach, and on the
         * thread engine the producer stops before either returns. */
        detacher d2[2] = {{30, 0, 0, NULL, NULL, 0, 0}, {500, 0, 0, NULL, NULL, 0, 0}};
        lockstep_consumer both[2] = {{detach_consumer, &d2[0]}, {detach_consumer, &d2[1]}};
        b = (byte_source){0, UINT64_MAX, 0, 0};
        CHECK_EQ(lockstep_run_read(byte_read, &b, 1, both, 2, &o), 0);
        CHECK(d2[0].after_ok && d2[1].after_ok);
        CHECK(b.produced >= 500 && b.produced <= 500 + rep.window - 1);
    }
    /* From the producer, or another consumer: misuse. */
    CHECK_EQ(lockstep__detach(NULL), LOCKSTEP_EINVAL);
}

int main(int argc, char **argv)
{
    if (!engine_arg(argc, argv, &engine))
        return 2;
    const char *name = lockstep_engine_name(engine);
    is_buffer = engine == LOCKSTEP_ENGINE_BUFFER;
    if (!lockstep_engine_available(engine)) {
        lockstep_consumer ok[1] = {{return_at_once, NULL}};
        lockstep_options o = engine_opts(engine, 0, NULL);
        CHECK_EQ(lockstep_run(noop_pull, NULL, 8, ok, 1, &o), LOCKSTEP_ENOTSUP);
        printf("engine %s is not available in this build: checked ENOTSUP only\n", name);
        return CHECK_SUMMARY("conformance");
    }
    test_errors_and_version();
    test_sum_and_max();
    test_zero_consumers_and_items();
    test_early_exit_and_infinite_source();
    test_failures();
    test_failure_after_end_ties();
    test_big_items();
    test_nesting();
    test_pipeline();
    test_bad_input();
    test_misuse();
    test_push();
    test_take_and_read();
    test_bytes_detach_and_bound();
    test_detach();
    test_run_read_bad_input();
    test_default_window_by_item_size();
    test_read_pipeline();
    test_drop_items();
    test_random();
    test_allocation_failure();
    test_scale();
    char label[64];
    snprintf(label, sizeof label, "conformance[%s]", name);
    return CHECK_SUMMARY(label);
}
