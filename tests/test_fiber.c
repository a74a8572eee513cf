/*
 * test_fiber.c: unit test of the fiber primitive (src/fiber.h) alone:
 * ping-pong with values between the thread and several fibers, fiber-to-
 * fiber switches, stack alignment at entry, deep recursion, 1000 fibers,
 * argument checks and mmap fault injection, per-fiber floating-point
 * rounding mode, fibers on a second thread, and guard-page overflow
 * reporting in forked children.
 *
 * Build standalone (no src/core.c) with -DLOCKSTEP_FIBER_STANDALONE_TEST,
 * which supplies stub fault-injection hooks; link -lm -pthread.
 */
#include "fiber.h"
#include "internal.h"
#include "rounding.h"

#include <fenv.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define TEST_ASAN 1
#  endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(TEST_ASAN)
#  define TEST_ASAN 1
#endif

#ifdef LOCKSTEP_FIBER_STANDALONE_TEST
/* Stand-ins for src/core.c's fault-injection hooks (internal.h). */
static long fault_nth[LOCKSTEP__FAULT_KINDS], fault_seen[LOCKSTEP__FAULT_KINDS];

int lockstep__fault(int kind)
{
    fault_seen[kind]++;
    if (fault_nth[kind] > 0 && --fault_nth[kind] == 0)
        return 1;
    return 0;
}

long lockstep__fault_arm(int kind, long nth)
{
    long seen = fault_seen[kind];
    fault_seen[kind] = 0;
    fault_nth[kind] = nth;
    return seen;
}
#endif

static int passed, failed;

/* Counts a check; reports a failure with its location.  Active under
 * NDEBUG, unlike assert. */
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (cond) {                                                              \
            passed++;                                                            \
        } else {                                                                 \
            failed++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                        \
    } while (0)

/* --- Ping-pong with values ------------------------------------------------ */

static lockstep__fiber main_f;

typedef struct {
    lockstep__fiber self;
    int id;
    long value;      /* set by main before each resume, echoed back */
    long reply;
    int rounds;
    int done;
    int aligned;
} pp_fiber;

/* Replies value * 10 + id to main, rounds times, then exits. */
static void pp_entry(void *arg)
{
    pp_fiber *p = arg;
    p->aligned = ((uintptr_t)__builtin_frame_address(0) % 16) == 0;
    for (int i = 0; i < p->rounds; i++) {
        p->reply = p->value * 10 + p->id;
        lockstep__fiber_switch(&p->self, &main_f);
    }
    p->done = 1;
    lockstep__fiber_exit(&p->self, &main_f);
}

/* Main alternates among three fibers, checking each reply and order. */
static void test_pingpong(void)
{
    pp_fiber f[3];
    lockstep__fiber_init_current(&main_f);
    for (int i = 0; i < 3; i++) {
        memset(&f[i], 0, sizeof f[i]);
        f[i].id = i + 1;
        f[i].rounds = 50;
        CHECK(lockstep__fiber_create(&f[i].self, 64 * 1024, pp_entry, &f[i]) == 0);
    }
    int ok = 1;
    for (int r = 0; r < 50; r++)
        for (int i = 0; i < 3; i++) {
            f[i].value = r * 3 + i;
            lockstep__fiber_switch(&main_f, &f[i].self);
            if (f[i].reply != (long)(r * 3 + i) * 10 + i + 1)
                ok = 0;
        }
    CHECK(ok);
    for (int i = 0; i < 3; i++) {
        CHECK(!f[i].done);
        lockstep__fiber_switch(&main_f, &f[i].self);
        CHECK(f[i].done);
        CHECK(f[i].aligned);
        lockstep__fiber_destroy(&f[i].self);
    }
}

/* --- Fiber to fiber --------------------------------------------------------- */

static lockstep__fiber chain_f[2];
static int chain_log[8], chain_n;

/* chain 0 -> 1 -> 0 -> 1 -> main: each step appends to chain_log. */
static void chain0(void *arg)
{
    (void)arg;
    chain_log[chain_n++] = 10;
    lockstep__fiber_switch(&chain_f[0], &chain_f[1]);
    chain_log[chain_n++] = 11;
    lockstep__fiber_exit(&chain_f[0], &chain_f[1]);
}

static void chain1(void *arg)
{
    (void)arg;
    chain_log[chain_n++] = 20;
    lockstep__fiber_switch(&chain_f[1], &chain_f[0]);
    chain_log[chain_n++] = 21;
    lockstep__fiber_exit(&chain_f[1], &main_f);
}

static void test_chain(void)
{
    lockstep__fiber_init_current(&main_f);
    CHECK(lockstep__fiber_create(&chain_f[0], 32 * 1024, chain0, NULL) == 0);
    CHECK(lockstep__fiber_create(&chain_f[1], 32 * 1024, chain1, NULL) == 0);
    lockstep__fiber_switch(&main_f, &chain_f[0]);
    CHECK(chain_n == 4);
    CHECK(chain_log[0] == 10 && chain_log[1] == 20 && chain_log[2] == 11 && chain_log[3] == 21);
    lockstep__fiber_destroy(&chain_f[0]);
    lockstep__fiber_destroy(&chain_f[1]);
}

/* --- Deep recursion --------------------------------------------------------- */

static lockstep__fiber deep_f;
static size_t deep_target;
static long deep_result;
static size_t deep_reached;

/* Recurses until the stack is deep_target bytes deep; returns a checksum
 * that only comes out right if every frame survived. */
static long __attribute__((noinline)) deep(const char *base, long n)
{
    volatile char pad[128];
    pad[0] = (char)n;
    /* The frame address, not pad's: ASan may put pad on a fake stack. */
    size_t depth = (size_t)(base - (const char *)__builtin_frame_address(0));
    long r;
    if (depth >= deep_target) {
        deep_reached = depth;
        r = 0;
    } else {
        r = deep(base, n + 1);
    }
    return r + n + pad[0] - (char)n;
}

static void deep_entry(void *arg)
{
    (void)arg;
    deep_result = deep(__builtin_frame_address(0), 1);
    lockstep__fiber_exit(&deep_f, &main_f);
}

static void test_deep(void)
{
    size_t size = 1024 * 1024;
    lockstep__fiber_init_current(&main_f);
    deep_target = size / 2;
    CHECK(lockstep__fiber_create(&deep_f, size, deep_entry, NULL) == 0);
    lockstep__fiber_switch(&main_f, &deep_f);
    CHECK(deep_reached >= deep_target);
    /* deep(n) over frames 1..k sums n: k(k+1)/2 for some k >= 1. */
    long k = (long)((sqrt(8.0 * (double)deep_result + 1.0) - 1.0) / 2.0 + 0.5);
    CHECK(k > 100 && k * (k + 1) / 2 == deep_result);
    lockstep__fiber_destroy(&deep_f);
}

/* --- Many fibers, argument checks, fault injection -------------------------- */

#define MANY 1000
static lockstep__fiber many_f[MANY];
static int many_ran[MANY];

static void many_entry(void *arg)
{
    int i = (int)(intptr_t)arg;
    many_ran[i]++;
    lockstep__fiber_exit(&many_f[i], &main_f);
}

static void test_many(void)
{
    lockstep__fiber_init_current(&main_f);
    int ok = 1;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < MANY; i++)
            if (lockstep__fiber_create(&many_f[i], 16 * 1024, many_entry, (void *)(intptr_t)i) != 0)
                ok = 0;
        for (int i = 0; i < MANY; i++)
            lockstep__fiber_switch(&main_f, &many_f[i]);
        for (int i = 0; i < MANY; i++)
            lockstep__fiber_destroy(&many_f[i]);
    }
    CHECK(ok);
    for (int i = 0; i < MANY; i++)
        if (many_ran[i] != 2)
            ok = 0;
    CHECK(ok);
    /* Never started, then destroyed. */
    CHECK(lockstep__fiber_create(&many_f[0], 4096, many_entry, NULL) == 0);
    lockstep__fiber_destroy(&many_f[0]);
    CHECK(many_f[0].stack_map == NULL);
}

static void test_args(void)
{
    lockstep__fiber f;
    CHECK(lockstep__fiber_create(&f, 0, many_entry, NULL) == LOCKSTEP_EINVAL);
    CHECK(lockstep__fiber_create(&f, ((size_t)1 << 30) + 1, many_entry, NULL) == LOCKSTEP_EINVAL);
    lockstep__fiber_destroy(&f); /* zeroed by the failed create */
    CHECK(lockstep__fiber_create(&f, 1, many_entry, NULL) == 0); /* rounds up to a page */
    CHECK((char *)f.stack_hi - (char *)f.stack_lo == sysconf(_SC_PAGESIZE));
    lockstep__fiber_destroy(&f);

    lockstep__fault_arm(LOCKSTEP__FAULT_MMAP, 1);
    CHECK(lockstep__fiber_create(&f, 4096, many_entry, NULL) == LOCKSTEP_ENOMEM);
    CHECK(f.stack_map == NULL);
    lockstep__fiber_destroy(&f);
    lockstep__fault_arm(LOCKSTEP__FAULT_MMAP, 0);

    lockstep__fiber z;
    memset(&z, 0, sizeof z);
    lockstep__fiber_destroy(&z);
    lockstep__fiber_init_current(&z);
    lockstep__fiber_destroy(&z);
    lockstep__fiber_destroy(NULL);
    CHECK(1);
}

/* --- Rounding mode is per context ------------------------------------------- */

static lockstep__fiber fp_f;
static int fp_ok_first, fp_ok_resumed;

static void fp_entry(void *arg)
{
    (void)arg;
    fesetround(FE_UPWARD);
    fp_ok_first = fegetround() == FE_UPWARD && conversion_mode() == FE_UPWARD;
    lockstep__fiber_switch(&fp_f, &main_f);
    fp_ok_resumed = fegetround() == FE_UPWARD && conversion_mode() == FE_UPWARD;
    lockstep__fiber_exit(&fp_f, &main_f);
}

static void test_rounding(void)
{
    fesetround(FE_TONEAREST);
    CHECK(conversion_mode() == FE_TONEAREST);
    lockstep__fiber_init_current(&main_f);
    CHECK(lockstep__fiber_create(&fp_f, 64 * 1024, fp_entry, NULL) == 0);
    lockstep__fiber_switch(&main_f, &fp_f);
    CHECK(fp_ok_first);
    CHECK(fegetround() == FE_TONEAREST);
    CHECK(conversion_mode() == FE_TONEAREST);
    fesetround(FE_DOWNWARD);
    lockstep__fiber_switch(&main_f, &fp_f);
    CHECK(fp_ok_resumed);
    CHECK(fegetround() == FE_DOWNWARD);
    CHECK(conversion_mode() == FE_DOWNWARD);
    fesetround(FE_TONEAREST);
    lockstep__fiber_destroy(&fp_f);
}

/* --- Fibers on another thread ---------------------------------------------- */

typedef struct {
    lockstep__fiber thr_main, fib;
    int count;
} thr_ctx;

static void thr_entry(void *arg)
{
    thr_ctx *c = arg;
    for (;;) {
        c->count++;
        if (c->count == 100)
            lockstep__fiber_exit(&c->fib, &c->thr_main);
        lockstep__fiber_switch(&c->fib, &c->thr_main);
    }
}

static void *thr_body(void *arg)
{
    thr_ctx *c = arg;
    lockstep__fiber_init_current(&c->thr_main);
    if (lockstep__fiber_create(&c->fib, 64 * 1024, thr_entry, c) != 0)
        return NULL;
    while (c->count < 100)
        lockstep__fiber_switch(&c->thr_main, &c->fib);
    lockstep__fiber_destroy(&c->fib);
    return c;
}

static void test_thread(void)
{
    for (int t = 0; t < 3; t++) {
        thr_ctx c;
        memset(&c, 0, sizeof c);
        pthread_t th;
        void *ret = NULL;
        CHECK(pthread_create(&th, NULL, thr_body, &c) == 0);
        CHECK(pthread_join(th, &ret) == 0);
        CHECK(ret == &c && c.count == 100);
    }
}

/* --- Guard page ------------------------------------------------------------- */

static lockstep__fiber ovf_f;

/* Recurses without bound; the volatile frame and the work after the call
 * keep the compiler from turning it into a loop. */
static volatile int ovf_stop;
static long __attribute__((noinline)) overflow(long n)
{
    volatile char pad[64];
    pad[0] = (char)n;
    if (ovf_stop)
        return n;
    return overflow(n + 1) + pad[0];
}

static void ovf_entry(void *arg)
{
    (void)arg;
    overflow(0);
    lockstep__fiber_exit(&ovf_f, &main_f);
}

static void *ovf_thread(void *arg)
{
    (void)arg;
    lockstep__fiber_init_current(&main_f);
    if (lockstep__fiber_create(&ovf_f, 32 * 1024, ovf_entry, NULL) != 0)
        _exit(3);
    lockstep__fiber_switch(&main_f, &ovf_f);
    return NULL;
}

/* Runs an overflowing fiber in a forked child (on the child's main thread
 * or on a new thread) and checks how the child died. */
static void test_guard(int on_thread)
{
    int pfd[2];
    if (pipe(pfd) != 0) {
        CHECK(!"pipe");
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        CHECK(!"fork");
        return;
    }
    if (pid == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        dup2(pfd[1], STDERR_FILENO);
        close(pfd[0]);
        close(pfd[1]);
        if (on_thread) {
            pthread_t th;
            if (pthread_create(&th, NULL, ovf_thread, NULL) == 0)
                pthread_join(th, NULL);
        } else {
            ovf_thread(NULL);
        }
        _exit(4); /* not reached */
    }
    close(pfd[1]);
    char buf[8192];
    size_t len = 0;
    for (;;) { /* drain it all, keeping the start: the child must not get SIGPIPE */
        char chunk[4096];
        ssize_t r = read(pfd[0], chunk, sizeof chunk);
        if (r <= 0)
            break;
        size_t take = (size_t)r < sizeof buf - 1 - len ? (size_t)r : sizeof buf - 1 - len;
        memcpy(buf + len, chunk, take);
        len += take;
    }
    buf[len] = '\0';
    close(pfd[0]);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
#ifdef TEST_ASAN
    /* ASan's SIGSEGV handler takes the fault and reports a stack overflow;
     * lockstep leaves the report to it (see src/fiber.c). */
    int ok = (WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) ||
             (WIFEXITED(status) && WEXITSTATUS(status) != 0 && strstr(buf, "stack-overflow"));
    CHECK(ok);
#else
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
    CHECK(strstr(buf, "lockstep: fiber stack overflow (guard page hit at 0x") != NULL);
    CHECK(strstr(buf, "raise lockstep_options.stack_size") != NULL);
#endif
    if (failed)
        fprintf(stderr, "child status 0x%x, stderr:\n%s\n", (unsigned)status, buf);
}

int main(void)
{
    test_pingpong();
    test_chain();
    test_deep();
    test_many();
    test_args();
    test_rounding();
    test_thread();
    test_guard(0);
    test_guard(1);
    printf("test_fiber: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
