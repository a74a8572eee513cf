/*
 * stress_thread.c: shakes the thread engine.  Thousands of random runs
 * (random windows, consumer counts, stream lengths, early exits, consumer
 * and source failures, pull and push APIs) are each run on the thread
 * engine and on the buffer engine, the oracle, and must agree on the return
 * code, report.failed and report.position, and, for successful runs, on
 * every consumer's count and checksum.  Some runs also inject a thread
 * creation failure, which must yield LOCKSTEP_ETHREAD with no consumer
 * left running.  `stress_thread [RUNS]`; LOCKSTEP_STRESS_RUNS also sets it.
 */
#include "check.h"
#include "counter_source.h"
#include "push_chunks.h"
#include "internal.h" /* lockstep__fault_arm */
#include "lockstep.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

enum { ALL, STOP, FAIL, SLOW };

/* A scripted consumer and what it observed. */
typedef struct {
    int kind;
    uint64_t k;      /* STOP/FAIL: after k items */
    int code;
    uint64_t count, sum, disorder;
} script;

/* Where busy work goes, so that the compiler keeps it. */
static _Atomic uint64_t work_sink;

/* Busy work so that some consumers lag behind the others. */
static uint64_t spin_work(uint64_t x)
{
    for (int r = 0; r < 200; r++)
        x = x * 6364136223846793005u + 1442695040888963407u;
    return x;
}

/* Receives items in order, stopping or failing as scripted. */
static int consumer(lockstep_iter *it, void *arg)
{
    script *sc = arg;
    uint64_t sink = 0;
    for (;;) {
        if (sc->kind == STOP && sc->count == sc->k)
            return 0;
        if (sc->kind == FAIL && sc->count == sc->k)
            return sc->code;
        const uint64_t *x = lockstep_next(it);
        if (x == NULL) {
            atomic_fetch_xor(&work_sink, sink);
            return 0;
        }
        if (*x != sc->count)
            sc->disorder++;
        if (sc->kind == SLOW)
            sink ^= spin_work(*x);
        sc->sum += *x;
        sc->count++;
    }
}

static uint64_t rng = 0x2545f4914f6cdd1du;

static uint64_t rnd(uint64_t bound)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return bound ? rng % bound : 0;
}

/* One run on engine e: by lockstep_run, or by pushing random chunks. */
static int run(lockstep_engine e, script *sc, size_t n, counter_source src, size_t window, int push,
               lockstep_report *rep)
{
    lockstep_consumer cs[16];
    for (size_t i = 0; i < n; i++) {
        cs[i].fn = consumer;
        cs[i].arg = &sc[i];
    }
    lockstep_options o;
    lockstep_options_init(&o);
    o.engine = e;
    o.window = window;
    o.report = rep;
    o.stack_size = 64 * 1024;
    if (push)
        return run_by_push(counter_pull, &src, sizeof(uint64_t), cs, n, &o, 40, rnd);
    return lockstep_run(counter_pull, &src, sizeof(uint64_t), cs, n, &o);
}

/* One random case: thread against buffer. */
static void random_case(long index)
{
    static const size_t windows[] = {1, 2, 3, 4, 5, 7, 8, 13, 64, 100, 0, 1000};
    size_t n = (size_t)rnd(9);
    size_t window = windows[rnd(sizeof windows / sizeof windows[0])];
    uint64_t len = rnd(4) == 0 ? rnd(5000) : rnd(400);
    int push = rnd(3) == 0;
    script sc[16], oracle[16];
    for (size_t i = 0; i < n; i++) {
        memset(&sc[i], 0, sizeof sc[i]);
        sc[i].kind = (int)rnd(4);
        if (sc[i].kind == SLOW && rnd(3) != 0)
            sc[i].kind = ALL;
        sc[i].k = rnd(len + 3);
        sc[i].code = (int)(1 + rnd(7));
        oracle[i] = sc[i];
    }
    counter_source src = counter(len);
    if (rnd(4) == 0) {
        src.fail_at = rnd(len + 1);
        src.fail_code = -(int)(1 + rnd(7));
    }
    lockstep_report rep, orep;
    long before = check_failed;
    int rc = run(LOCKSTEP_ENGINE_THREAD, sc, n, src, window, push, &rep);
    int orc = run(LOCKSTEP_ENGINE_BUFFER, oracle, n, src, window, 0, &orep);
    CHECK_EQ(rc, orc);
    CHECK_EQ(rep.failed, orep.failed);
    if (orep.failed != LOCKSTEP_FAILED_NONE)
        CHECK_EQ(rep.position, orep.position);
    for (size_t i = 0; i < n; i++) {
        CHECK_EQ(sc[i].disorder, 0);
        if (orc == 0) {
            CHECK_EQ(sc[i].count, oracle[i].count);
            CHECK_EQ(sc[i].sum, oracle[i].sum);
        } else {
            /* Cancelled consumers received at least every item before the
             * failure, and never more than they would have on their own. */
            CHECK(sc[i].count >= (oracle[i].count < orep.position ? oracle[i].count
                                                                   : orep.position) ||
                  (long)i == orep.failed);
        }
    }
    if (check_failed != before) {
        fprintf(stderr, "  case %ld: %s, window %zu, %" PRIu64 " items, source fails at %" PRIu64
                        " (%d), rc %d vs %d, consumers:", index, push ? "push" : "run", window,
                len, src.fail_at, src.fail_code, rc, orc);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " [%d k=%" PRIu64 " code=%d count=%" PRIu64 "/%" PRIu64 "]",
                    sc[i].kind, sc[i].k, sc[i].code, sc[i].count, oracle[i].count);
        fprintf(stderr, "\n");
    }
}

/* Thread creation fails at the nth thread: ETHREAD, and the consumers that
 * did start were cancelled and returned (the run returned at all). */
static void thread_failure_case(void)
{
    size_t n = 1 + (size_t)rnd(6);
    script sc[8];
    for (size_t i = 0; i < n; i++) {
        memset(&sc[i], 0, sizeof sc[i]);
        sc[i].kind = ALL;
    }
    counter_source src = counter(1000);
    lockstep_report rep;
    lockstep__fault_arm(LOCKSTEP__FAULT_THREAD, 1 + (long)rnd(n));
    int rc = run(LOCKSTEP_ENGINE_THREAD, sc, n, src, 8, (int)rnd(2), &rep);
    lockstep__fault_arm(LOCKSTEP__FAULT_THREAD, 0);
    CHECK_EQ(rc, LOCKSTEP_ETHREAD);
    CHECK_EQ(rep.failed, LOCKSTEP_FAILED_LIBRARY);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(sc[i].count, 0);
}

int main(int argc, char **argv)
{
    const char *env = getenv("LOCKSTEP_STRESS_RUNS");
    long runs = argc > 1 ? atol(argv[1]) : env ? atol(env) : 3000;
    if (!lockstep_engine_available(LOCKSTEP_ENGINE_THREAD)) {
        printf("stress_thread: thread engine not available, skipped\n");
        return 0;
    }
    for (long i = 0; i < runs; i++) {
        random_case(i);
        if (i % 50 == 0)
            thread_failure_case();
    }
    return CHECK_SUMMARY("stress_thread");
}
