/*
 * fiber.c: the fiber primitive declared in fiber.h.  It maps fiber stacks
 * with a guard page, builds the first frame for the assembly switch
 * (src/arch/switch_*.S) or, under LOCKSTEP_FIBER_UCONTEXT, uses glibc's
 * makecontext/swapcontext, and tells ASan, TSan and valgrind about every
 * stack and switch.  It also reports fiber stack overflows: a SIGSEGV
 * handler, installed once on first fiber creation and run on a per-thread
 * alternate signal stack, recognises hits on a registered guard page, says
 * so on stderr and lets the process die of SIGSEGV.  The handler is not
 * installed under ASan (ASan's own handler reports stack overflows) or
 * when LOCKSTEP_NO_GUARD_HANDLER is defined.
 */
#include "fiber.h"
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Tool detection (LOCKSTEP__ASAN, LOCKSTEP__TSAN) is in fiber.h. */

#ifdef LOCKSTEP__ASAN
/* Sanitizer fiber API (sanitizer/common_interface_defs.h), declared here so
 * the build does not depend on where the compiler keeps its headers. */
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                     size_t *size_old);
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
#endif
#ifdef LOCKSTEP__TSAN
/* From sanitizer/tsan_interface.h. */
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif

#if !defined(LOCKSTEP_NO_VALGRIND) && defined(__has_include)
#  if __has_include(<valgrind/valgrind.h>)
#    include <valgrind/valgrind.h>
#    define LOCKSTEP__VALGRIND 1
#  endif
#endif

#if !defined(LOCKSTEP__ASAN) && !defined(LOCKSTEP_NO_GUARD_HANDLER)
#  define LOCKSTEP__GUARD_HANDLER 1
#endif

/* Largest stack accepted: a typo should not reserve terabytes. */
#define LOCKSTEP__FIBER_MAX_STACK ((size_t)1 << 30)

/* --- Small helpers ------------------------------------------------------- */

/* Writes msg to stderr and aborts.  For states that cannot be recovered. */
static void fiber_die(const char *msg) __attribute__((noreturn));
static void fiber_die(const char *msg)
{
    fputs(msg, stderr);
    abort();
}

/* Returns the system page size, cached after the first call. */
static size_t page_size(void)
{
    static atomic_size_t cached;
    size_t p = atomic_load_explicit(&cached, memory_order_relaxed);
    if (p == 0) {
        long v = sysconf(_SC_PAGESIZE);
        p = v > 0 ? (size_t)v : 4096;
        atomic_store_explicit(&cached, p, memory_order_relaxed);
    }
    return p;
}

/* --- Guard-page registry and overflow report ----------------------------- */

#ifdef LOCKSTEP__GUARD_HANDLER

/* One registered guard page: addr is its first byte, 0 when the slot is
 * free.  Slots live in chunks that are never freed, so the signal handler
 * can walk them without locks; claim and release take guard_lock. */
typedef struct guard_slot {
    _Atomic uintptr_t addr;
    struct guard_slot *next_free;
} guard_slot;

#define GUARD_CHUNK_SLOTS 255
typedef struct guard_chunk {
    struct guard_chunk *_Atomic next;
    guard_slot slots[GUARD_CHUNK_SLOTS];
} guard_chunk;

static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static guard_chunk *_Atomic guard_chunks;
static guard_slot *guard_free; /* under guard_lock */

/* Registers the guard page at addr.  Returns its slot, or NULL when no
 * memory was left (the fiber then works, but an overflow is not named). */
static guard_slot *guard_claim(uintptr_t addr)
{
    guard_slot *s;
    pthread_mutex_lock(&guard_lock);
    if (guard_free == NULL) {
        guard_chunk *c = mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (c == MAP_FAILED) {
            pthread_mutex_unlock(&guard_lock);
            return NULL;
        }
        for (size_t i = 0; i < GUARD_CHUNK_SLOTS; i++) {
            c->slots[i].next_free = guard_free;
            guard_free = &c->slots[i];
        }
        atomic_store_explicit(&c->next, atomic_load_explicit(&guard_chunks, memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&guard_chunks, c, memory_order_release);
    }
    s = guard_free;
    guard_free = s->next_free;
    atomic_store_explicit(&s->addr, addr, memory_order_release);
    pthread_mutex_unlock(&guard_lock);
    return s;
}

/* Unregisters a slot from guard_claim; NULL is ignored. */
static void guard_release(guard_slot *s)
{
    if (s == NULL)
        return;
    atomic_store_explicit(&s->addr, 0, memory_order_release);
    pthread_mutex_lock(&guard_lock);
    s->next_free = guard_free;
    guard_free = s;
    pthread_mutex_unlock(&guard_lock);
}

/* Returns 1 when a lies in a registered guard page.  Async-signal-safe. */
static int guard_lookup(uintptr_t a)
{
    size_t pg = page_size();
    for (guard_chunk *c = atomic_load_explicit(&guard_chunks, memory_order_acquire); c;
         c = atomic_load_explicit(&c->next, memory_order_relaxed)) {
        for (size_t i = 0; i < GUARD_CHUNK_SLOTS; i++) {
            uintptr_t g = atomic_load_explicit(&c->slots[i].addr, memory_order_relaxed);
            if (g != 0 && a - g < pg)
                return 1;
        }
    }
    return 0;
}

static pthread_once_t sig_once = PTHREAD_ONCE_INIT;
static pthread_key_t altstack_key;
static int altstack_key_ok;
static struct sigaction prev_segv; /* what was installed before us */

/* Key value for a thread whose alternate stack belongs to someone else. */
#define ALTSTACK_FOREIGN ((void *)1)
#define ALTSTACK_SIZE ((size_t)64 * 1024)

/* Sets SIGSEGV back to the default action.  Async-signal-safe. */
static void segv_default(void)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGSEGV, &dfl, NULL);
}

/* SIGSEGV handler: names a guard-page hit and lets the fault re-raise with
 * the default action; passes any other fault to the previous handler. */
static void segv_handler(int sig, siginfo_t *si, void *uc)
{
    int saved_errno = errno;
    if (si != NULL && si->si_code > 0 && guard_lookup((uintptr_t)si->si_addr)) {
        static const char head[] = "lockstep: fiber stack overflow (guard page hit at 0x";
        static const char tail[] = "); raise lockstep_options.stack_size\n";
        char buf[sizeof head + sizeof tail + 2 * sizeof(uintptr_t)];
        char hex[2 * sizeof(uintptr_t)];
        uintptr_t v = (uintptr_t)si->si_addr;
        size_t n = 0, len = 0;
        do {
            hex[n++] = "0123456789abcdef"[v & 15];
            v >>= 4;
        } while (v != 0);
        memcpy(buf, head, sizeof head - 1);
        len = sizeof head - 1;
        while (n > 0)
            buf[len++] = hex[--n];
        memcpy(buf + len, tail, sizeof tail - 1);
        len += sizeof tail - 1;
        ssize_t r = write(STDERR_FILENO, buf, len);
        (void)r;
        segv_default(); /* returning re-executes the access: default death */
        errno = saved_errno;
        return;
    }
    if (prev_segv.sa_flags & SA_SIGINFO) {
        prev_segv.sa_sigaction(sig, si, uc);
    } else if (prev_segv.sa_handler == SIG_DFL || prev_segv.sa_handler == SIG_IGN) {
        /* A real fault cannot be ignored: re-execute it with the default
         * action.  A SIGSEGV sent by kill() is re-sent only under SIG_DFL. */
        segv_default();
        if ((si == NULL || si->si_code <= 0) && prev_segv.sa_handler == SIG_DFL)
            raise(sig);
    } else {
        prev_segv.sa_handler(sig);
    }
    errno = saved_errno;
}

/* Key destructor: frees a thread's alternate stack when the thread exits,
 * after disabling it if it is still the active one. */
static void altstack_free(void *v)
{
    if (v == NULL || v == ALTSTACK_FOREIGN)
        return;
    size_t pg = page_size();
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == (char *)v + pg) {
        stack_t off;
        memset(&off, 0, sizeof off);
        off.ss_flags = SS_DISABLE;
        if (sigaltstack(&off, NULL) != 0)
            return; /* still in use: leak rather than pull it away */
    }
    munmap(v, ALTSTACK_SIZE + pg);
}

/* pthread_once body: creates the key and installs the handler, keeping
 * whatever was installed before for chaining. */
static void sig_install(void)
{
    if (pthread_key_create(&altstack_key, altstack_free) != 0)
        return;
    altstack_key_ok = 1;
    if (sigaction(SIGSEGV, NULL, &prev_segv) != 0)
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, NULL);
}

/* Makes sure the handler is installed and the calling thread has an
 * alternate signal stack (ours, kept until the thread exits, or one it
 * already had).  Best effort: on failure an overflow still kills the
 * process with SIGSEGV, only without the message. */
static void guard_thread_setup(void)
{
    pthread_once(&sig_once, sig_install);
    if (!altstack_key_ok || pthread_getspecific(altstack_key) != NULL)
        return;
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) {
        pthread_setspecific(altstack_key, ALTSTACK_FOREIGN);
        return;
    }
    size_t pg = page_size();
    char *map = mmap(NULL, ALTSTACK_SIZE + pg, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (map == MAP_FAILED)
        return;
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = map + pg;
    ss.ss_size = ALTSTACK_SIZE;
    if (mprotect(map, pg, PROT_NONE) != 0 || sigaltstack(&ss, NULL) != 0 ||
        pthread_setspecific(altstack_key, map) != 0) {
        stack_t off;
        memset(&off, 0, sizeof off);
        off.ss_flags = SS_DISABLE;
        if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == ss.ss_sp)
            sigaltstack(&off, NULL);
        munmap(map, ALTSTACK_SIZE + pg);
    }
}

#endif /* LOCKSTEP__GUARD_HANDLER */

/* --- Sanitizer bookkeeping around a switch ------------------------------- */

/* Called just before leaving from for to; exiting means from is done.
 * Must be inlined into the function that performs the switch: TSan's
 * instrumentation would otherwise pop the new fiber's shadow call stack on
 * return from a separate function that called __tsan_switch_to_fiber. */
static inline __attribute__((always_inline)) void
switch_begin(lockstep__fiber *from, lockstep__fiber *to, int exiting)
{
#ifdef LOCKSTEP__ASAN
    __sanitizer_start_switch_fiber(exiting ? NULL : &from->asan_fake_stack, to->asan_bottom,
                                   to->asan_size);
#else
    (void)from;
    (void)exiting;
#endif
#ifdef LOCKSTEP__TSAN
    from->tsan_fiber = __tsan_get_current_fiber(); /* see fiber.h: it moves with the context */
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
#else
    (void)to;
#endif
}

/* Called first thing in self once it runs again (or for the first time),
 * prev being the fiber that switched to it.  ASan reports the bounds of the
 * stack just left, which is where prev's saved context lives (fiber.h). */
static inline __attribute__((always_inline)) void
switch_end(lockstep__fiber *self, lockstep__fiber *prev)
{
#ifdef LOCKSTEP__ASAN
    const void *old_bottom = NULL;
    size_t old_size = 0;
    __sanitizer_finish_switch_fiber(self->asan_fake_stack, &old_bottom, &old_size);
    if (prev != NULL) {
        prev->asan_bottom = old_bottom;
        prev->asan_size = old_size;
    }
#else
    (void)self;
    (void)prev;
#endif
}

/* Runs a fresh fiber's entry; never returns.  Shared by both switch
 * implementations. */
static void fiber_run(lockstep__fiber *self, lockstep__fiber *prev) __attribute__((noreturn));
static void fiber_run(lockstep__fiber *self, lockstep__fiber *prev)
{
    switch_end(self, prev);
    self->entry(self->arg);
    fiber_die("lockstep: fiber entry function returned (it must end with lockstep__fiber_exit)\n");
}

/* Called by lockstep__fiber_boot (src/arch/switch_*.S) on a fresh stack
 * with the fiber and the fiber that switched to it.  Never returns.
 * Defined in ucontext builds too, so linking a .S there stays harmless. */
void lockstep__fiber_start(lockstep__fiber *self, lockstep__fiber *prev)
    __attribute__((visibility("hidden"), noreturn, used));
void lockstep__fiber_start(lockstep__fiber *self, lockstep__fiber *prev)
{
    fiber_run(self, prev);
}

/* --- Context: assembly ---------------------------------------------------- */

#ifndef LOCKSTEP_FIBER_UCONTEXT

/* src/arch/switch_*.S; lockstep__fiber_swap is declared in fiber.h. */
void lockstep__fiber_boot(void) __attribute__((visibility("hidden")));

/* Builds the frame the switch pops on a fresh stack (layouts documented in
 * src/arch/switch_*.S); the new fiber inherits the caller's FP control. */
static void context_init(lockstep__fiber *f)
{
    uintptr_t top = (uintptr_t)f->stack_hi & ~(uintptr_t)15;
#if defined(__x86_64__)
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(fpucw));
    uint64_t *fr = (uint64_t *)(top - 64);
    fr[0] = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    fr[1] = fr[2] = fr[3] = fr[4] = 0;              /* r15 r14 r13 r12 */
    fr[5] = (uint64_t)(uintptr_t)f;                 /* rbx */
    fr[6] = 0;                                      /* rbp */
    fr[7] = (uint64_t)(uintptr_t)lockstep__fiber_boot; /* return address */
    f->sp = fr;
#elif defined(__aarch64__)
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    uint64_t *fr = (uint64_t *)(top - 176);
    memset(fr, 0, 176);
    fr[0] = (uint64_t)(uintptr_t)f;                  /* x19 */
    fr[10] = 0;                                      /* x29 */
    fr[11] = (uint64_t)(uintptr_t)lockstep__fiber_boot; /* x30 */
    fr[20] = fpcr;
    f->sp = fr;
#else
#  error "no assembly switch for this architecture (fiber.h should select ucontext)"
#endif
}

/* See fiber.h.  The swap hands over from, so the resumed side learns who
 * switched to it. */
#ifndef LOCKSTEP__FIBER_BARE
void lockstep__fiber_switch(lockstep__fiber *from, lockstep__fiber *to)
{
    switch_begin(from, to, 0);
    lockstep__fiber *prev = lockstep__fiber_swap(&from->sp, to->sp, from);
    switch_end(from, prev);
}
#endif

/* See fiber.h.  Passing NULL to ASan's start_switch frees from's fake stack. */
void lockstep__fiber_exit(lockstep__fiber *from, lockstep__fiber *to)
{
    switch_begin(from, to, 1);
    lockstep__fiber_swap(&from->sp, to->sp, from);
    fiber_die("lockstep: a fiber was resumed after lockstep__fiber_exit\n");
}

#else /* LOCKSTEP_FIBER_UCONTEXT */

/* --- Context: ucontext ---------------------------------------------------- */

/* The fiber that last switched away on this thread; read by whoever runs
 * next (swapcontext carries no value). */
static _Thread_local lockstep__fiber *uc_prev;

/* makecontext entry: the fiber pointer arrives split into two 32-bit ints,
 * since makecontext only passes int arguments portably. */
static void uc_boot(unsigned hi, unsigned lo)
{
    uint64_t bits = ((uint64_t)hi << 32) | (uint64_t)lo;
    fiber_run((lockstep__fiber *)(uintptr_t)bits, uc_prev);
}

/* Prepares f->uc to run uc_boot on f's stack. */
static void context_init(lockstep__fiber *f)
{
    if (getcontext(&f->uc) != 0)
        fiber_die("lockstep: getcontext failed\n");
    f->uc.uc_stack.ss_sp = f->stack_lo;
    f->uc.uc_stack.ss_size = (size_t)((char *)f->stack_hi - (char *)f->stack_lo);
    f->uc.uc_link = NULL;
    uint64_t bits = (uint64_t)(uintptr_t)f;
    makecontext(&f->uc, (void (*)(void))uc_boot, 2, (unsigned)(bits >> 32),
                (unsigned)(bits & 0xffffffffu));
}

/* See fiber.h; swapcontext also saves the signal mask, hence its cost. */
void lockstep__fiber_switch(lockstep__fiber *from, lockstep__fiber *to)
{
    switch_begin(from, to, 0);
    uc_prev = from;
    if (swapcontext(&from->uc, &to->uc) != 0)
        fiber_die("lockstep: swapcontext failed\n");
    switch_end(from, uc_prev);
}

/* See fiber.h. */
void lockstep__fiber_exit(lockstep__fiber *from, lockstep__fiber *to)
{
    switch_begin(from, to, 1);
    uc_prev = from;
    setcontext(&to->uc);
    fiber_die("lockstep: setcontext failed\n");
}

#endif /* LOCKSTEP_FIBER_UCONTEXT */

/* --- Lifecycle ------------------------------------------------------------ */

/* See fiber.h.  TSan gets the thread's own fiber; ASan bounds come later. */
void lockstep__fiber_init_current(lockstep__fiber *f)
{
    memset(f, 0, sizeof *f);
#ifdef LOCKSTEP__TSAN
    f->tsan_fiber = __tsan_get_current_fiber();
#endif
    /* ASan bounds are learned on the first switch away (switch_end). */
}

/* See fiber.h.  f is zeroed first, so it can be destroyed after a failure.
 * Layout: [guard page, PROT_NONE][stack_lo ... stack_hi), MAP_NORESERVE. */
int lockstep__fiber_create(lockstep__fiber *f, size_t stack_size,
                           lockstep__fiber_entry entry, void *arg)
{
    memset(f, 0, sizeof *f);
    if (entry == NULL || stack_size == 0 || stack_size > LOCKSTEP__FIBER_MAX_STACK)
        return LOCKSTEP_EINVAL;
    size_t pg = page_size();
    size_t usable = (stack_size + pg - 1) & ~(pg - 1);
    size_t total = usable + pg;

#ifdef LOCKSTEP__GUARD_HANDLER
    guard_thread_setup();
#endif
    if (lockstep__fault(LOCKSTEP__FAULT_MMAP))
        return LOCKSTEP_ENOMEM;
    char *map = mmap(NULL, total, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (map == MAP_FAILED)
        return LOCKSTEP_ENOMEM;
    if (mprotect(map, pg, PROT_NONE) != 0) {
        munmap(map, total);
        return LOCKSTEP_ENOMEM;
    }
#ifdef LOCKSTEP__ASAN
    __asan_unpoison_memory_region(map + pg, usable); /* stale shadow from an old mapping */
#endif
    f->stack_map = map;
    f->map_size = total;
    f->stack_lo = map + pg;
    f->stack_hi = map + total;
    f->entry = entry;
    f->arg = arg;
    f->asan_bottom = f->stack_lo;
    f->asan_size = usable;
#ifdef LOCKSTEP__GUARD_HANDLER
    f->guard_slot = guard_claim((uintptr_t)map);
#endif
#ifdef LOCKSTEP__TSAN
    f->tsan_fiber = f->tsan_created = __tsan_create_fiber(0);
#endif
#ifdef LOCKSTEP__VALGRIND
    f->valgrind_id = VALGRIND_STACK_REGISTER(f->stack_lo, f->stack_hi);
#endif
    context_init(f);
    return 0;
}

/* See fiber.h.  Also accepts NULL; leaves f zeroed. */
void lockstep__fiber_destroy(lockstep__fiber *f)
{
    if (f == NULL)
        return;
#ifdef LOCKSTEP__TSAN
    if (f->tsan_created != NULL)
        __tsan_destroy_fiber(f->tsan_created);
#endif
    if (f->stack_map != NULL) {
#ifdef LOCKSTEP__VALGRIND
        VALGRIND_STACK_DEREGISTER(f->valgrind_id);
#endif
#ifdef LOCKSTEP__GUARD_HANDLER
        guard_release(f->guard_slot);
#endif
#ifdef LOCKSTEP__ASAN
        /* A fiber destroyed while suspended leaves poisoned frames behind. */
        __asan_unpoison_memory_region(f->stack_lo,
                                      (size_t)((char *)f->stack_hi - (char *)f->stack_lo));
#endif
        munmap(f->stack_map, f->map_size);
    }
    memset(f, 0, sizeof *f);
}
