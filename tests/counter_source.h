/*
 * counter_source.h: the source the C tests share.  It yields 0, 1, 2, ...
 * below limit (UINT64_MAX: forever), fails with fail_code when asked for
 * item fail_at, and counts the items it produced, so tests can check the
 * pull bound.  counter_read is the same stream as a bulk source
 * (lockstep_run_read) that returns short counts of varying size.
 */
#ifndef LOCKSTEP_TEST_COUNTER_SOURCE_H
#define LOCKSTEP_TEST_COUNTER_SOURCE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t next, limit, fail_at;
    int fail_code;
    uint64_t pulls; /* calls that produced an item */
} counter_source;

/* lockstep_source_fn: writes item i as an 8-byte integer equal to i. */
static int counter_pull(void *arg, void *item)
{
    counter_source *src = arg;
    if (src->next == src->fail_at)
        return src->fail_code;
    if (src->next >= src->limit)
        return 0;
    *(uint64_t *)item = src->next++;
    src->pulls++;
    return 1;
}

/* lockstep_read_fn: writes the next items, as many as max allows but
 * often fewer (1 to 13, varying with the position, as a pipe would), and
 * never the item at fail_at, where it fails instead. */
static inline long counter_read(void *arg, void *items, size_t max)
{
    counter_source *src = arg;
    if (src->next == src->fail_at)
        return src->fail_code;
    if (src->next >= src->limit)
        return 0;
    uint64_t n = 1 + (src->next * 7919u) % 13u;
    if (n > max)
        n = max;
    if (n > src->limit - src->next)
        n = src->limit - src->next;
    if (src->fail_at > src->next && n > src->fail_at - src->next)
        n = src->fail_at - src->next;
    for (uint64_t i = 0; i < n; i++)
        ((uint64_t *)items)[i] = src->next++;
    src->pulls += n;
    return (long)n;
}

/* A source of limit items that never fails. */
static counter_source counter(uint64_t limit)
{
    counter_source s = {0, limit, UINT64_MAX, 0, 0};
    return s;
}

#endif
