/*
 * check.h: the tiny test framework every C test uses.  CHECK stays active
 * under NDEBUG (it is not assert), counts passes and failures, and prints
 * the failing expression with its location.  A test program ends with
 * CHECK_SUMMARY(name), which prints "name: N passed, M failed" and returns
 * the exit status.
 */
#ifndef LOCKSTEP_TEST_CHECK_H
#define LOCKSTEP_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static long check_passed, check_failed;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (cond) {                                                                    \
            check_passed++;                                                            \
        } else {                                                                       \
            check_failed++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
        }                                                                              \
    } while (0)

/* Like CHECK(a == b) for integers, printing both values on failure. */
#define CHECK_EQ(a, b)                                                                 \
    do {                                                                               \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                \
        if (check_a_ == check_b_) {                                                    \
            check_passed++;                                                            \
        } else {                                                                       \
            check_failed++;                                                            \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld != %lld)\n",       \
                    __FILE__, __LINE__, #a, #b, check_a_, check_b_);                   \
        }                                                                              \
    } while (0)

#define CHECK_SUMMARY(name)                                                            \
    (printf("%s: %ld passed, %ld failed\n", (name), check_passed, check_failed),       \
     check_failed == 0 && check_passed > 0 ? EXIT_SUCCESS : EXIT_FAILURE)

#endif
