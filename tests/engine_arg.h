/*
 * engine_arg.h: how a per-engine test program (conformance.c, fenv.c)
 * learns its engine from the command line: `PROGRAM fiber|thread|buffer`,
 * fiber when no argument is given.
 */
#ifndef LOCKSTEP_TEST_ENGINE_ARG_H
#define LOCKSTEP_TEST_ENGINE_ARG_H

#include "lockstep.h"

#include <stdio.h>
#include <string.h>

/* Sets *engine and *name from argv[1].  Returns 1, or prints the usage and
 * returns 0 for a name that is no engine. */
static int engine_from_args(int argc, char **argv, lockstep_engine *engine, const char **name)
{
    *name = argc > 1 ? argv[1] : "fiber";
    for (int e = 0; e < LOCKSTEP_ENGINE_COUNT_; e++)
        if (strcmp(*name, lockstep_engine_name((lockstep_engine)e)) == 0) {
            *engine = (lockstep_engine)e;
            return 1;
        }
    fprintf(stderr, "usage: %s fiber|thread|buffer\n", argv[0]);
    return 0;
}

#endif
