/*
 * fpmode.h: the floating-point control modes of the calling thread as one
 * small value that can be read, compared and loaded in a few instructions.
 * The modes are what C23's fegetmode/fesetmode cover: the rounding
 * direction, the exception masks and, on x86-64, flush-to-zero,
 * denormals-are-zero and the x87 precision; on x86-64 the MXCSR and the x87
 * control word, on aarch64 the FPCR.  Exception flags (status, not control)
 * are not part of it: loading modes keeps the flags in force.
 *
 * Why lockstep needs it: the rule (docs/API.md) is that the source always
 * runs with the modes of the thread that called lockstep_run, and that each
 * consumer starts with the modes its caller had at open and keeps its own
 * changes.  The fiber engine calls the source from whichever consumer's
 * fiber ends a round, and the buffer engine runs every consumer on the
 * caller's stack, so both move modes in and out around that code.  Reading
 * the modes costs a few cycles; loading them costs more, so callers load
 * only when the modes differ.
 *
 * x86-64 and aarch64 use inline assembly.  Elsewhere, and in the portable
 * build (LOCKSTEP_FORCE_UCONTEXT, so that the ucontext test leg exercises
 * this path too), <fenv.h>: fegetmode/fesetmode where the C library has
 * them (glibc 2.25 and later), else fegetenv/fesetenv, which also carry
 * the flags.
 */
#ifndef LOCKSTEP_FPMODE_H
#define LOCKSTEP_FPMODE_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && !defined(LOCKSTEP_FORCE_UCONTEXT)

#  define LOCKSTEP__FPMODE_X86_64 1
/* MXCSR bits 0-5 are the sticky exception flags; the rest is control. */
#  define LOCKSTEP__MXCSR_FLAGS 0x3fu
typedef struct {
    uint32_t mxcsr; /* whole register; only the control bits are compared */
    uint16_t x87cw;
} lockstep__fpmode;

/* Stores the calling thread's modes in *m. */
static inline void lockstep__fpmode_get(lockstep__fpmode *m)
{
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(m->mxcsr), "=m"(m->x87cw));
}

/* Returns 1 when a and b hold the same modes (flags are ignored). */
static inline int lockstep__fpmode_same(const lockstep__fpmode *a, const lockstep__fpmode *b)
{
    return ((a->mxcsr ^ b->mxcsr) & ~LOCKSTEP__MXCSR_FLAGS) == 0 && a->x87cw == b->x87cw;
}

/* Loads the modes in *m, keeping the exception flags now in force. */
static inline void lockstep__fpmode_set(const lockstep__fpmode *m)
{
    uint32_t mxcsr;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    mxcsr = (mxcsr & LOCKSTEP__MXCSR_FLAGS) | (m->mxcsr & ~LOCKSTEP__MXCSR_FLAGS);
    __asm__ volatile("ldmxcsr %0\n\tfldcw %1" : : "m"(mxcsr), "m"(m->x87cw) : "memory");
}

#elif defined(__aarch64__) && !defined(LOCKSTEP_FORCE_UCONTEXT)

#  define LOCKSTEP__FPMODE_AARCH64 1
typedef struct {
    uint64_t fpcr; /* all control: the flags live in FPSR */
} lockstep__fpmode;

static inline void lockstep__fpmode_get(lockstep__fpmode *m)
{
    __asm__ volatile("mrs %0, fpcr" : "=r"(m->fpcr));
}

static inline int lockstep__fpmode_same(const lockstep__fpmode *a, const lockstep__fpmode *b)
{
    return a->fpcr == b->fpcr;
}

static inline void lockstep__fpmode_set(const lockstep__fpmode *m)
{
    __asm__ volatile("msr fpcr, %0" : : "r"(m->fpcr) : "memory");
}

#else /* portable: <fenv.h> */

#  include <fenv.h>
#  define LOCKSTEP__FPMODE_PORTABLE 1
#  if defined(FE_DFL_MODE)
typedef femode_t lockstep__fpmode_raw;
#    define LOCKSTEP__FPMODE_GET fegetmode
#    define LOCKSTEP__FPMODE_SET fesetmode
#  else
typedef fenv_t lockstep__fpmode_raw;
#    define LOCKSTEP__FPMODE_GET fegetenv
#    define LOCKSTEP__FPMODE_SET fesetenv
#  endif
typedef struct {
    lockstep__fpmode_raw raw;
} lockstep__fpmode;

/* Zeroed first, so that padding the C library leaves alone compares equal. */
static inline void lockstep__fpmode_get(lockstep__fpmode *m)
{
    memset(m, 0, sizeof *m);
    LOCKSTEP__FPMODE_GET(&m->raw);
}

/* Byte comparison: it may see a difference that does not matter (glibc's
 * femode_t keeps the MXCSR flags), which costs a load, never a wrong mode. */
static inline int lockstep__fpmode_same(const lockstep__fpmode *a, const lockstep__fpmode *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

static inline void lockstep__fpmode_set(const lockstep__fpmode *m)
{
    LOCKSTEP__FPMODE_SET(&m->raw);
}

#endif

/* Begins running code that belongs to another context (the source, on a
 * consumer's fiber): saves the modes in force in *saved and loads *want if
 * they differ.  End with lockstep__fpmode_leave. */
static inline void lockstep__fpmode_enter(const lockstep__fpmode *want, lockstep__fpmode *saved)
{
    lockstep__fpmode_get(saved);
    if (!lockstep__fpmode_same(saved, want))
        lockstep__fpmode_set(want);
}

/* Makes *want the calling thread's modes, loading them only if they differ
 * from the modes in force: lockstep__fpmode_enter for good. */
static inline void lockstep__fpmode_load(const lockstep__fpmode *want)
{
    lockstep__fpmode was;
    lockstep__fpmode_enter(want, &was);
}

/* Ends what lockstep__fpmode_enter began: *mode receives the modes now in
 * force (the code run meanwhile may have changed its own), and the modes
 * in *saved are loaded back if they differ. */
static inline void lockstep__fpmode_leave(lockstep__fpmode *mode, const lockstep__fpmode *saved)
{
    lockstep__fpmode_get(mode);
    if (!lockstep__fpmode_same(mode, saved))
        lockstep__fpmode_set(saved);
}

#endif /* LOCKSTEP_FPMODE_H */
