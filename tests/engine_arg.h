/*
 * engine_arg.h: what the per-engine C tests share: the engine named on the
 * command line (test_x ENGINE, fiber by default), and options for a run on
 * it.
 */
#ifndef LOCKSTEP_TEST_ENGINE_ARG_H
#define LOCKSTEP_TEST_ENGINE_ARG_H

#include "lockstep.h"

#include <stdio.h>
#include <string.h>

/* Sets *engine to the engine argv[1] names (fiber without one) and
 * returns 1; prints the usage and returns 0 for an unknown name. */
static inline int engine_arg(int argc, char **argv, lockstep_engine *engine)
{
    const char *name = argc > 1 ? argv[1] : "fiber";
    for (int e = 0; e < LOCKSTEP_ENGINE_COUNT_; e++)
        if (strcmp(name, lockstep_engine_name((lockstep_engine)e)) == 0) {
            *engine = (lockstep_engine)e;
            return 1;
        }
    fprintf(stderr, "usage: %s fiber|thread|buffer\n", argv[0]);
    return 0;
}

/* Default options for a run on engine e with window and report set. */
static inline lockstep_options engine_opts(lockstep_engine e, size_t window, lockstep_report *rep)
{
    lockstep_options o;
    lockstep_options_init(&o);
    o.engine = e;
    o.window = window;
    o.report = rep;
    return o;
}

#endif
