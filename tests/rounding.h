/*
 * rounding.h: reads the rounding mode from what the hardware does rather
 * than from fegetround, for the tests of floating-point modes (test_fiber.c,
 * fenv.c).  Double-to-float conversions use the SSE MXCSR on x86-64 and the
 * FPCR on aarch64 (and valgrind honours the mode for them), while glibc's
 * fegetround reads the x87 control word on x86-64: together they cover
 * both registers.
 */
#ifndef LOCKSTEP_TEST_ROUNDING_H
#define LOCKSTEP_TEST_ROUNDING_H

#include <fenv.h>

static volatile double rounding_third = 1.0 / 3.0, rounding_seven_tenths = 0.7;

/* The rounding mode double-to-float conversions use: the nearest float to
 * 1/3 lies above it and the nearest to 0.7 below, which tells FE_TONEAREST,
 * FE_UPWARD and FE_DOWNWARD apart (FE_TOWARDZERO rounds both down, as
 * FE_DOWNWARD does for positive values); -1 for anything else. */
static int conversion_mode(void)
{
    volatile float a = (float)rounding_third, b = (float)rounding_seven_tenths;
    int a_up = (double)a > rounding_third, b_up = (double)b > rounding_seven_tenths;
    if (a_up && !b_up)
        return FE_TONEAREST;
    if (a_up && b_up)
        return FE_UPWARD;
    if (!a_up && !b_up)
        return FE_DOWNWARD;
    return -1;
}

#endif
