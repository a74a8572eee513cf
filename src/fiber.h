/*
 * fiber.h: lockstep's private stackful-coroutine primitive, used by the fiber
 * engine (src/engine_fiber.c).  A fiber is a register context plus, for
 * fibers we create, an mmap'ed stack with a guard page below it.  The switch
 * itself is per-architecture assembly (src/arch/switch_*.S) or, when the
 * build forces it or the architecture has no assembly, glibc's ucontext.
 *
 * Rules: a fiber never migrates between threads; every switch names both the
 * fiber being left and the one being entered; a finished fiber leaves with
 * lockstep__fiber_exit so sanitizers can forget its stack.
 *
 * A lockstep__fiber is a slot for a saved context, and the context saved in
 * it need not be on the slot's own stack: when a pipeline's inner source
 * reads an outer iterator from an inner consumer's fiber, the outer
 * consumer's slot receives a context on that inner stack.  So the sanitizer
 * identity (ASan stack bounds, TSan fiber) is recorded with every save, not
 * fixed when the slot is made.
 */
#ifndef LOCKSTEP_FIBER_H
#define LOCKSTEP_FIBER_H

#include <stddef.h>

#if defined(LOCKSTEP_FORCE_UCONTEXT) || !(defined(__x86_64__) || defined(__aarch64__))
#  define LOCKSTEP_FIBER_UCONTEXT 1
#  include <ucontext.h>
#endif

/* Tool detection: sanitizers need bookkeeping around every switch. */

#if defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define LOCKSTEP__ASAN 1
#  endif
#  if __has_feature(thread_sanitizer)
#    define LOCKSTEP__TSAN 1
#  endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(LOCKSTEP__ASAN)
#  define LOCKSTEP__ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) && !defined(LOCKSTEP__TSAN)
#  define LOCKSTEP__TSAN 1
#endif

/* Without sanitizers or ucontext, a switch is the bare assembly, inlined
 * into the scheduler: every call and return saved around a stack switch is
 * a likely misprediction. */
#if !defined(LOCKSTEP_FIBER_UCONTEXT) && !defined(LOCKSTEP__ASAN) && !defined(LOCKSTEP__TSAN)
#  define LOCKSTEP__FIBER_BARE 1
#endif

typedef void (*lockstep__fiber_entry)(void *arg);

typedef struct lockstep__fiber {
#ifdef LOCKSTEP_FIBER_UCONTEXT
    ucontext_t uc;
#else
    void *sp;                  /* saved stack pointer while switched out */
#endif
    void *stack_map;           /* mmap'ed region (guard page + stack), NULL for a thread's own stack */
    size_t map_size;
    void *stack_lo, *stack_hi; /* usable stack bounds */
    lockstep__fiber_entry entry;
    void *arg;
    /* Sanitizer and valgrind bookkeeping; unused fields cost nothing. */
    void *asan_fake_stack;
    const void *asan_bottom;
    size_t asan_size;
    void *tsan_fiber;          /* TSan's fiber for the context saved here */
    void *tsan_created;        /* the TSan fiber we made for this stack, to destroy */
    unsigned valgrind_id;
    void *guard_slot;          /* entry in fiber.c's guard-page registry, or NULL */
} lockstep__fiber;

/* Makes f stand for the calling thread's current stack, so it can be
 * switched away from and back to.  Allocates nothing. */
void lockstep__fiber_init_current(lockstep__fiber *f);

/* Prepares f to run entry(arg) on a fresh stack of at least stack_size
 * bytes (rounded up to whole pages) with a PROT_NONE guard page below.
 * entry must never return: it ends with lockstep__fiber_exit.  Returns 0,
 * LOCKSTEP_EINVAL for a zero or absurd size, or LOCKSTEP_ENOMEM. */
int lockstep__fiber_create(lockstep__fiber *f, size_t stack_size,
                           lockstep__fiber_entry entry, void *arg);

#ifndef LOCKSTEP_FIBER_UCONTEXT
/* src/arch/switch_*.S: pushes the callee-saved state, stores the stack
 * pointer in *save_sp, switches to new_sp and returns pass there. */
void *lockstep__fiber_swap(void **save_sp, void *new_sp, void *pass)
    __attribute__((visibility("hidden")));
#endif

/* Saves the running context into from and resumes to.  Returns when some
 * other fiber switches back to from. */
#ifdef LOCKSTEP__FIBER_BARE
static inline void lockstep__fiber_switch(lockstep__fiber *from, lockstep__fiber *to)
{
    lockstep__fiber_swap(&from->sp, to->sp, from);
}
#else
void lockstep__fiber_switch(lockstep__fiber *from, lockstep__fiber *to);
#endif

/* Like lockstep__fiber_switch, for a fiber that has finished: it is never
 * resumed again, and sanitizers are told its stack is gone. */
void lockstep__fiber_exit(lockstep__fiber *from, lockstep__fiber *to)
    __attribute__((noreturn));

/* Frees f's stack.  f must not be running.  Safe on a zeroed or
 * init_current fiber. */
void lockstep__fiber_destroy(lockstep__fiber *f);

#endif /* LOCKSTEP_FIBER_H */
