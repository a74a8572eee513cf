/*
 * switch_bench.c: raw context-switch micro-benchmark.  Measures the cost of
 * one switch (a ping-pong round trip divided by two) for lockstep's fiber
 * primitive (src/fiber.c: assembly, or ucontext under
 * LOCKSTEP_FORCE_UCONTEXT), for glibc swapcontext, and, when built with
 * -DHAVE_BOOST_CONTEXT and linked with -lboost_context, for Boost.Context's
 * jump_fcontext.  Each is warmed up, then timed over 5 runs; it prints the
 * median and min-max in ns per switch, or one JSON object with --json.
 *
 * Usage: switch_bench [--json] [--iters N]
 * Link it with the lockstep static library, or compile it together with
 * src/fiber.c and src/arch/switch_<arch>.S and -DLOCKSTEP_FIBER_STANDALONE_TEST
 * (which supplies the fault-injection stub that src/core.c normally does).
 */
#include "fiber.h"
#include "internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>

#ifdef LOCKSTEP_FIBER_STANDALONE_TEST
/* Stand-in for src/core.c's fault-injection hook: never fails. */
int lockstep__fault(int kind)
{
    (void)kind;
    return 0;
}
#endif

#define RUNS 5
#define STACK_SIZE (64 * 1024)

static long iters = 2000000;

/* Returns a monotonic time in nanoseconds. */
static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* --- lockstep ------------------------------------------------------------ */

static lockstep__fiber ls_main, ls_fib;
static volatile int ls_stop;

/* Switches straight back to main until told to stop, then exits. */
static void ls_entry(void *arg)
{
    (void)arg;
    while (!ls_stop)
        lockstep__fiber_switch(&ls_fib, &ls_main);
    lockstep__fiber_exit(&ls_fib, &ls_main);
}

/* Times n round trips main -> fiber -> main; returns ns per switch. */
static double ls_run(long n)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++)
        lockstep__fiber_switch(&ls_main, &ls_fib);
    return (now_ns() - t0) / (2.0 * (double)n);
}

/* Sets up the fiber; returns 0 or a lockstep error code. */
static int ls_setup(void)
{
    lockstep__fiber_init_current(&ls_main);
    ls_stop = 0;
    return lockstep__fiber_create(&ls_fib, STACK_SIZE, ls_entry, NULL);
}

/* Lets the fiber exit and frees it. */
static void ls_teardown(void)
{
    ls_stop = 1;
    lockstep__fiber_switch(&ls_main, &ls_fib);
    lockstep__fiber_destroy(&ls_fib);
}

/* --- glibc swapcontext ---------------------------------------------------- */

static ucontext_t uc_main, uc_fib;
static void *uc_stack;

/* Swaps straight back to main, forever; main abandons it at the end. */
static void uc_entry(void)
{
    for (;;)
        swapcontext(&uc_fib, &uc_main);
}

static double uc_run(long n)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++)
        swapcontext(&uc_main, &uc_fib);
    return (now_ns() - t0) / (2.0 * (double)n);
}

/* Makes the swapcontext peer; returns 0 or -1. */
static int uc_setup(void)
{
    uc_stack = malloc(STACK_SIZE);
    if (uc_stack == NULL || getcontext(&uc_fib) != 0)
        return -1;
    uc_fib.uc_stack.ss_sp = uc_stack;
    uc_fib.uc_stack.ss_size = STACK_SIZE;
    uc_fib.uc_link = NULL;
    makecontext(&uc_fib, uc_entry, 0);
    return 0;
}

static void uc_teardown(void)
{
    free(uc_stack);
    uc_stack = NULL;
}

/* --- Boost.Context -------------------------------------------------------- */

#ifdef HAVE_BOOST_CONTEXT
/* libboost_context's C-linkage entry points (boost/context/detail/fcontext.hpp). */
typedef void *fcontext_t;
typedef struct {
    fcontext_t fctx;
    void *data;
} transfer_t;
transfer_t jump_fcontext(fcontext_t const to, void *vp);
fcontext_t make_fcontext(void *sp, size_t size, void (*fn)(transfer_t));

static fcontext_t bc_fib;
static void *bc_stack;

/* Jumps straight back to whoever resumed it, forever. */
static void bc_entry(transfer_t t)
{
    for (;;)
        t = jump_fcontext(t.fctx, NULL);
}

static double bc_run(long n)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++)
        bc_fib = jump_fcontext(bc_fib, NULL).fctx;
    return (now_ns() - t0) / (2.0 * (double)n);
}

static int bc_setup(void)
{
    bc_stack = malloc(STACK_SIZE);
    if (bc_stack == NULL)
        return -1;
    bc_fib = make_fcontext((char *)bc_stack + STACK_SIZE, STACK_SIZE, bc_entry);
    return 0;
}

static void bc_teardown(void)
{
    free(bc_stack);
    bc_stack = NULL;
}
#endif

/* --- Driver ---------------------------------------------------------------- */

typedef struct {
    const char *name;
    int (*setup)(void);
    double (*run)(long n);
    void (*teardown)(void);
    double median, min, max;
    int ok;
} impl;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Warms up, times RUNS runs of iters round trips, fills in the stats. */
static void measure(impl *m)
{
    double r[RUNS];
    if (m->setup() != 0) {
        m->ok = 0;
        return;
    }
    m->run(iters / 10 + 1);
    for (int i = 0; i < RUNS; i++)
        r[i] = m->run(iters);
    m->teardown();
    qsort(r, RUNS, sizeof r[0], cmp_double);
    m->median = r[RUNS / 2];
    m->min = r[0];
    m->max = r[RUNS - 1];
    m->ok = 1;
}

int main(int argc, char **argv)
{
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
            iters = atol(argv[++i]);
            if (iters < 1)
                iters = 1;
        } else {
            fprintf(stderr, "usage: %s [--json] [--iters N]\n", argv[0]);
            return 2;
        }
    }
    impl impls[] = {
#ifdef LOCKSTEP_FIBER_UCONTEXT
        {"lockstep_ucontext", ls_setup, ls_run, ls_teardown, 0, 0, 0, 0},
#else
        {"lockstep_asm", ls_setup, ls_run, ls_teardown, 0, 0, 0, 0},
#endif
        {"glibc_swapcontext", uc_setup, uc_run, uc_teardown, 0, 0, 0, 0},
#ifdef HAVE_BOOST_CONTEXT
        {"boost_fcontext", bc_setup, bc_run, bc_teardown, 0, 0, 0, 0},
#endif
    };
    size_t n = sizeof impls / sizeof impls[0];
    for (size_t i = 0; i < n; i++)
        measure(&impls[i]);

    if (json) {
        printf("{\"benchmark\":\"switch\",\"unit\":\"ns_per_switch\",\"runs\":%d,"
               "\"iterations\":%ld,\"results\":{", RUNS, iters);
        for (size_t i = 0; i < n; i++) {
            if (impls[i].ok)
                printf("%s\"%s\":{\"median\":%.2f,\"min\":%.2f,\"max\":%.2f}", i ? "," : "",
                       impls[i].name, impls[i].median, impls[i].min, impls[i].max);
            else
                printf("%s\"%s\":null", i ? "," : "", impls[i].name);
        }
        printf("}}\n");
    } else {
        printf("context switch, ns per switch (round trip / 2), %d runs of %ld round trips\n",
               RUNS, iters);
        for (size_t i = 0; i < n; i++) {
            if (impls[i].ok)
                printf("  %-20s median %7.2f   min-max %7.2f - %7.2f\n", impls[i].name,
                       impls[i].median, impls[i].min, impls[i].max);
            else
                printf("  %-20s setup failed\n", impls[i].name);
        }
    }
    for (size_t i = 0; i < n; i++)
        if (!impls[i].ok)
            return 1;
    return 0;
}
