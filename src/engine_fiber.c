/*
 * engine_fiber.c: the default engine.  Each consumer runs on its own fiber
 * (src/fiber.c); the producer's context fills a window, then resumes every
 * live consumer in turn.  A consumer that has taken the whole window hands
 * control straight to the next live consumer, and the last one back to the
 * producer: n + 1 switches a window instead of 2n.  Which consumer comes
 * next, and what lockstep_next returns, is the core's decision
 * (lockstep__round_*, lockstep__next_step); only the switching is here.
 * In lockstep_run the consumer that ends a round refills the window and
 * starts the next one (lockstep__round_again), so a round costs n switches
 * and a lone consumer never switches at all.
 *
 * Floating-point control modes (fpmode.h).  Every fiber keeps its own: the
 * switch saves them, and a new fiber starts with the caller's at open.  The
 * source, though, must run with the caller's modes even when a consumer's
 * fiber calls it, so source_mode holds them while a consumer runs: a refill
 * from a consumer loads them if that consumer's differ, records any change
 * the source makes to its own, and puts the consumer's back.  The producer
 * takes source_mode over when a round hands control back.  Without a
 * source that consumers may call (push mode, the last round) nothing here
 * reads the modes: the switch keeps every context's own.
 */
#include "fiber.h"
#include "internal.h"

typedef struct {
    lockstep__fiber scheduler; /* the producer's context, saved while a consumer runs */
    lockstep__fiber *fibers;   /* one per consumer */
    size_t stack_size;
    lockstep__fpmode source_mode; /* the source's (the caller's) modes while a consumer runs */
} fiber_engine;

/* lockstep__refill with the source's floating-point modes in force around
 * it: it calls the source from the running consumer's fiber.  Only a
 * refill reads the modes, so a round that ends without one (push mode, the
 * last round) costs nothing here. */
static inline __attribute__((always_inline)) int refill_as_caller(lockstep_stream *s)
{
    fiber_engine *e = s->engine;
    lockstep__fpmode own;
    lockstep__fpmode_enter(&e->source_mode, &own);
    int full = lockstep__refill(s);
    lockstep__fpmode_leave(&e->source_mode, &own);
    return full;
}

/* The context to run after the current consumer: the next live one, or in
 * pull mode the next round's first (after refilling the window here), or
 * the producer.  It may be the caller's own fiber. */
static inline __attribute__((always_inline)) lockstep__fiber *following(lockstep_stream *s)
{
    fiber_engine *e = s->engine;
    lockstep_iter *next = lockstep__round_next(s);
    if (next == NULL)
        next = lockstep__round_again(s, refill_as_caller);
    return next ? next->engine_data : &e->scheduler;
}

/* Every consumer fiber starts here and leaves for good at the end. */
static void fiber_entry(void *arg)
{
    lockstep_iter *it = arg;
    lockstep__consumer_main(it);
    lockstep__fiber_exit(it->engine_data, following(it->stream));
}

/* One round: run the first live consumer; the others follow by hand-off.
 * The producer's modes are the source's: when consumers may call the
 * source (lockstep__may_refill), they read them from source_mode, and the
 * producer takes back what the source did to them.  Otherwise (push mode,
 * the last round) the switch alone keeps the producer's modes. */
static int fiber_dispatch(lockstep_stream *s)
{
    fiber_engine *e = s->engine;
    lockstep_iter *first = lockstep__round_begin(s);
    if (first != NULL) {
        int may_refill = lockstep__may_refill(s);
        if (may_refill)
            lockstep__fpmode_get(&e->source_mode);
        lockstep__fiber_switch(&e->scheduler, first->engine_data);
        if (may_refill)
            lockstep__fpmode_load(&e->source_mode);
    }
    if (s->dispatching) /* else the consumer that ended the last round did */
        lockstep__round_end(s);
    return 0;
}

/* The window is used up: switches to whoever runs next.  Returns 0. */
static inline __attribute__((always_inline)) int fiber_pass_on(lockstep_iter *it)
{
    lockstep__fiber *to = following(it->stream);
    if (to != it->engine_data) /* else it refilled the window for itself */
        lockstep__fiber_switch(it->engine_data, to);
    return 0;
}

/* Consumer side: when the window is used up, pass control on. */
static const void *fiber_next_slow(lockstep_iter *it)
{
    return lockstep__next_slow_with(it, fiber_pass_on);
}

static int fiber_open(lockstep_stream *s)
{
    fiber_engine *e = lockstep__calloc(1, sizeof *e);
    if (e == NULL)
        return LOCKSTEP_ENOMEM;
    e->fibers = lockstep__calloc(s->n, sizeof *e->fibers);
    if (e->fibers == NULL) {
        lockstep__free(e);
        return LOCKSTEP_ENOMEM;
    }
    e->stack_size = s->opts.stack_size ? s->opts.stack_size : LOCKSTEP_DEFAULT_STACK_SIZE;
    lockstep__fiber_init_current(&e->scheduler);
    s->engine = e;
    int rc = lockstep__coop_open(s);
    if (rc < 0) {
        lockstep__free(e->fibers);
        lockstep__free(e);
        s->engine = NULL;
    }
    return rc;
}

static void fiber_destroy_all(lockstep_stream *s)
{
    fiber_engine *e = s->engine;
    lockstep__coop_destroy(s);
    lockstep__fiber_destroy(&e->scheduler);
    lockstep__free(e->fibers);
    lockstep__free(e);
    s->engine = NULL;
}

static int fiber_create(lockstep_stream *s, lockstep_iter *it)
{
    fiber_engine *e = s->engine;
    lockstep__fiber *f = &e->fibers[it->index];
    int rc = lockstep__fiber_create(f, e->stack_size, fiber_entry, it);
    if (rc == 0)
        it->engine_data = f;
    return rc;
}

static void fiber_free(lockstep_stream *s, lockstep_iter *it)
{
    (void)s;
    lockstep__fiber_destroy(it->engine_data);
    it->engine_data = NULL;
}

const lockstep__engine_ops lockstep__engine_fiber = {
    .name = "fiber",
    .open = fiber_open,
    .dispatch = fiber_dispatch,
    .finish = lockstep__coop_finish,
    .destroy = fiber_destroy_all,
    .next_slow = fiber_next_slow,
    .coop_create = fiber_create,
    .coop_destroy = fiber_free,
};
