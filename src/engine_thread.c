/*
 * engine_thread.c: the thread engine.  Each consumer runs on its own POSIX
 * thread; the producer (lockstep_run's pull loop, or whoever calls
 * lockstep_push) stays in the calling thread.  Outcome rules are the
 * core's: failures go through lockstep__record_failure, returns through
 * lockstep__consumer_finished, both under this engine's lock.
 *
 * The ring.  The requested window W (total items in flight) is split into
 * R = min(W, RING_SEGMENTS) slots whose sizes differ by at most one and add
 * up to W.  Segment j (j = 0, 1, 2, ... in stream order) lives in slot
 * j % R.  The producer fills the current slot through the core's usual
 * s->win / s->filled; when it is full, dispatch publishes it (records its
 * base and count, sets its holder count to the consumers still attached,
 * bumps `published`) and then waits until the slot of segment j + 1 is
 * free, that is until every consumer has released segment j + 1 - R.  A
 * consumer releases a segment when it asks for the item after it (or
 * returns), so the items it was handed stay valid until its next call, as
 * lockstep_next promises.
 *
 * Why the pull bound holds: the producer writes segment m only after every
 * live consumer asked for the first item of segment m + 1 - R, so the last
 * consumer to stop received that item, and at most the R segments
 * m + 1 - R .. m (W items) minus that one were read past its stop: W - 1.
 * With W = 1 that is strict lockstep: one item, one slot, read the next
 * only when everyone asked for it.  Priming: open waits until each
 * consumer has asked for its first item or returned, so a run whose
 * consumers all return at once reads nothing, and lockstep_live is right
 * from the start.
 *
 * Order among consumers.  Consumers form a chain in index order (see the
 * consumer side below): a consumer takes a segment only after its live
 * predecessor asked for every item of it.  So a failure of consumer j at
 * position p cancels every later consumer exactly at p, as strict lockstep
 * and the fiber engine do; earlier consumers may have run ahead and see
 * the cancellation at their next call.  The outcome is the core's rule in
 * every case, since the earliest failure is always realized.
 *
 * Hand-off.  Consumers read only what the producer published: `published`
 * (release/acquire) covers each slot's base, count and items; `ended`
 * covers the end position and the pending source error, copied from the
 * producer's fields at finish.  `cancel_pos` mirrors the winning failure's
 * position (written under the lock, read lock-free), so consumers never
 * read s->fail_pos, s->win, s->filled, s->base, s->read, s->src_* or
 * s->ended.  Waiting is a bounded spin then a futex sleep (a mutex and a
 * condition variable off Linux) on a per-thread sequence word, with a
 * sleeper count so that nobody pays a system call when nobody sleeps.  The
 * head of the chain sleeps on the producer, every other consumer on its
 * predecessor.  Wake-ups are lazy: a sleeping follower is woken every
 * WAKE_EVERY segments, and always before its leader blocks, returns or
 * finishes, or when a failure is realized.  A consumer that catches up
 * therefore sleeps about once per ring, not once per segment; it is what
 * the fiber engine does too (consumers run when a window fills).  The
 * producer calls the blocking hook (s->opts.blocking) around every sleep
 * (priming, a full ring, joining), and does not spin when a hook is set:
 * spinning while holding, say, Python's GIL would only keep the consumers
 * it waits for from running.
 *
 * A consumer that never returns.  That is the user's bug, and it is
 * contained: the other consumers and the producer go on, because a
 * consumer holds nothing but its own ring position.  The producer blocks
 * only once the ring is full and waits for that consumer to move (as the
 * window bound requires), and lockstep_close blocks in pthread_join until
 * it returns.  The library itself never waits for anything but a consumer
 * making progress or returning, and never holds its lock while calling
 * user code or sleeping, so it cannot deadlock on its own.
 */
#include "internal.h"

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

/* Two cache lines: adjacent-line prefetch makes 64 bytes too few to keep
 * two threads' hot fields from sharing. */
#define CACHE_LINE 128
/* Slots in the ring.  More slots let the producer run further ahead of
 * slow consumers; fewer make each hand-off cover more items (bench_c). */
#define RING_SEGMENTS 4
/* Gate raises (or publishes) after which a sleeping follower (or head) is
 * woken even though its leader is not blocked; it is woken anyway before
 * the leader sleeps, returns or finishes.  One ring's worth: on bench_c's
 * machine this roughly halved the cost of 2,500 consumers against waking
 * every 2 segments, with no loss for two consumers. */
#define WAKE_EVERY 4
/* Rounds before sleeping.  A futex sleep and wake-up costs 5-6 us on this
 * class of machine, more than most hand-offs take, so a waiter first spins
 * for a while; every 64th round it yields instead of pausing, because
 * threads may outnumber cores and the thread being waited for may need this
 * one's core.  Measured with bench_c on 2 cores: 30 pause rounds gave 21 us
 * per item at window 1, 2,000 rounds with yields 5.3 us, and 20,000 no
 * better; heavy consumers went from 1.15x slower than fiber to 1.8x
 * faster. */
#define SPIN_ROUNDS 2000
/* When the spinning threads (consumers, and the producer unless it has a
 * blocking hook) outnumber the CPUs by a little, the thread a waiter waits
 * for is often queued behind a spinner on the same CPU: there a waiter
 * yields on every round instead of every 64th, and sleeps sooner.  bench_c,
 * 2 cores, window 1, 2 consumers: yielding every round took 3.1-3.4 us per
 * item against 5.4 us.  With many more threads than CPUs every yield goes
 * round all the others, and 10,000 consumers ran 4x slower that way, so
 * past twice the CPUs the default applies. */
#define YIELD_EVERY_SPARE_CPUS 64
#define YIELD_EVERY_OVERSUBSCRIBED 1
#define SPIN_OVERSUBSCRIBED 64

/* ------------------------------------------------------------------------
 * Sequence words: wait until a word changes, wake whoever waits on it.
 * ------------------------------------------------------------------------ */

typedef struct {
    _Atomic uint32_t seq;      /* bumped after every change waiters care about */
    _Atomic uint32_t sleepers; /* threads inside word_sleep */
#if !defined(__linux__)
    pthread_mutex_t m;
    pthread_cond_t c;
#endif
} seq_word;

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Initialises w; returns 0 or LOCKSTEP_ENOMEM. */
static int word_init(seq_word *w)
{
    atomic_init(&w->seq, 0);
    atomic_init(&w->sleepers, 0);
#if !defined(__linux__)
    if (pthread_mutex_init(&w->m, NULL) != 0)
        return LOCKSTEP_ENOMEM;
    if (pthread_cond_init(&w->c, NULL) != 0) {
        pthread_mutex_destroy(&w->m);
        return LOCKSTEP_ENOMEM;
    }
#endif
    return 0;
}

static void word_destroy(seq_word *w)
{
#if !defined(__linux__)
    pthread_cond_destroy(&w->c);
    pthread_mutex_destroy(&w->m);
#else
    (void)w;
#endif
}

/* Sleeps while w->seq == seen (spurious returns are fine: callers loop).
 * The sleeper count is incremented before the final check, and wakers bump
 * seq before reading it (all seq_cst), so a wake-up cannot be lost. */
static void word_sleep(seq_word *w, uint32_t seen)
{
    atomic_fetch_add(&w->sleepers, 1);
    if (atomic_load(&w->seq) == seen) {
#if defined(__linux__)
        syscall(SYS_futex, (uint32_t *)(void *)&w->seq, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
        pthread_mutex_lock(&w->m);
        while (atomic_load(&w->seq) == seen)
            pthread_cond_wait(&w->c, &w->m);
        pthread_mutex_unlock(&w->m);
#endif
    }
    atomic_fetch_sub(&w->sleepers, 1);
}

/* Wakes every sleeper, if there is one.  Callers bump seq first. */
static void word_wake(seq_word *w)
{
    if (atomic_load(&w->sleepers) == 0)
        return;
#if defined(__linux__)
    syscall(SYS_futex, (uint32_t *)(void *)&w->seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    pthread_mutex_lock(&w->m);
    pthread_cond_broadcast(&w->c);
    pthread_mutex_unlock(&w->m);
#endif
}

/* Announces a change to waiters of w and wakes them. */
static void word_notify(seq_word *w)
{
    atomic_fetch_add(&w->seq, 1);
    word_wake(w);
}

/* ------------------------------------------------------------------------
 * Engine state.
 * ------------------------------------------------------------------------ */

typedef struct {
    alignas(CACHE_LINE) unsigned char *buf; /* size items */
    size_t size;
    uint64_t base;            /* position of its first item; set before publishing */
    size_t count;             /* items in it; set before publishing */
    _Atomic size_t holders;   /* attached consumers that have not released it */
    size_t owned;             /* producer only: items still to pass to s->drop_items */
} ring_slot;

struct thread_engine;

typedef struct thread_consumer {
    /* First member: next_slow receives &tc->it.  The consumer's own copy of
     * its iterator, on cache lines of its own (the core's iterators sit
     * side by side, and lockstep_next writes cur on every item). */
    alignas(CACHE_LINE) lockstep_iter it;
    struct thread_engine *e;
    uint64_t seg;             /* segment it is in, or waits for; it released those before */
    uint64_t gate_mine;       /* its own copy of gate */
    unsigned unwoken;         /* gate raises since its successor was woken */
    int owed;                 /* its successor sleeps and was not woken */
    pthread_t tid;
    int started;              /* tid must be joined */
    int primed;               /* it asked for its first item or returned */

    /* Read by its successor: it may receive items before gate, because
     * this consumer and every live one before it asked for all of them. */
    alignas(CACHE_LINE) _Atomic uint64_t gate;
    _Atomic(struct thread_consumer *) pred; /* live predecessor; NULL: it is the head */
    _Atomic(struct thread_consumer *) succ; /* live successor, or NULL */
    seq_word word;            /* it sleeps here */
} thread_consumer;

typedef struct thread_engine {
    pthread_mutex_t lock;     /* record_failure, consumer_finished, attached, links, publish */
    lockstep_stream *s;
    ring_slot *slots;
    size_t n_slots;
    thread_consumer *cons;
    void *raw_slots, *raw_cons, *raw_ring, *raw_self;
    size_t started;           /* threads created */
    size_t words;             /* consumer words initialised */
    size_t attached;          /* under lock: consumers that have not returned */
    int joined;               /* every started thread was joined */

    /* Producer only. */
    uint64_t fill_seg;        /* segment being filled */
    unsigned unwoken;         /* publishes since the head was woken */
    int wake_owed;            /* the head sleeps and was not woken */
    int spin;                 /* producer may spin (no blocking hook) */
    int yield_every;          /* spinning waiters yield every this many rounds */
    int spin_rounds;          /* and sleep after this many */

    /* Written by the producer (and by returning consumers), read by all. */
    alignas(CACHE_LINE) _Atomic uint64_t published; /* segments published */
    _Atomic uint64_t cancel_pos; /* position of the winning failure, or UINT64_MAX */
    _Atomic int ended;        /* end_pos and src_* below are set */
    _Atomic(thread_consumer *) head; /* lowest-index live consumer */
    uint64_t end_pos;
    int src_pending;
    uint64_t src_pos;
    int src_code;

    /* Written by consumers, read by the producer. */
    alignas(CACHE_LINE) seq_word prod; /* the producer waits here */
    _Atomic size_t primed;
} thread_engine;

/* The calling thread's own iterator, when it is a consumer thread. */
static _Thread_local lockstep_iter *tl_iter;

/* A stable address for iterators with no items in hand. */
static const unsigned char no_items[1];

/* Allocates size bytes aligned to CACHE_LINE; *raw receives what to free. */
static void *alloc_aligned(size_t size, void **raw)
{
    *raw = NULL;
    if (size > SIZE_MAX - CACHE_LINE)
        return NULL;
    unsigned char *p = lockstep__malloc(size + CACHE_LINE);
    if (p == NULL)
        return NULL;
    *raw = p;
    return p + (CACHE_LINE - (uintptr_t)p % CACHE_LINE) % CACHE_LINE;
}

/* Wakes every consumer: the stream ended or a failure was realized.
 * Every word is initialised before the first thread starts, and s->n never
 * changes (e->started does, while consumers may already call this). */
static void wake_all(thread_engine *e)
{
    for (size_t i = 0; i < e->s->n; i++)
        word_notify(&e->cons[i].word);
}

/* One round of a waiter's spin, producer's or consumer's: a pause, or a
 * yield every e->yield_every rounds.  Returns 0, without spinning, once the
 * waiter has spun e->spin_rounds rounds: then it should sleep. */
static inline int spin_round(const thread_engine *e, int *spins)
{
    if (*spins >= e->spin_rounds)
        return 0;
    if (++*spins % e->yield_every == 0)
        sched_yield();
    else
        cpu_relax();
    return 1;
}

/* ------------------------------------------------------------------------
 * Producer side.
 * ------------------------------------------------------------------------ */

/* The producer waits until cond(e, arg) holds.  It spins briefly unless a
 * blocking hook is set, then sleeps between the hook's before/after. */
static void producer_wait(thread_engine *e, int (*cond)(thread_engine *, size_t), size_t arg)
{
    const lockstep_blocking_hook *hook = e->s->opts.blocking;
    for (int spins = 0;;) {
        uint32_t seen = atomic_load_explicit(&e->prod.seq, memory_order_acquire);
        if (cond(e, arg))
            return;
        if (e->spin && spin_round(e, &spins))
            continue;
        void *token = NULL;
        if (hook != NULL && hook->before_wait != NULL)
            token = hook->before_wait(hook->arg);
        word_sleep(&e->prod, seen);
        if (hook != NULL && hook->after_wait != NULL)
            hook->after_wait(hook->arg, token);
    }
}

/* Every started consumer asked for its first item or returned. */
static int all_primed(thread_engine *e, size_t n)
{
    return atomic_load(&e->primed) >= n;
}

/* Slot k is free, or there is no point waiting: the run failed, so the
 * producer will not write again (lockstep_live stays 0). */
static int slot_free(thread_engine *e, size_t k)
{
    return atomic_load(&e->slots[k].holders) == 0 || atomic_load(&e->s->failed);
}

/* Wakes the head consumer, the only one that waits for the producer. */
static void wake_head(thread_engine *e)
{
    e->unwoken = 0;
    e->wake_owed = 0;
    thread_consumer *h = atomic_load(&e->head);
    if (h != NULL)
        word_notify(&h->word);
}

/* Publishes the filled part of the current slot as segment fill_seg and
 * advances the producer's window position past it. */
static void publish(thread_engine *e)
{
    lockstep_stream *s = e->s;
    ring_slot *sl = &e->slots[e->fill_seg % e->n_slots];
    sl->base = s->base;
    sl->count = s->filled;
    /* Under the lock so that a consumer returning now either is counted
     * here or releases this segment itself. */
    pthread_mutex_lock(&e->lock);
    atomic_store_explicit(&sl->holders, e->attached, memory_order_relaxed);
    atomic_store(&e->published, e->fill_seg + 1);
    pthread_mutex_unlock(&e->lock);
    e->fill_seg++;
    /* The items stay in the slot, in consumers' hands, until the producer
     * reclaims it (thread_dispatch) or the stream is destroyed: only then
     * may a binding release them. */
    sl->owned = s->filled;
    s->base += s->filled;
    s->filled = 0;
    /* Announce to the head without a system call when it is awake; when
     * it sleeps, wake it only every few segments (and before the producer
     * blocks: see dispatch), so that it takes several at once. */
    thread_consumer *h = atomic_load(&e->head);
    if (h == NULL)
        return;
    atomic_fetch_add(&h->word.seq, 1);
    if (atomic_load(&h->word.sleepers) != 0) {
        if (++e->unwoken >= WAKE_EVERY)
            wake_head(e);
        else
            e->wake_owed = 1;
    }
}

/* The current slot is full: publish it, then wait for the next slot. */
static int thread_dispatch(lockstep_stream *s)
{
    thread_engine *e = s->engine;
    if (NEVER(s->win == NULL))
        return 0;
    publish(e);
    size_t k = e->fill_seg % e->n_slots;
    if (!slot_free(e, k)) {
        /* Its holders may be waiting, through the chain, on segments
         * published since the head was last woken. */
        if (e->wake_owed)
            wake_head(e);
        producer_wait(e, slot_free, k);
    }
    if (atomic_load(&e->slots[k].holders) == 0) {
        lockstep__drop(s, e->slots[k].buf, e->slots[k].owned);
        e->slots[k].owned = 0;
        s->win = e->slots[k].buf;
        s->cap = e->slots[k].size;
    } else {
        s->win = NULL; /* failed: lockstep_live is 0 for good, nothing is written */
    }
    return 0;
}

/* Joins every started thread, between the blocking hook's calls. */
static void join_all(thread_engine *e)
{
    if (e->joined)
        return;
    const lockstep_blocking_hook *hook = e->s->opts.blocking;
    void *token = NULL;
    if (hook != NULL && hook->before_wait != NULL)
        token = hook->before_wait(hook->arg);
    for (size_t i = 0; i < e->started; i++)
        if (e->cons[i].started) {
            pthread_join(e->cons[i].tid, NULL);
            e->cons[i].started = 0;
        }
    if (hook != NULL && hook->after_wait != NULL)
        hook->after_wait(hook->arg, token);
    e->joined = 1;
}

/* The stream ended: publish the last partial segment and the end (with a
 * pending source error), then let every consumer finish. */
static int thread_finish(lockstep_stream *s)
{
    thread_engine *e = s->engine;
    if (s->win != NULL && s->filled > 0)
        publish(e);
    /* Under the lock: the producer may have stopped because it saw
     * s->failed while the failing consumer was still mirroring it into
     * cancel_pos.  Taking the lock waits for that, so a consumer that sees
     * `ended` also sees the failure that ended the stream, and is
     * cancelled rather than told the stream ended early. */
    pthread_mutex_lock(&e->lock);
    e->end_pos = s->read;
    e->src_pending = s->src_pending;
    e->src_pos = s->src_pos;
    e->src_code = s->src_code;
    atomic_store(&e->ended, 1);
    pthread_mutex_unlock(&e->lock);
    wake_all(e);
    join_all(e);
    /* Hand the consumers' final state back to the core's iterators. */
    for (size_t i = 0; i < s->n; i++) {
        s->iters[i].code = e->cons[i].it.code;
        s->iters[i].done = e->cons[i].it.done;
        s->iters[i].cancelled = e->cons[i].it.cancelled;
        s->iters[i].finished = e->cons[i].it.finished;
    }
    if (NEVER(atomic_load(&s->live) != 0))
        return LOCKSTEP_ESTATE;
    return 0;
}

/* Frees everything; every thread has been joined (finish, or open's
 * failure path). */
static void engine_free(thread_engine *e)
{
    for (size_t i = 0; i < e->words; i++)
        word_destroy(&e->cons[i].word);
    word_destroy(&e->prod);
    pthread_mutex_destroy(&e->lock);
    lockstep__free(e->raw_ring);
    lockstep__free(e->raw_cons);
    lockstep__free(e->raw_slots);
    lockstep__free(e->raw_self);
}

static void thread_destroy(lockstep_stream *s)
{
    thread_engine *e = s->engine;
    if (e == NULL)
        return;
    join_all(e);
    /* Every consumer has returned: release what the ring still holds,
     * published or not. */
    if (e->slots != NULL) {
        for (size_t k = 0; k < e->n_slots; k++)
            lockstep__drop(s, e->slots[k].buf, e->slots[k].owned);
        if (s->win != NULL)
            lockstep__drop(s, s->win, s->filled);
    }
    engine_free(e);
    s->engine = NULL;
    s->win = NULL;
}

/* ------------------------------------------------------------------------
 * Consumer side.
 *
 * Consumers form a chain in index order, like the fiber engine's rounds: a
 * consumer takes a segment only once its live predecessor has asked for
 * every item of it (the predecessor's gate).  So when consumer j returns a
 * failure at position p, no consumer after j has received item p: it is
 * cancelled there exactly as in strict lockstep, while consumers before j
 * may have run ahead (they see the cancellation at their next call).  The
 * head of the chain waits for the producer, every other consumer for its
 * predecessor; the gate moves once per segment, so a follower takes whole
 * segments and the chain costs one hand-off per segment per consumer.
 * ------------------------------------------------------------------------ */

/* Leaves it with no items in hand at position pos. */
static void park(lockstep_iter *it, uint64_t pos)
{
    it->end_pos = pos;
    it->head.cur = it->head.end = no_items;
}

/* Counts tc as primed once, and tells a producer waiting in open. */
static void mark_primed(thread_consumer *tc)
{
    if (tc->primed)
        return;
    tc->primed = 1;
    atomic_fetch_add(&tc->e->primed, 1);
    word_notify(&tc->e->prod);
}

/* Drops one holder of slot k; the last one tells the producer. */
static void release_slot(thread_engine *e, size_t k)
{
    if (atomic_fetch_sub(&e->slots[k].holders, 1) == 1)
        word_notify(&e->prod);
}

/* Wakes tc's successor if a raise of the gate left it asleep. */
static void pay_debt(thread_consumer *tc)
{
    if (!tc->owed)
        return;
    tc->owed = 0;
    tc->unwoken = 0;
    thread_consumer *q = atomic_load(&tc->succ);
    if (q != NULL)
        word_notify(&q->word);
}

/* Raises tc's gate to g (gates never go down).  A sleeping successor is
 * woken every WAKE_EVERY raises, or when tc itself waits or returns. */
static void raise_gate(thread_consumer *tc, uint64_t g)
{
    if (g <= tc->gate_mine)
        return;
    tc->gate_mine = g;
    atomic_store(&tc->gate, g);
    thread_consumer *q = atomic_load(&tc->succ);
    if (q == NULL)
        return;
    atomic_fetch_add(&q->word.seq, 1);
    if (atomic_load(&q->word.sleepers) != 0) {
        tc->owed = 1;
        if (++tc->unwoken >= WAKE_EVERY)
            pay_debt(tc);
    }
}

/* After lockstep__record_failure (under the lock): mirrors the position
 * from which the winning failure cancels (lockstep__cancel_pos) for
 * lock-free readers.  Returns 1 when it moved. */
static int mirror_failure(thread_engine *e)
{
    lockstep_stream *s = e->s;
    if (!atomic_load_explicit(&s->failed, memory_order_relaxed) ||
        atomic_load(&e->cancel_pos) == lockstep__cancel_pos(s))
        return 0;
    atomic_store(&e->cancel_pos, lockstep__cancel_pos(s));
    return 1;
}

/* A failure was realized: cancelled consumers must wake to see it, and
 * the producer stops waiting for a slot. */
static void announce_failure(thread_engine *e)
{
    wake_all(e);
    word_notify(&e->prod);
}

/* The consumer's slow path: its range is used up. */
static const void *thread_next_slow(lockstep_iter *it)
{
    lockstep_stream *s = it->stream;
    if (NEVER(tl_iter != it)) {
        /* Not the consumer's own thread: touch nothing of it. */
        thread_engine *e = s->engine;
        pthread_mutex_lock(&e->lock);
        s->misuse = LOCKSTEP_EPERM;
        pthread_mutex_unlock(&e->lock);
        return NULL;
    }
    thread_consumer *tc = (thread_consumer *)(void *)it;
    thread_engine *e = tc->e;
    /* Parked at its detach position, as after the end.  Checked here and
     * not in the core's lockstep__next_slow: only the owner's thread, known
     * above, may read it's flags (the owner writes them). */
    if (it->detached)
        return NULL;
    uint64_t pos = lockstep__iter_pos(it);
    for (int spins = 0;;) {
        /* Snapshot in this order.  The predecessor's gate before
         * cancel_pos: a predecessor that fails mirrors the failure before
         * it unlinks, so a gate it no longer holds comes with the failure.
         * `ended` before cancel_pos and published: once it is set, they
         * show every segment and every failure the producer knew of when
         * it finished (see finish). */
        uint32_t seen = atomic_load(&tc->word.seq);
        thread_consumer *pred = atomic_load(&tc->pred);
        uint64_t gate = pred != NULL ? atomic_load(&pred->gate) : UINT64_MAX;
        int ended = atomic_load(&e->ended);
        uint64_t cancel = atomic_load(&e->cancel_pos);
        uint64_t published = atomic_load(&e->published);
        /* What it may tell its successor: everyone up to it asked for
         * every item before pos + 1 (it is asking for pos now). */
        raise_gate(tc, gate < pos + 1 ? gate : pos + 1);
        if (pos >= cancel) {
            it->cancelled = 1;
            park(it, pos);
            pay_debt(tc);
            return NULL;
        }
        if (tc->seg < published) {
            ring_slot *sl = &e->slots[tc->seg % e->n_slots];
            uint64_t stop = sl->base + sl->count;
            if (pos >= stop) {
                /* It asks for the item after this segment: it is done with it. */
                release_slot(e, tc->seg % e->n_slots);
                tc->seg++;
                continue;
            }
            if (cancel < stop)
                stop = cancel; /* nobody receives an item at or past a failure */
            if (gate >= stop) {
                const unsigned char *item = sl->buf + (size_t)(pos - sl->base) * it->head.item_size;
                it->head.cur = item + it->head.item_size;
                it->head.end = item + (size_t)(stop - pos) * it->head.item_size;
                it->end_pos = stop;
                return item;
            }
            /* Its predecessor has not asked for all of it yet: wait. */
        } else if (ended) {
            if (e->src_pending && pos == e->src_pos) {
                /* Someone needs the item the source failed to produce. */
                pthread_mutex_lock(&e->lock);
                lockstep__record_failure(s, pos, LOCKSTEP__RANK_SOURCE, e->src_code);
                int moved = mirror_failure(e);
                pthread_mutex_unlock(&e->lock);
                if (moved)
                    announce_failure(e);
                continue;
            }
            it->finished = 1;
            park(it, pos);
            pay_debt(tc);
            return NULL;
        }
        park(it, pos);
        mark_primed(tc);
        if (spin_round(e, &spins))
            continue;
        pay_debt(tc);
        word_sleep(&tc->word, seen);
    }
}

/* Takes tc out of the chain (under the lock): it releases what it still
 * holds (its segment and any published after) and its successor follows
 * its predecessor.  Returns the successor to wake, or NULL. */
static thread_consumer *leave_chain(thread_consumer *tc)
{
    thread_engine *e = tc->e;
    e->attached--;
    uint64_t published = atomic_load(&e->published);
    for (uint64_t j = tc->seg; j < published; j++)
        release_slot(e, j % e->n_slots);
    tc->seg = published;
    thread_consumer *p = atomic_load(&tc->pred), *q = atomic_load(&tc->succ);
    if (p != NULL)
        atomic_store(&p->succ, q);
    else
        atomic_store(&e->head, q);
    if (q != NULL)
        atomic_store(&q->pred, p);
    return q;
}

/* Records that tc's function returned rc and, unless it detached before,
 * takes it out of the chain; then wakes whoever must learn of it. */
static void consumer_returned(thread_consumer *tc, int rc)
{
    thread_engine *e = tc->e;
    thread_consumer *q = NULL;
    pthread_mutex_lock(&e->lock);
    int was_detached = tc->it.detached;
    lockstep__consumer_finished(&tc->it, rc);
    /* Mirror a failure before unlinking: see the snapshot in next_slow. */
    int moved = mirror_failure(e);
    if (!was_detached)
        q = leave_chain(tc);
    pthread_mutex_unlock(&e->lock);
    if (q != NULL)
        word_notify(&q->word); /* it follows someone else now */
    if (moved)
        announce_failure(e);
    mark_primed(tc);
}

/* detach: as a return without a code, on the consumer's own thread. */
static int thread_detach(lockstep_iter *it)
{
    thread_engine *e = it->stream->engine;
    if (NEVER(tl_iter != it)) {
        pthread_mutex_lock(&e->lock);
        it->stream->misuse = LOCKSTEP_EPERM;
        pthread_mutex_unlock(&e->lock);
        return LOCKSTEP_EPERM;
    }
    if (it->detached)
        return 0;
    thread_consumer *tc = (thread_consumer *)(void *)it;
    pay_debt(tc);
    pthread_mutex_lock(&e->lock);
    lockstep__detach_mark(it);
    thread_consumer *q = leave_chain(tc);
    pthread_mutex_unlock(&e->lock);
    if (q != NULL)
        word_notify(&q->word);
    mark_primed(tc);
    return 0;
}

/* Every consumer thread: run the function, then detach under the lock.
 * It starts with the caller's floating-point modes from open.  POSIX has a
 * new thread inherit them from its creator, which is the caller here; the
 * explicit load keeps that true where a C library or emulator does not. */
static void *consumer_thread(void *arg)
{
    thread_consumer *tc = arg;
    lockstep__fpmode_load(&tc->e->s->fpmode);
    tl_iter = &tc->it;
    int rc = tc->it.consumer.fn(&tc->it, tc->it.consumer.arg);
    consumer_returned(tc, rc);
    tl_iter = NULL;
    return NULL;
}

/* ------------------------------------------------------------------------
 * Open.
 * ------------------------------------------------------------------------ */

/* Cancels a run that could not start every thread: consumers already
 * running see NULL (cancelled) and return; then they are joined. */
static void abort_start(thread_engine *e)
{
    atomic_store(&e->cancel_pos, 0);
    announce_failure(e);
    join_all(e);
}

/* CPUs online (sysconf), counted once; 1 if unknown.  Not this process's
 * affinity mask, so under taskset or a cpuset the spin settings below may
 * be chosen for more CPUs than the threads really have. */
static size_t online_cpus(void)
{
    static _Atomic long cached;
    long n = atomic_load_explicit(&cached, memory_order_relaxed);
    if (n == 0) {
        n = sysconf(_SC_NPROCESSORS_ONLN);
        if (n < 1)
            n = 1;
        atomic_store_explicit(&cached, n, memory_order_relaxed);
    }
    return (size_t)n;
}

/* Allocates the ring, starts every consumer, and waits until each has
 * asked for its first item or returned.  Frees everything on failure. */
static int thread_open(lockstep_stream *s)
{
    void *raw;
    thread_engine *e = alloc_aligned(sizeof *e, &raw);
    if (e == NULL)
        return LOCKSTEP_ENOMEM;
    memset(e, 0, sizeof *e);
    e->raw_self = raw;
    e->s = s;
    e->spin = s->opts.blocking == NULL;
    size_t spinners = s->n + (size_t)e->spin, cpus = online_cpus();
    int oversubscribed = spinners > cpus && spinners <= 2 * cpus;
    e->yield_every = oversubscribed ? YIELD_EVERY_OVERSUBSCRIBED : YIELD_EVERY_SPARE_CPUS;
    e->spin_rounds = oversubscribed ? SPIN_OVERSUBSCRIBED : SPIN_ROUNDS;
    atomic_init(&e->cancel_pos, UINT64_MAX);
    if (pthread_mutex_init(&e->lock, NULL) != 0) {
        lockstep__free(raw);
        return LOCKSTEP_ENOMEM;
    }
    if (word_init(&e->prod) < 0) {
        pthread_mutex_destroy(&e->lock);
        lockstep__free(raw);
        return LOCKSTEP_ENOMEM;
    }

    /* The ring: R slots adding up to the window, each on its own lines. */
    size_t w = s->window;
    e->n_slots = w < (size_t)RING_SEGMENTS ? w : (size_t)RING_SEGMENTS;
    size_t total = 0;
    if (s->n > SIZE_MAX / sizeof *e->cons)
        goto nomem;
    e->slots = alloc_aligned(e->n_slots * sizeof *e->slots, &e->raw_slots);
    e->cons = alloc_aligned(s->n * sizeof *e->cons, &e->raw_cons);
    if (e->slots == NULL || e->cons == NULL)
        goto nomem;
    memset(e->slots, 0, e->n_slots * sizeof *e->slots);
    memset(e->cons, 0, s->n * sizeof *e->cons);
    for (size_t k = 0; k < e->n_slots; k++) {
        size_t size = w / e->n_slots + (k < w % e->n_slots);
        e->slots[k].size = size;
        total += (size * s->item_size + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    }
    unsigned char *ring = alloc_aligned(total, &e->raw_ring);
    if (ring == NULL)
        goto nomem;
    for (size_t k = 0; k < e->n_slots; k++) {
        e->slots[k].buf = ring;
        atomic_init(&e->slots[k].holders, 0);
        ring += (e->slots[k].size * s->item_size + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    }
    /* The chain, in index order. */
    for (; e->words < s->n; e->words++) {
        thread_consumer *tc = &e->cons[e->words];
        if (word_init(&tc->word) < 0)
            goto nomem;
        tc->it = s->iters[e->words];
        tc->e = e;
        atomic_init(&tc->gate, 0);
        atomic_init(&tc->pred, e->words > 0 ? tc - 1 : NULL);
        atomic_init(&tc->succ, e->words + 1 < s->n ? tc + 1 : NULL);
    }
    atomic_init(&e->head, s->n > 0 ? &e->cons[0] : NULL);
    s->win = e->slots[0].buf;
    s->cap = e->slots[0].size;
    s->engine = e;

    /* The threads. */
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        goto nomem;
    size_t stack = s->opts.stack_size ? s->opts.stack_size : LOCKSTEP_DEFAULT_STACK_SIZE;
    long min_stack = sysconf(_SC_THREAD_STACK_MIN);
    if (min_stack > 0 && stack < (size_t)min_stack)
        stack = (size_t)min_stack;
    pthread_attr_setstacksize(&attr, stack);
    e->attached = s->n;
    int rc = 0;
    for (size_t i = 0; i < s->n; i++) {
        thread_consumer *tc = &e->cons[i];
        if (lockstep__fault(LOCKSTEP__FAULT_THREAD) ||
            pthread_create(&tc->tid, &attr, consumer_thread, tc) != 0) {
            rc = LOCKSTEP_ETHREAD;
            break;
        }
        tc->started = 1;
        e->started = i + 1;
    }
    pthread_attr_destroy(&attr);
    if (rc < 0) {
        abort_start(e);
        engine_free(e);
        s->engine = NULL;
        s->win = NULL;
        return rc;
    }
    producer_wait(e, all_primed, s->n);
    return 0;

nomem:
    engine_free(e);
    s->engine = NULL;
    s->win = NULL;
    return LOCKSTEP_ENOMEM;
}

/* Push, fail and close are refused from the stream's own consumer threads
 * (the core checks re-entry on the producer's thread itself). */
static int thread_check_producer(const lockstep_stream *s)
{
    lockstep_iter *it = tl_iter;
    return it != NULL && it->stream == s ? LOCKSTEP_ESTATE : 0;
}

const lockstep__engine_ops lockstep__engine_thread = {
    .name = "thread",
    .default_window = LOCKSTEP_DEFAULT_THREAD_WINDOW,
    .default_window_bytes = LOCKSTEP_DEFAULT_THREAD_WINDOW_BYTES,
    .concurrent = 1,
    .open = thread_open,
    .dispatch = thread_dispatch,
    .finish = thread_finish,
    .destroy = thread_destroy,
    .next_slow = thread_next_slow,
    .check_producer = thread_check_producer,
    .detach = thread_detach,
};
