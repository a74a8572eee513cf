/*
 * engine_arg.h: what the per-engine C tests share: the engine named on the
 * command line (test_x ENGINE, fiber by default), the opening of a main
 * that runs on it, and options for a run on it.
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

/* The opening of a per-engine test's main: sets *engine from argv
 * (engine_arg) and returns 1 when the test should run on it.  Otherwise
 * returns 0 with *status set to main's exit status: 2 after the usage for
 * an unknown name, 0 after saying so when this build lacks the engine. */
static inline int engine_test_begin(int argc, char **argv, lockstep_engine *engine, int *status)
{
    *status = 2;
    if (!engine_arg(argc, argv, engine))
        return 0;
    *status = 0;
    if (!lockstep_engine_available(*engine)) {
        printf("engine %s is not available in this build\n", lockstep_engine_name(*engine));
        return 0;
    }
    return 1;
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
