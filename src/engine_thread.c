/*
 * engine_thread.c: placeholder for the thread engine.  Until it lands, the
 * engine reports itself unavailable and lockstep_open returns
 * LOCKSTEP_ENOTSUP for it.
 */
#include "internal.h"

const lockstep__engine_ops lockstep__engine_thread = {
    .name = "thread",
};
