/*
 * fault_injection.c: resource-failure injection for every engine, beyond the
 * single scenario conformance.c sweeps.  For each engine, each
 * representative run (run API, push API, a failing run, a producer failure,
 * nested runs, 100 consumers, a long stream that makes the buffer engine
 * grow, and lockstep_run_read's bulk source, short and long) and each kind
 * of acquisition (LOCKSTEP__FAULT_ALLOC: malloc, calloc, realloc; _MMAP:
 * fiber stacks; _THREAD: consumer threads), it makes the 1st, 2nd, 3rd,
 * ... acquisition of that kind fail in turn through
 * lockstep__fault_arm, until a run no longer reaches the armed point.
 * Every run must either end with the fault's code (LOCKSTEP_ENOMEM, or
 * LOCKSTEP_ETHREAD for the thread kind; report.failed says the library, or
 * the consumer whose nested run hit the fault) or end exactly as it does
 * without the fault, with correct results; and every consumer that started
 * must have returned.  Built with ASan/LSan (make test-asan) a leak on any
 * of these paths fails the run; without sanitizers the test also checks
 * that no mapping (a fiber stack) outlives the sweep.  It prints the
 * figures docs/TESTING.md quotes: cases executed, faults injected,
 * mismatches, and ends with "fault_injection: N passed, M failed".
 *
 * Usage: test_fault_injection [ENGINE...]   (default: fiber thread buffer)
 * An engine the build does not have is checked for LOCKSTEP_ENOTSUP only.
 */
#include "check.h"
#include "counter_source.h"
#include "internal.h" /* lockstep__fault_arm and the LOCKSTEP__FAULT_* kinds */
#include "lockstep.h"

#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#  define UNDER_SANITIZER 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#    define UNDER_SANITIZER 1
#  endif
#endif

/* Valgrind keeps mappings of its own (and of thread stacks) as it likes. */
#if defined(__has_include)
#  if __has_include(<valgrind/valgrind.h>)
#    include <valgrind/valgrind.h>
#  endif
#endif
#ifndef RUNNING_ON_VALGRIND
#  define RUNNING_ON_VALGRIND 0
#endif

#define WIDE 100 /* consumers in the wide scenario */

static const char *const kind_names[LOCKSTEP__FAULT_KINDS] = {"alloc", "mmap", "thread"};

/* ------------------------------------------------------------------------
 * Source and consumers.
 * ------------------------------------------------------------------------ */


enum { C_SUM, C_STOP, C_FAIL, C_NEST };

/* One consumer's script and what it observed. */
typedef struct {
    int kind;
    uint64_t k;       /* C_STOP / C_FAIL / C_NEST: after k items */
    int code;         /* C_FAIL */
    lockstep_engine engine; /* C_NEST: engine of the nested run */
    uint64_t count;
    int64_t sum;
    int bad_items;
    int started, returned, cancelled;
    int nest_rc;
} consumer_state;

/* Initialises *c to run kind with k and code. */
static void consumer_init(consumer_state *c, int kind, uint64_t k, int code, lockstep_engine e)
{
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->k = k;
    c->code = code;
    c->engine = e;
}

static int scripted(lockstep_iter *it, void *arg);

/* The nested run of a C_NEST consumer: two consumers over 100 items, on
 * the same engine.  Returns 0 when it succeeded with the right results,
 * its code when it failed, or 1 when it "succeeded" with wrong results. */
static int nested_run(lockstep_engine e)
{
    consumer_state in[2];
    consumer_init(&in[0], C_SUM, 0, 0, e);
    consumer_init(&in[1], C_STOP, 7, 0, e);
    lockstep_consumer cs[2] = {{scripted, &in[0]}, {scripted, &in[1]}};
    counter_source src = counter(100);
    lockstep_options o;
    lockstep_options_init(&o);
    o.engine = e;
    o.window = 3;
    int rc = lockstep_run(counter_pull, &src, sizeof(int64_t), cs, 2, &o);
    if (rc != 0)
        return rc;
    return in[0].sum == 4950 && in[1].count == 7 ? 0 : 1;
}

/* Every consumer: sums int64 items (checking each equals its position),
 * and stops, fails or nests as scripted.  A nested run's failure code is
 * returned as the consumer's own, so it surfaces in the outer run. */
static int scripted(lockstep_iter *it, void *arg)
{
    consumer_state *c = arg;
    c->started = 1;
    for (;;) {
        if (c->kind == C_STOP && c->count == c->k)
            break;
        if (c->kind == C_FAIL && c->count == c->k) {
            c->returned = 1;
            return c->code;
        }
        if (c->kind == C_NEST && c->count == c->k) {
            c->nest_rc = nested_run(c->engine);
            if (c->nest_rc != 0) {
                c->returned = 1;
                return c->nest_rc;
            }
        }
        const int64_t *x = lockstep_next(it);
        if (x == NULL) {
            c->cancelled = lockstep_cancelled(it);
            break;
        }
        if ((uint64_t)*x != c->count)
            c->bad_items++;
        c->sum += *x;
        c->count++;
    }
    c->returned = 1;
    return 0;
}

/* ------------------------------------------------------------------------
 * Scenarios: each runs once and says whether its outcome is acceptable.
 * ------------------------------------------------------------------------ */

enum { S_RUN, S_PUSH, S_FAILING, S_PUSH_FAIL, S_NEST, S_WIDE, S_LONG, S_READ, S_READ_LONG,
       S_COUNT };
static const char *const scenario_names[S_COUNT] = {
    "run", "push", "consumer-fails", "producer-fails", "nested", "100-consumers", "long-stream",
    "run_read", "run_read-long"};

/* What one run did. */
typedef struct {
    int rc;              /* lockstep_run / lockstep_close, or lockstep_open's code */
    long push_rc;        /* push API: a negative lockstep_push result, else 0 */
    lockstep_report rep;
    size_t n;
    consumer_state *cs;
} run_result;

/* Statistics, for the figures. */
static long runs_total, faults_total, mismatches_total, skipped_total;
static long consumers_ran_on_library_error; /* see the note in check_outcome */

/* Runs the consumers over src with the push API in chunks of 7, calling
 * lockstep_fail where the source fails.  Fills r. */
static void push_run(counter_source *src, const lockstep_consumer *cs, size_t n,
                     const lockstep_options *o, run_result *r)
{
    lockstep_stream *s;
    r->push_rc = 0;
    r->rc = lockstep_open(&s, sizeof(int64_t), cs, n, o);
    if (r->rc < 0)
        return;
    int64_t chunk[7];
    for (;;) {
        size_t got = 0;
        int item_rc = 1;
        while (got < 7 && (item_rc = counter_pull(src, &chunk[got])) == 1)
            got++;
        long live = lockstep_push(s, chunk, got);
        if (live < 0)
            r->push_rc = live;
        if (live <= 0)
            break;
        if (item_rc != 1) {
            if (item_rc != 0)
                lockstep_fail(s, item_rc);
            break;
        }
    }
    r->rc = lockstep_close(s);
}

/* Runs scenario sc on engine e and fills r (r->cs points into storage,
 * which must hold WIDE entries). */
static void run_scenario(int sc, lockstep_engine e, consumer_state *storage, run_result *r)
{
    lockstep_consumer cs[WIDE];
    lockstep_options o;
    lockstep_options_init(&o);
    o.engine = e;
    o.window = 8;
    o.report = &r->rep;
    memset(&r->rep, 0, sizeof r->rep);
    counter_source src = counter(200);
    size_t n = 3;
    consumer_init(&storage[0], C_SUM, 0, 0, e);
    consumer_init(&storage[1], C_STOP, 50, 0, e);
    consumer_init(&storage[2], C_SUM, 0, 0, e);
    switch (sc) {
    case S_FAILING:
        consumer_init(&storage[1], C_FAIL, 10, 42, e);
        src.fail_at = 150;
        src.fail_code = -9;
        break;
    case S_PUSH_FAIL:
        src.fail_at = 30;
        src.fail_code = -5;
        break;
    case S_NEST:
        consumer_init(&storage[0], C_NEST, 10, 0, e);
        consumer_init(&storage[2], C_NEST, 0, 0, e);
        break;
    case S_WIDE:
        n = WIDE;
        for (size_t i = 0; i < n; i++)
            consumer_init(&storage[i], i % 10 == 3 ? C_STOP : C_SUM, 10 + i, 0, e);
        src = counter(1000);
        o.window = 0;
        o.stack_size = 64 * 1024;
        break;
    case S_LONG:
    case S_READ_LONG:
        src = counter(5000); /* the buffer engine grows 512 -> 8192 */
        o.window = 64;
        break;
    }
    for (size_t i = 0; i < n; i++) {
        cs[i].fn = scripted;
        cs[i].arg = &storage[i];
    }
    r->n = n;
    r->cs = storage;
    r->push_rc = 0;
    if (sc == S_PUSH || sc == S_PUSH_FAIL)
        push_run(&src, cs, n, &o, r);
    else if (sc == S_READ || sc == S_READ_LONG)
        r->rc = lockstep_run_read(counter_read, &src, sizeof(int64_t), cs, n, &o);
    else
        r->rc = lockstep_run(counter_pull, &src, sizeof(int64_t), cs, n, &o);
}

/* Returns 1 when r is exactly what scenario sc gives with no fault. */
static int clean_outcome(int sc, const run_result *r)
{
    const consumer_state *c = r->cs;
    switch (sc) {
    case S_RUN:
    case S_PUSH:
    case S_LONG:
    case S_READ:
    case S_READ_LONG: {
        uint64_t n = sc == S_LONG || sc == S_READ_LONG ? 5000 : 200;
        return r->rc == 0 && r->push_rc == 0 && r->rep.failed == LOCKSTEP_FAILED_NONE &&
               c[0].count == n && c[0].sum == (int64_t)(n * (n - 1) / 2) && c[1].count == 50 &&
               c[1].sum == 1225 && c[2].count == n && !c[0].bad_items && !c[2].bad_items;
    }
    case S_FAILING:
        return r->rc == 42 && r->rep.failed == 1 && r->rep.position == 10 && c[1].count == 10 &&
               c[0].count >= 10 && c[2].count >= 10 && !c[0].bad_items && !c[2].bad_items;
    case S_PUSH_FAIL:
        return r->rc == -5 && r->rep.failed == LOCKSTEP_FAILED_SOURCE && r->rep.position == 30 &&
               c[0].count == 30 && c[0].cancelled && c[1].count == 30 && c[2].count == 30;
    case S_NEST:
        return r->rc == 0 && c[0].nest_rc == 0 && c[2].nest_rc == 0 && c[0].sum == 19900 &&
               c[1].count == 50 && c[2].sum == 19900;
    case S_WIDE:
        for (size_t i = 0; i < WIDE; i++) {
            uint64_t want = i % 10 == 3 ? 10 + i : 1000;
            if (c[i].count != want || c[i].bad_items)
                return 0;
        }
        return r->rc == 0 && r->rep.failed == LOCKSTEP_FAILED_NONE;
    }
    return 0;
}

/* Checks r, a run of scenario sc during which an acquisition of kind was
 * made to fail (or not, when injected is 0).  Returns 1 when acceptable. */
static int check_outcome(int sc, int kind, int injected, const run_result *r)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->cs[i].started && !r->cs[i].returned)
            return 0; /* a consumer was abandoned: its cleanup never ran */
    if (r->rep.code != r->rc)
        return 0;
    if (clean_outcome(sc, r))
        return 1;
    if (!injected)
        return 0;
    int expect = kind == LOCKSTEP__FAULT_THREAD ? LOCKSTEP_ETHREAD : LOCKSTEP_ENOMEM;
    if (r->rc != expect || (r->push_rc != 0 && r->push_rc != expect))
        return 0;
    if (r->rep.failed == LOCKSTEP_FAILED_LIBRARY) {
        /* lockstep.h says a library code means "no consumer has run"; a
         * buffer engine that fails to grow mid-stream still runs its
         * consumers (cancelled at that point).  Counted, not failed. */
        for (size_t i = 0; i < r->n; i++)
            if (r->cs[i].started) {
                consumers_ran_on_library_error++;
                break;
            }
        return 1;
    }
    /* The fault hit a nested run, and the nesting consumer passed its code on. */
    return r->rep.failed >= 0 && (size_t)r->rep.failed < r->n &&
           r->cs[r->rep.failed].kind == C_NEST && r->cs[r->rep.failed].nest_rc == expect;
}

/* Sweeps every fault point of kind in scenario sc on engine e: the 1st,
 * 2nd, ... acquisition fails, until one run no longer reaches the armed
 * point.  Returns the number of fault points injected. */
static long sweep(int sc, lockstep_engine e, int kind, consumer_state *storage)
{
    long points = 0;
    for (long nth = 1;; nth++) {
        run_result r;
        lockstep__fault_arm(kind, nth);
        run_scenario(sc, e, storage, &r);
        long seen = lockstep__fault_arm(kind, 0);
        int injected = seen >= nth;
        int ok = check_outcome(sc, kind, injected, &r);
        runs_total++;
        CHECK(ok);
        if (!ok) {
            mismatches_total++;
            fprintf(stderr, "  mismatch: engine %s, scenario %s, %s fault #%ld: rc %d push %ld "
                            "failed %ld position %" PRIu64 "\n",
                    lockstep_engine_name(e), scenario_names[sc], kind_names[kind], nth, r.rc,
                    r.push_rc, r.rep.failed, r.rep.position);
        }
        if (!injected)
            break; /* the armed point was never reached: every point is covered */
        points++;
        if (nth > 100000) {
            CHECK(!"fault sweep does not terminate");
            break;
        }
    }
    return points;
}

/* Counts the calling process's memory mappings (lines of /proc/self/maps),
 * or returns -1 when they cannot be read. */
static long count_mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        return -1;
    long lines = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF)
        if (ch == '\n')
            lines++;
    fclose(f);
    return lines;
}

/* Sweeps every scenario and kind on engine e, printing one line per
 * kind.  An engine this build lacks is checked for LOCKSTEP_ENOTSUP. */
static void sweep_engine(lockstep_engine e, consumer_state *storage)
{
    if (!lockstep_engine_available(e)) {
        run_result r;
        run_scenario(S_RUN, e, storage, &r);
        CHECK_EQ(r.rc, LOCKSTEP_ENOTSUP);
        skipped_total++;
        printf("  %-6s not available in this build: checked LOCKSTEP_ENOTSUP only\n",
               lockstep_engine_name(e));
        return;
    }
    for (int kind = 0; kind < LOCKSTEP__FAULT_KINDS; kind++) {
        long runs_before = runs_total, faults = 0, miss_before = mismatches_total;
        printf("  %-6s %-6s", lockstep_engine_name(e), kind_names[kind]);
        for (int sc = 0; sc < S_COUNT; sc++) {
            long p = sweep(sc, e, kind, storage);
            printf(" %s=%ld", scenario_names[sc], p);
            faults += p;
        }
        faults_total += faults;
        printf("  | runs %ld, faults %ld, mismatches %ld\n", runs_total - runs_before, faults,
               mismatches_total - miss_before);
    }
}

/* Runs the sweeps for the engines named on the command line (default:
 * all), then prints the figures and the check summary. */
int main(int argc, char **argv)
{
    static consumer_state storage[WIDE];
    lockstep_engine engines[LOCKSTEP_ENGINE_COUNT_];
    size_t n_engines = 0;
    for (int a = 1; a < argc; a++) {
        int found = 0;
        for (int e = 0; e < LOCKSTEP_ENGINE_COUNT_; e++)
            if (strcmp(argv[a], lockstep_engine_name((lockstep_engine)e)) == 0 &&
                n_engines < LOCKSTEP_ENGINE_COUNT_) {
                engines[n_engines++] = (lockstep_engine)e;
                found = 1;
            }
        if (!found) {
            fprintf(stderr, "usage: %s [fiber|thread|buffer]...\n", argv[0]);
            return 2;
        }
    }
    if (n_engines == 0)
        for (int e = 0; e < LOCKSTEP_ENGINE_COUNT_; e++)
            engines[n_engines++] = (lockstep_engine)e;
    for (int kind = 0; kind < LOCKSTEP__FAULT_KINDS; kind++)
        lockstep__fault_arm(kind, 0);

    /* Warm up every scenario once (thread-local altstacks, the guard-page
     * registry and malloc arenas are made once per process and kept), so
     * that the mapping count afterwards is the baseline. */
    for (size_t i = 0; i < n_engines; i++)
        for (int sc = 0; sc < S_COUNT; sc++) {
            run_result r;
            run_scenario(sc, engines[i], storage, &r);
        }
    long maps_before = count_mappings();

    printf("fault injection: points injected per scenario (engine, kind)\n");
    for (size_t i = 0; i < n_engines; i++)
        sweep_engine(engines[i], storage);

    long maps_after = count_mappings();
#ifdef UNDER_SANITIZER
    printf("mappings: %ld before, %ld after (not compared under a sanitizer, whose own "
           "allocator maps memory as it goes; LSan checks heap leaks at exit)\n",
           maps_before, maps_after);
#else
    /* A leaked stack adds mappings (memcheck reports heap leaks instead). */
    if (RUNNING_ON_VALGRIND) {
        printf("mappings: %ld before, %ld after (not compared under valgrind)\n", maps_before,
               maps_after);
    } else {
        printf("mappings: %ld before, %ld after the sweeps\n", maps_before, maps_after);
        CHECK(maps_after <= maps_before);
    }
#endif
    printf("figures: %ld cases executed, %ld faults injected, %ld mismatches, %ld engines "
           "skipped, %ld runs returned a library code after consumers had run\n",
           runs_total, faults_total, mismatches_total, skipped_total,
           consumers_ran_on_library_error);
    return CHECK_SUMMARY("fault_injection");
}
