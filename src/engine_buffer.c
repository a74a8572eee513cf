/*
 * engine_buffer.c: the reference engine.  It reads the whole stream into a
 * growing array first, then runs each consumer to completion in index
 * order on the caller's own stack.  It is the "buffer" strategy of the
 * problem statement and the oracle the tests compare the other engines to.
 * By definition it ignores the pull bound (it reads everything) and cannot
 * handle infinite sources, but it keeps the deterministic outcome: the core
 * cancels each consumer at the winning failure's position.  Consumers get
 * the caller's floating-point modes as on any engine (see buffer_finish).
 */
#include "internal.h"

/* Initial capacity in items: a page's worth of small items, so short
 * streams never reallocate. */
#define BUFFER_INITIAL_ITEMS 512

/* Allocates the first stretch of the array.  Consumers start at close. */
static int buffer_open(lockstep_stream *s)
{
    size_t cap = BUFFER_INITIAL_ITEMS;
    if (s->item_size > SIZE_MAX / cap)
        cap = 1;
    s->win = lockstep__malloc(cap * s->item_size);
    if (s->win == NULL)
        return LOCKSTEP_ENOMEM;
    s->cap = cap;
    return 0;
}

/* The array is full: double it.  Items are never handed over early.  A
 * bulk source dispatches after every read, full or not: then it waits. */
static int buffer_grow(lockstep_stream *s)
{
    if (s->filled < s->cap)
        return 0;
    if (s->cap > SIZE_MAX / 2 / s->item_size)
        return LOCKSTEP_ENOMEM;
    unsigned char *grown = lockstep__realloc(s->win, s->cap * 2 * s->item_size);
    if (grown == NULL)
        return LOCKSTEP_ENOMEM;
    s->win = grown;
    s->cap *= 2;
    return 0;
}

/* Runs each consumer over everything read, one after another.  Each starts
 * with the caller's floating-point modes from open, as a fiber or thread
 * would, and its changes to them stay its own: the caller's are put back
 * after it. */
static int buffer_finish(lockstep_stream *s)
{
    lockstep__fpmode caller;
    lockstep__fpmode_get(&caller);
    for (size_t i = 0; i < s->n; i++) {
        lockstep_iter *it = &s->iters[i];
        s->current = it;
        s->dispatching = 1;
        lockstep__fpmode_load(&s->fpmode);
        int rc = it->consumer.fn(it, it->consumer.arg);
        lockstep__fpmode_load(&caller);
        s->dispatching = 0;
        s->current = NULL;
        lockstep__consumer_finished(it, rc);
    }
    return 0;
}

static void buffer_destroy(lockstep_stream *s)
{
    lockstep__drop(s, s->win, s->filled);
    lockstep__free(s->win);
    s->win = NULL;
}

/* Everything is already in the array, so a consumer never waits: if the
 * core says it must, that is a bug, reported as LOCKSTEP_ESTATE.  Returns
 * 1, so that lockstep_next gives up (NULL). */
static int buffer_never_waits(lockstep_iter *it)
{
    it->stream->misuse = LOCKSTEP_ESTATE;
    return 1;
}

/* The core's cooperative slow path, which never passes control on. */
static const void *buffer_next_slow(lockstep_iter *it)
{
    return lockstep__next_slow_with(it, buffer_never_waits);
}

const lockstep__engine_ops lockstep__engine_buffer = {
    .name = "buffer",
    .open = buffer_open,
    .dispatch = buffer_grow,
    .finish = buffer_finish,
    .destroy = buffer_destroy,
    .next_slow = buffer_next_slow,
};
