/*
 * push_chunks.h: the push-side driver the C tests share.  It opens a
 * stream, feeds it from a source function in chunks of random size, as a
 * producer driven by callbacks would, reports a source error with
 * lockstep_fail, and closes the stream.
 */
#ifndef LOCKSTEP_TEST_PUSH_CHUNKS_H
#define LOCKSTEP_TEST_PUSH_CHUNKS_H

#include "lockstep.h"

#include <stdint.h>
#include <stdlib.h>

/* lockstep_run's twin on the push side: opens a stream with the same
 * arguments, then pulls items (item_size bytes each) from pull(src, item)
 * and pushes them in chunks of 1..max_chunk items, sized by rnd(bound),
 * which returns a number below bound.  Stops when no consumer wants more or
 * the source ends or fails (then lockstep_fail).  Returns what
 * lockstep_open failed with, or lockstep_close(s), or LOCKSTEP_ENOMEM
 * (after closing s) when the chunk buffer cannot be had. */
static int run_by_push(lockstep_source_fn pull, void *src, size_t item_size,
                       const lockstep_consumer *consumers, size_t n,
                       const lockstep_options *options, size_t max_chunk,
                       uint64_t (*rnd)(uint64_t bound))
{
    lockstep_stream *s;
    int rc = lockstep_open(&s, item_size, consumers, n, options);
    if (rc < 0)
        return rc;
    unsigned char *chunk = malloc(max_chunk * item_size);
    if (chunk == NULL) {
        lockstep_close(s);
        return LOCKSTEP_ENOMEM;
    }
    for (;;) {
        size_t want = 1 + (size_t)rnd(max_chunk), got = 0;
        int item_rc = 1;
        while (got < want && (item_rc = pull(src, chunk + got * item_size)) == 1)
            got++;
        if (got > 0 && lockstep_push(s, chunk, got) <= 0)
            break;
        if (item_rc != 1) {
            if (item_rc != 0)
                lockstep_fail(s, item_rc);
            break;
        }
    }
    free(chunk);
    return lockstep_close(s);
}

#endif
