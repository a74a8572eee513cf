/*
 * internal.h: what the scheduler (src/core.c) shares with its engines and
 * with the Python binding.  Nothing here is public API.
 *
 * The scheduler owns the window, the stream positions, the live-consumer
 * count and the outcome (which failure wins).  An engine only decides how
 * consumers get to run: on fibers, on threads, on greenlets, or one after
 * another after buffering everything.  Engines plug in through
 * lockstep__engine_ops; cooperative engines (fiber, greenlet) share the
 * core's open, finish and destroy, and run rounds with lockstep__round_*.
 */
#ifndef LOCKSTEP_INTERNAL_H
#define LOCKSTEP_INTERNAL_H

#include "fpmode.h"
#include "lockstep.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

/* SQLite-style defensive checks: they stay on in release builds, and say
 * which way the condition is expected to go. */
#define ALWAYS(x) __builtin_expect(!!(x), 1)
#define NEVER(x) __builtin_expect(!!(x), 0)

/* For the helpers on the per-window path of every consumer: gcc -O2 leaves
 * some out of line, and at window 1 a call is a noticeable part of an item
 * (bench_c, fiber, window 1). */
#if defined(__GNUC__)
#  define LOCKSTEP__HOT static inline __attribute__((always_inline))
#else
#  define LOCKSTEP__HOT static inline
#endif

/* Ranks break ties between failures at the same stream position p, in the
 * order strict lockstep meets them: first consumers that fail without
 * asking for item p (rank = index), then the library and the source (which
 * fail when item p is read), then consumers that fail after lockstep_next
 * told them the stream ended at p (rank = LOCKSTEP__RANK_AFTER_END +
 * index): in strict lockstep they learn of the end only once nobody failed
 * before the read. */
#define LOCKSTEP__RANK_LIBRARY (SIZE_MAX / 2)
#define LOCKSTEP__RANK_SOURCE (SIZE_MAX / 2 + 1)
#define LOCKSTEP__RANK_AFTER_END (SIZE_MAX / 2 + 2)

struct lockstep_iter {
    /* Fast path: lockstep_next returns cur and advances it while cur < end.
     * First, so that lockstep.h's inline lockstep_next can reach it. */
    lockstep__iter_head head;
    lockstep_stream *stream;
    uint64_t end_pos;                /* stream position of the item at end */
    size_t index;
    lockstep_consumer consumer;
    unsigned done : 1;               /* the consumer function has returned */
    unsigned cancelled : 1;          /* lockstep_next returned NULL because of a failure */
    unsigned finished : 1;           /* lockstep_next returned NULL at the end of the stream */
    unsigned started : 1;            /* the engine has made its context */
    /* lockstep__detach: it left the live set and may still run.  It stays
     * parked where it detached, and finished says whether it had seen the
     * end there: every slow path returns NULL for it at once. */
    unsigned detached : 1;
    int code;                        /* what the consumer returned */
    void *engine_data;               /* the engine's per-consumer context */
};

/* Stream position of the next item it will receive.  The slow path always
 * has cur == end, so it never pays for the division. */
LOCKSTEP__HOT uint64_t lockstep__iter_pos(const lockstep_iter *it)
{
    if (it->head.cur == it->head.end)
        return it->end_pos;
    return it->end_pos - (uint64_t)(it->head.end - it->head.cur) / it->head.item_size;
}

typedef struct lockstep__engine_ops lockstep__engine_ops;

enum { LOCKSTEP__OPEN = 0, LOCKSTEP__CLOSING, LOCKSTEP__FAILED_OPEN };

struct lockstep_stream {
    const lockstep__engine_ops *ops;
    void *engine;                    /* engine-private state */
    void *engine_arg;                /* for engines plugged in from outside (Python) */
    /* Optional: called for items that leave the window for good (the
     * window is recycled, or the stream is destroyed), so that a binding
     * whose items own references can release them.  Always called from the
     * producer's thread.  Set it right after opening, before any push. */
    void (*drop_items)(void *arg, void *items, size_t count);
    void *drop_arg;
    size_t item_size;
    size_t window;                   /* requested window, after defaults */
    size_t n;                        /* consumers */
    lockstep_iter *iters;            /* n of them */
    lockstep_iter *current;          /* consumer now running, cooperative engines */

    /* The window: items [base, base + filled) live at win.  Producers write
     * at win + filled; when filled reaches cap the engine's dispatch runs. */
    unsigned char *win;
    size_t cap;
    size_t filled;
    uint64_t base;
    uint64_t read;                   /* items accepted so far */

    /* live and failed are atomic because the producer polls them without a
     * lock while threaded engines change them under their own. */
    _Atomic size_t live;             /* consumers that have not returned */
    size_t *order;                   /* cooperative engines: live consumers, in index order */
    size_t n_order;
    size_t cursor;                   /* cooperative engines: entries of order run this round */
    int backward;                    /* this round runs order from its end */
    int ended;                       /* no item at or after position read */
    /* Set, never cleared, once failed, src_pending or ended is: while it is
     * clear the slow path needs to look at nothing but the window.  Atomic
     * (relaxed) because threaded consumers may set it as the producer does. */
    _Atomic int unusual;
    int state;
    int dispatching;                 /* re-entrancy guard for push/close */

    /* The outcome: the best realized failure so far, by (position, rank). */
    _Atomic int failed;
    uint64_t fail_pos;
    size_t fail_rank;
    int fail_code;
    /* A source error met while reading ahead: it counts only once some
     * consumer asks for the item at src_pos. */
    int src_pending;
    uint64_t src_pos;
    int src_code;
    int misuse;                      /* LOCKSTEP_EPERM when an iterator was misused */

    /* Pull mode (lockstep_run): the source that fills the window.  NULL for
     * pushed streams.  source_done: it returned end or an error. */
    lockstep_source_fn source;
    void *source_arg;
    int source_done;
    /* Bulk pull mode (lockstep_run_read): the read function that fills the
     * window, NULL otherwise.  source is then lockstep__read_one over it,
     * so that paths filling one item at a time need no second case. */
    lockstep_read_fn read_fn;
    void *read_arg;

    /* The caller's floating-point control modes when the stream was
     * opened: every consumer starts with them (fpmode.h). */
    lockstep__fpmode fpmode;

    lockstep_options opts;
};

struct lockstep__engine_ops {
    const char *name;
    size_t default_window;           /* for window 0; 0 means LOCKSTEP_DEFAULT_WINDOW */
    size_t default_window_bytes;     /* its byte budget; 0 means LOCKSTEP_DEFAULT_WINDOW_BYTES */
    int concurrent;                  /* consumers run while the producer does (threads) */
    /* Allocates engine state, and starts every consumer so that it runs up
     * to its first lockstep_next.  Returns 0 or a negative code, having freed
     * what it allocated. */
    int (*open)(lockstep_stream *s);
    /* The window holds s->filled items and is full, or the stream ended, or
     * a failure was realized: let consumers take what they can.  On return
     * the producer may write at s->win + s->filled (the engine may reset
     * filled, advance base, move win or grow cap).  Returns 0 or a negative
     * library code. */
    int (*dispatch)(lockstep_stream *s);
    /* s->ended is set: run every consumer to completion. */
    int (*finish)(lockstep_stream *s);
    /* Frees engine state.  Every consumer has returned or never started. */
    void (*destroy)(lockstep_stream *s);
    /* Consumer side: it->head.cur == it->head.end.  Returns the next item or NULL. */
    const void *(*next_slow)(lockstep_iter *it);

    /* Cooperative engines only (used by lockstep__coop_*): */
    /* Makes a context in which lockstep__consumer_main(it) will run. */
    int (*coop_create)(lockstep_stream *s, lockstep_iter *it);
    /* Frees it's context; it has returned or never started. */
    void (*coop_destroy)(lockstep_stream *s, lockstep_iter *it);

    /* Optional, for engines whose consumers run on other threads: returns
     * LOCKSTEP_ESTATE when the calling thread may not push, fail or close s
     * (it is one of s's own consumers), else 0.  Called before any other
     * field of s is read, so that such a call is refused without a race. */
    int (*check_producer)(const lockstep_stream *s);

    /* Optional, for engines whose consumers run on other threads: does
     * lockstep__detach(it) on the consumer's own thread, with the engine's
     * locking (lockstep__detach_mark, then whatever it->consumer held).
     * NULL: the core's version, for engines that run one consumer at a
     * time.  Returns 0 or a negative code (misuse). */
    int (*detach)(lockstep_iter *it);
};

extern const lockstep__engine_ops lockstep__engine_fiber;
extern const lockstep__engine_ops lockstep__engine_buffer;
extern const lockstep__engine_ops lockstep__engine_thread;

/* --- Scheduler services for engines (src/core.c) ------------------------ */

/* Opens a stream on an explicit engine: how lockstep_open and the Python
 * binding start a run.  engine_arg is stored in s->engine_arg. */
int lockstep__open_ops(lockstep_stream **out, const lockstep__engine_ops *ops, void *engine_arg,
                       size_t item_size, const lockstep_consumer *consumers, size_t n,
                       const lockstep_options *options);

/* Records a failure at stream position pos by rank (consumer index or
 * LOCKSTEP__RANK_SOURCE); keeps whichever is earliest.  Not thread-safe:
 * threaded engines call it under their own lock. */
void lockstep__record_failure(lockstep_stream *s, uint64_t pos, size_t rank, int code);

/* Records that it's consumer returned rc (not thread-safe). */
void lockstep__consumer_finished(lockstep_iter *it, int rc);

/* Makes it's consumer leave the live set as if it had returned at its
 * current position: parks it there for good (a failure it returns later is
 * ranked there) and counts it out of s->live.  Not thread-safe (threaded
 * engines call it under their lock); it must be neither done nor
 * detached. */
void lockstep__detach_mark(lockstep_iter *it);

/* Detaches the calling consumer, it (see lockstep__detach_mark): the
 * other consumers and the producer stop waiting for it, its later
 * lockstep_next, lockstep_take and lockstep_read return NULL (0) as at the
 * end, without lockstep_cancelled, and its return still records its code.
 * Detaching twice is harmless.  Returns 0; LOCKSTEP_EINVAL for NULL, or
 * LOCKSTEP_EPERM when it is not the running consumer's own iterator (the
 * run then returns LOCKSTEP_EPERM, as for lockstep_next). */
LOCKSTEP_API int lockstep__detach(lockstep_iter *it);

/* Runs the consumer's function and records how it ended.  Engines call it
 * as the body of each consumer's context. */
void lockstep__consumer_main(lockstep_iter *it);


/* Cooperative engines: open (window, order list, one context per consumer,
 * each run up to its first lockstep_next), finish (one last round) and
 * destroy.  Rounds themselves are the engine's (lockstep__round_*). */
int lockstep__coop_open(lockstep_stream *s);
int lockstep__coop_finish(lockstep_stream *s);
void lockstep__coop_destroy(lockstep_stream *s);

/* Hands the full window to the engine; an engine failure is recorded as
 * a library failure at the current position.  Returns 0 or that code. */
int lockstep__dispatch(lockstep_stream *s);

/* True while some consumer may still want items: lockstep_live() > 0. */
LOCKSTEP__HOT int lockstep__wanted(const lockstep_stream *s)
{
    return atomic_load_explicit(&s->live, memory_order_acquire) != 0 &&
           !atomic_load_explicit(&s->failed, memory_order_acquire) && !s->src_pending &&
           !s->ended;
}

/* The producer has written one item at s->win + s->filled: counts it and
 * dispatches when the window is full.  Returns 1 after a dispatch, 0 when
 * the window has room, or the dispatch's negative code. */
static inline int lockstep__commit_one(lockstep_stream *s)
{
    s->read++;
    if (++s->filled < s->cap)
        return 0;
    int rc = lockstep__dispatch(s);
    return rc < 0 ? rc : 1;
}

/* Ends the stream: from now on lockstep_next tells every consumer that the
 * stream ended (or that it was cancelled) and never waits.  lockstep_close
 * calls it before the engine's finish; an engine that must run the last
 * round itself, step by step (the Python binding's async driver, which
 * waits for the event loop in the middle of it), calls it instead of
 * lockstep_close and then lockstep__close_ended. */
void lockstep__end(lockstep_stream *s);

/* The second half of lockstep_close, for a stream ended by lockstep__end
 * whose consumers have all returned: fills in the report, frees everything
 * and returns the run's outcome exactly as lockstep_close does. */
int lockstep__close_ended(lockstep_stream *s);

/* The source returned rc (0 = end, < 0 = error): records it as
 * lockstep_close or lockstep_fail would learn it, and sets source_done. */
void lockstep__source_stopped(lockstep_stream *s, int rc);

/* Pull mode: reads items from source straight into the window, one at a
 * time so that nothing is read that no consumer may want.  Returns 1 once
 * the window is full; 0 when the source ended or failed, or (concurrent
 * engines, whose consumers detach at any moment) no consumer wants more.
 * Always inlined, so that a binding passing its own source as a constant
 * gets a direct call. */
LOCKSTEP__HOT int lockstep__fill_window_with(lockstep_stream *s, lockstep_source_fn source,
                                             void *source_arg)
{
    /* s's fields are reloaded and stored around every source call.  A
     * version that kept the cursor in registers ran 42.4 instead of 45.3
     * instructions per item, yet took 2.83-2.93 ns per item instead of
     * 2.60-2.75 (C, default window, minimum of 9 runs, four builds). */
    const int every_item = s->ops->concurrent;
    while (s->filled < s->cap) {
        int rc = source(source_arg, s->win + s->filled * s->item_size);
        if (rc != 1) {
            lockstep__source_stopped(s, rc);
            return 0;
        }
        s->read++;
        s->filled++;
        if (every_item && !lockstep__wanted(s))
            return 0;
    }
    return 1;
}

/* lockstep__fill_window_with for a cooperative engine's window of one
 * item, which is empty here: without the loop's setup, which at window 1
 * cost 14 instructions per item. */
LOCKSTEP__HOT int lockstep__fill_one_with(lockstep_stream *s, lockstep_source_fn source,
                                          void *source_arg)
{
    int rc = source(source_arg, s->win);
    if (rc != 1) {
        lockstep__source_stopped(s, rc);
        return 0;
    }
    s->read++;
    s->filled = 1;
    return 1;
}

/* The same from s->source (or, in bulk mode, s->read_fn: see
 * lockstep__fill_read_with), out of line (src/core.c): inlined into an
 * engine's slow path, the loop kept that function's registers spilled
 * around every source call. */
int lockstep__fill_window(lockstep_stream *s);

/* What a bulk read's return value got (items asked: max) means as a source
 * code: 0 at the end, the read's own negative code (LOCKSTEP_EINVAL when it
 * does not fit an int), or LOCKSTEP_EINVAL for a count over max. */
static inline int lockstep__read_code(long got, size_t max)
{
    if (got == 0)
        return 0;
    if (got < 0)
        return got < -0x7fffffffL ? LOCKSTEP_EINVAL : (int)got;
    return (unsigned long)got > max ? LOCKSTEP_EINVAL : 1;
}

/* A lockstep_source_fn over the stream's read_fn (arg is the stream): one
 * item per call, for the paths that fill a window of one item. */
int lockstep__read_one(void *arg, void *item);

/* Bulk pull mode: ONE read call into the window's free room.  Items that
 * arrived are handed over before the next call (lockstep_read_fn), so a
 * pipe's data flows as it comes, and a read is made only when some
 * consumer asked for the first item it may return: the window bounds it,
 * as the per-item loop's one-at-a-time reads do.  Returns 1 when items
 * arrived (dispatch them), 0 when the source ended or failed. */
LOCKSTEP__HOT int lockstep__fill_read_with(lockstep_stream *s, lockstep_read_fn read,
                                           void *read_arg)
{
    size_t room = s->cap - s->filled;
    long got = read(read_arg, s->win + s->filled * s->item_size, room);
    if (got <= 0 || (unsigned long)got > room) {
        lockstep__source_stopped(s, lockstep__read_code(got, room));
        return 0;
    }
    s->read += (uint64_t)got;
    s->filled += (size_t)got;
    return 1;
}

/* lockstep_run's loop: makes s pull from source, then fills the window and
 * hands it over until the source stops or no consumer wants more.  A
 * cooperative engine may refill in a consumer's context and run several
 * rounds in one dispatch (lockstep__round_again).  Inlined, so that a
 * binding's constant source is a direct call. */
LOCKSTEP__HOT void lockstep__pull_with(lockstep_stream *s, lockstep_source_fn source,
                                       void *source_arg)
{
    s->source = source;
    s->source_arg = source_arg;
    while (lockstep__wanted(s) && !s->source_done) {
        if (!lockstep__fill_window_with(s, source, source_arg) || lockstep__dispatch(s) < 0)
            return;
    }
}

/* lockstep_run_read's loop, lockstep__pull_with for a bulk source: a read
 * into the window, then a dispatch, until the source stops or no consumer
 * wants more.  A cooperative engine's consumers refill the window
 * themselves (lockstep__round_again, or lockstep__round_again_read_with
 * for a binding's own read function).  Inlined, so that a binding's
 * constant read function is a direct call. */
LOCKSTEP__HOT void lockstep__pull_read_with(lockstep_stream *s, lockstep_read_fn read,
                                            void *read_arg)
{
    s->read_fn = read;
    s->read_arg = read_arg;
    s->source = lockstep__read_one;
    s->source_arg = s;
    while (lockstep__wanted(s) && !s->source_done) {
        if (!lockstep__fill_read_with(s, read, read_arg) || lockstep__dispatch(s) < 0)
            return;
    }
}

/* Releases count items at items through s->drop_items, if set. */
static inline void lockstep__drop(lockstep_stream *s, void *items, size_t count)
{
    if (s->drop_items != NULL && count > 0)
        s->drop_items(s->drop_arg, items, count);
}


/* --- The consumer side's decisions, inline because every window of every
 * consumer goes through them (src/core.c holds the rest). ---------------- */

/* A stable address for iterators that have no range. */
extern const unsigned char lockstep__empty_range[1];

/* Leaves it with no items in hand at stream position pos. */
static inline void lockstep__iter_park(lockstep_iter *it, uint64_t pos)
{
    it->end_pos = pos;
    it->head.cur = it->head.end = lockstep__empty_range;
}

/* Points it at the window from position pos, stopping short of a realized
 * failure so that no consumer receives an item at or past it. */
LOCKSTEP__HOT void lockstep__iter_aim(lockstep_iter *it, uint64_t pos)
{
    lockstep_stream *s = it->stream;
    uint64_t stop = s->base + s->filled;
    if (s->failed && s->fail_pos < stop)
        stop = s->fail_pos;
    it->head.cur = s->win + (size_t)(pos - s->base) * it->head.item_size;
    it->head.end = it->head.cur + (size_t)(stop - pos) * it->head.item_size;
    it->end_pos = stop;
}

/* The first position at which the realized failure cancels a consumer that
 * asks for it: the failure's own, except for a failure after the end (rank
 * LOCKSTEP__RANK_AFTER_END and up), which cancels only past the end: every
 * consumer that asks for the end position learns of the end, as in strict
 * lockstep, so that its own failure after the end ranks by its index, not
 * by which consumer ran first in the last round. */
static inline uint64_t lockstep__cancel_pos(const lockstep_stream *s)
{
    return s->fail_pos + (s->fail_rank >= LOCKSTEP__RANK_AFTER_END);
}

/* The decision lockstep_next makes when its range is used up. */
LOCKSTEP__HOT const void *lockstep__next_step(lockstep_iter *it, int *must_wait)
{
    lockstep_stream *s = it->stream;
    uint64_t pos = lockstep__iter_pos(it);
    *must_wait = 0;
    if (LOCKSTEP__LIKELY(!atomic_load_explicit(&s->unusual, memory_order_relaxed))) {
        /* The usual case, in fewer steps: the rest of the window, or wait. */
        if (pos - s->base < s->filled) { /* unsigned: also pos >= base */
            size_t size = it->head.item_size;
            const unsigned char *item = s->win + (size_t)(pos - s->base) * size;
            it->head.end = s->win + s->filled * size;
            it->end_pos = s->base + s->filled;
            it->head.cur = item + size;
            return item;
        }
        *must_wait = 1;
        return NULL;
    }
    for (;;) {
        if (s->failed && pos >= lockstep__cancel_pos(s)) {
            it->cancelled = 1;
            lockstep__iter_park(it, pos);
            return NULL;
        }
        if (pos >= s->base && pos < s->base + s->filled) {
            lockstep__iter_aim(it, pos);
            const unsigned char *item = it->head.cur;
            it->head.cur += it->head.item_size;
            return item;
        }
        if (s->src_pending && pos == s->src_pos) {
            /* Someone needs the item the source failed to produce. */
            lockstep__record_failure(s, pos, LOCKSTEP__RANK_SOURCE, s->src_code);
            continue;
        }
        if (s->ended) {
            it->finished = 1;
            lockstep__iter_park(it, pos);
            return NULL;
        }
        /* Nothing to park: the range is used up (cur == end), so the
         * position is end_pos already and nothing dereferences cur. */
        *must_wait = 1;
        return NULL;
    }
}

/* True when it belongs to the consumer running now on its single-threaded
 * stream; otherwise records the misuse (the run will return
 * LOCKSTEP_EPERM) so that lockstep_next can return NULL. */
static inline int lockstep__iter_is_current(lockstep_iter *it)
{
    if (ALWAYS(it->stream->current == it))
        return 1;
    it->stream->misuse = LOCKSTEP_EPERM;
    return 0;
}

/* A cooperative engine's next_slow, built on lockstep__next_step: returns
 * the next item, or NULL at the end, on cancellation or misuse, and at
 * once for a detached iterator, which stays parked where it detached.
 * While the consumer must wait for the window to advance, pass_on(it)
 * hands control on in the engine's way and returns 0 once it runs again,
 * or nonzero to give up (NULL).  The fiber, greenlet and buffer engines
 * use it; the thread engine has its own, which must not look at a
 * detached flag before it knows the caller owns the iterator.  Inlined,
 * so that pass_on is a direct call. */
LOCKSTEP__HOT const void *lockstep__next_slow_with(lockstep_iter *it,
                                                   int (*pass_on)(lockstep_iter *))
{
    if (!lockstep__iter_is_current(it) || it->detached)
        return NULL;
    for (;;) {
        int must_wait;
        const void *item = lockstep__next_step(it, &must_wait);
        if (!must_wait)
            return item;
        if (pass_on(it) != 0)
            return NULL;
    }
}

/* Returns the next live consumer of this round and makes it current, or
 * NULL when the round is over and control belongs to the producer.  Rounds
 * alternate direction (index order, then reverse), so the consumer that
 * ends one round also starts the next: with lockstep__round_again that
 * spares a switch a round, which is half the switches at window 1 with two
 * consumers.  Order within a round cannot change any result: failures are
 * ranked by position and index, not by when they happen. */
LOCKSTEP__HOT lockstep_iter *lockstep__round_next(lockstep_stream *s)
{
    while (s->cursor < s->n_order) {
        size_t k = s->cursor++;
        lockstep_iter *it = &s->iters[s->order[s->backward ? s->n_order - 1 - k : k]];
        if (ALWAYS(!it->done)) {
            s->current = it;
            return it;
        }
    }
    s->current = NULL;
    return NULL;
}

/* The producer may reuse the window: its items now lie behind every
 * consumer that is still running. */
LOCKSTEP__HOT void lockstep__window_consumed(lockstep_stream *s)
{
    lockstep__drop(s, s->win, s->filled);
    s->base += s->filled;
    s->filled = 0;
}

/* A round lets every live consumer take what the window offers.
 * round_begin returns the first consumer to run (or NULL), and makes it
 * current. */
LOCKSTEP__HOT lockstep_iter *lockstep__round_begin(lockstep_stream *s)
{
    s->dispatching = 1;
    s->cursor = 0;
    s->backward = !s->backward;
    return lockstep__round_next(s);
}

/* Ends the round: drops consumers that returned from the order list and
 * hands the window back to the producer. */
LOCKSTEP__HOT void lockstep__round_end(lockstep_stream *s)
{
    /* Compacting costs a pass over the list: only worth it when some
     * consumer returned during the round. */
    if (atomic_load_explicit(&s->live, memory_order_relaxed) != s->n_order) {
        size_t kept = 0;
        for (size_t k = 0; k < s->n_order; k++)
            if (!s->iters[s->order[k]].done)
                s->order[kept++] = s->order[k];
        s->n_order = kept;
    }
    s->current = NULL;
    s->dispatching = 0;
    lockstep__window_consumed(s);
}

/* True when a round of s may end in a refill from a consumer's context
 * (lockstep__round_again): in pull mode, until the stream is ending.  An
 * engine that must prepare for the source running there (the fiber
 * engine's floating-point modes) asks this first. */
LOCKSTEP__HOT int lockstep__may_refill(const lockstep_stream *s)
{
    return s->source != NULL && !s->ended;
}

/* The first half of lockstep__round_again: if a refill may happen
 * (lockstep__may_refill), ends the round; returns 1 when the window should
 * then be refilled (some consumer wants more and the source has not
 * stopped). */
LOCKSTEP__HOT int lockstep__round_end_to_refill(lockstep_stream *s)
{
    if (!lockstep__may_refill(s))
        return 0;
    lockstep__round_end(s);
    return lockstep__wanted(s) && !s->source_done;
}

/* Pull mode, cooperative engines: the consumer that ends a round refills
 * the window itself and starts the next round, which spares the two
 * switches through the producer's context (at window 1 they are a third of
 * the cost).  So in lockstep_run the source runs on whichever context ends
 * a round.  Returns the next round's first consumer, made current (it may
 * be the caller itself), or NULL when control must go back to the producer:
 * a pushed stream, the stream is ending, or after this round's end the
 * source ended or failed or no consumer wants more.  In those cases the
 * round has been ended, and the producer must not end it again (see
 * s->dispatching). */
LOCKSTEP__HOT lockstep_iter *lockstep__round_again_with(lockstep_stream *s,
                                                      lockstep_source_fn source,
                                                      void *source_arg)
{
    if (!lockstep__round_end_to_refill(s))
        return NULL;
    int full = s->cap == 1 ? lockstep__fill_one_with(s, source, source_arg)
                           : lockstep__fill_window_with(s, source, source_arg);
    return full ? lockstep__round_begin(s) : NULL;
}

/* lockstep__round_again_with for a bulk source (lockstep__pull_read_with):
 * one read into the emptied window, whatever its size. */
LOCKSTEP__HOT lockstep_iter *lockstep__round_again_read_with(lockstep_stream *s,
                                                           lockstep_read_fn read,
                                                           void *read_arg)
{
    if (!lockstep__round_end_to_refill(s) || !lockstep__fill_read_with(s, read, read_arg))
        return NULL;
    return lockstep__round_begin(s);
}

/* Fills the emptied window from s->source (or s->read_fn) for the next
 * round; returns 1 when it holds items to hand over.  A window of one item
 * is filled inline (one call either way, and the fiber engine's round then
 * costs 2 ns less); longer ones out of line, where the loop keeps its own
 * registers. */
LOCKSTEP__HOT int lockstep__refill(lockstep_stream *s)
{
    if (s->cap == 1)
        return lockstep__fill_one_with(s, s->source, s->source_arg);
    return lockstep__fill_window(s);
}

/* lockstep__round_again_with from s->source, the window refilled by
 * refill(s): lockstep__refill, or an engine's wrapper around it that does
 * what the source needs to run in a consumer's context (the fiber engine
 * loads the source's floating-point modes).  refill is called only when
 * the source is about to be called.  Inlined, so that it is a direct call. */
LOCKSTEP__HOT lockstep_iter *lockstep__round_again(lockstep_stream *s,
                                                 int (*refill)(lockstep_stream *))
{
    if (!lockstep__round_end_to_refill(s) || !refill(s))
        return NULL;
    return lockstep__round_begin(s);
}

/* --- Allocation, with fault injection (src/core.c) ---------------------- */

enum { LOCKSTEP__FAULT_ALLOC = 0, LOCKSTEP__FAULT_MMAP, LOCKSTEP__FAULT_THREAD, LOCKSTEP__FAULT_KINDS };

/* Returns 1 when the test hook says this acquisition of kind must fail. */
int lockstep__fault(int kind);
/* Test hook: the nth acquisition (1-based) of kind from now on fails;
 * 0 disarms.  Returns how many acquisitions of kind happened since the last
 * call, so a test can learn how many fault points a run has. */
LOCKSTEP_API long lockstep__fault_arm(int kind, long nth);

void *lockstep__malloc(size_t size);
void *lockstep__calloc(size_t count, size_t size);
void *lockstep__realloc(void *p, size_t size);
void lockstep__free(void *p);

#endif /* LOCKSTEP_INTERNAL_H */
