/*
 * bench_bytes.c: byte streams (lockstep_run_read, lockstep_take).  Rows:
 *
 *   take4     4 consumers that only lockstep_take and touch each span, from a
 *             source that copies out of a block that stays in cache (GB/s of
 *             source bytes), fiber and thread engines; beside it Go's
 *             io.Pipe + io.MultiWriter with 4 readers (bench/go_pipe.go, run
 *             with `go run`, offline) and GNU tee writing to 3 pipes.
 *   digests   OpenSSL SHA-256 and SHA-1 as consumers on fibers, against the
 *             sum of each digest alone over the same bytes plus the source
 *             alone (reading into a window-sized buffer); the thread engine
 *             for the same pair.
 *   pipe      4 take consumers fed from a real pipe by a writer process,
 *             against a plain read(2) loop over the same pipe.
 *   rss       peak RSS of a run over 64 MiB and over 1 GiB.
 *   sweep     (--sweep) the default-window sweep: item sizes 1, 8, 64 and
 *             4096, bulk (run_read + take) and per item (run + next).
 *
 * Every figure is the best of `repeat` runs; ratios compare rows of the
 * same run.  Usage: bench_bytes [--quick] [--sweep] [--sweep-only] [--cpu]
 *                                [--gib G] [--json PATH] [--go bench/go_pipe.go]
 *                                [--window W]
 */
#include <lockstep.h>

#include "engine_arg.h" /* tests/: engine_opts */

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int repeat = 3;
static FILE *json;
static int json_rows;

/* --cpu: time rows by this process's CPU time instead of the wall clock.
 * On a loaded machine that leaves out the time other processes hold the
 * CPU; it is a fair measure for single-threaded rows (fibers, the read(2)
 * loop, a digest alone) only: threads add up their CPU times, and external
 * programs (Go, tee) are timed by the wall clock anyway. */
static clockid_t clock_id = CLOCK_MONOTONIC;

static double now(void)
{
    struct timespec ts;
    clock_gettime(clock_id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The wall clock, whatever --cpu says: for rows whose work runs in other
 * processes (tee). */
static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Records one row in the JSON file, if any. */
static void json_row(const char *suite, const char *name, double bytes, double seconds,
                     double ratio, long peak_kib)
{
    if (json == NULL)
        return;
    fprintf(json,
            "%s\n    {\"suite\": \"%s\", \"name\": \"%s\", \"bytes\": %.0f, \"seconds\": %.6f, "
            "\"gb_per_s\": %.3f, \"ratio\": %.4f, \"peak_bytes\": %ld}",
            json_rows++ ? "," : "", suite, name, bytes, seconds, bytes / seconds / 1e9, ratio,
            peak_kib * 1024L);
}

/* ---- Sources and consumers --------------------------------------------- */

/* Copies items of `item` bytes out of `block` (which stays in cache)
 * until `left` items are gone. */
typedef struct {
    const unsigned char *block;
    size_t block_items;
    uint64_t left;
    size_t item;
} block_source;

static unsigned char *block;
#define BLOCK_LEN ((size_t)256 << 10) /* 256 KiB: stays in L2 beside a 64 KiB window */

static long block_read(void *arg, void *items, size_t max)
{
    block_source *b = arg;
    if (b->left == 0)
        return 0;
    size_t n = max < b->block_items ? max : b->block_items;
    if (n > b->left)
        n = (size_t)b->left;
    memcpy(items, b->block, n * b->item);
    b->left -= n;
    return (long)n;
}

/* Takes spans and touches each: its first and last byte. */
static int take_touch(lockstep_iter *it, void *arg)
{
    uint64_t acc = 0, total = 0;
    size_t n;
    const unsigned char *p;
    while ((p = lockstep_take(it, SIZE_MAX, &n)) != NULL) {
        acc += p[0] ^ p[n - 1];
        total += n;
    }
    *(uint64_t *)arg = total + (acc & 0); /* keep acc live without changing the total */
    __asm__ __volatile__("" : : "r"(acc));
    return 0;
}

/* Digests every span with md (an EVP_MD). */
typedef struct {
    const EVP_MD *md;
    unsigned char out[64];
    double cpu; /* CPU seconds of the consumer's thread (thread engine) */
} digest_arg;

/* CPU seconds of the calling thread so far. */
static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int digest_consumer(lockstep_iter *it, void *arg)
{
    digest_arg *d = arg;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || !EVP_DigestInit_ex(ctx, d->md, NULL))
        return 1;
    size_t n;
    const unsigned char *p;
    while ((p = lockstep_take(it, SIZE_MAX, &n)) != NULL)
        EVP_DigestUpdate(ctx, p, n);
    EVP_DigestFinal_ex(ctx, d->out, NULL);
    EVP_MD_CTX_free(ctx);
    d->cpu = thread_cpu();
    return 0;
}

static long fd_read(void *arg, void *items, size_t max)
{
    for (;;) {
        ssize_t n = read(*(int *)arg, items, max);
        if (n >= 0)
            return (long)n;
        if (errno != EINTR)
            return -errno;
    }
}

/* ---- Runs ------------------------------------------------------------- */

/* n_consumers take_touch consumers over `bytes` from the block; returns
 * seconds.  Checks every consumer saw every byte. */
static double run_take(lockstep_engine e, size_t window, size_t item, uint64_t bytes,
                       size_t n_consumers, size_t *used_window)
{
    uint64_t seen[8] = {0};
    lockstep_consumer cs[8];
    for (size_t i = 0; i < n_consumers; i++)
        cs[i] = (lockstep_consumer){take_touch, &seen[i]};
    block_source b = {block, BLOCK_LEN / item, bytes / item, item};
    lockstep_report rep;
    lockstep_options o = engine_opts(e, window, &rep);
    double t0 = now();
    int rc = lockstep_run_read(block_read, &b, item, cs, n_consumers, &o);
    double t = now() - t0;
    if (rc != 0) {
        fprintf(stderr, "run_read: %s\n", lockstep_strerror(rc));
        exit(1);
    }
    for (size_t i = 0; i < n_consumers; i++)
        if (seen[i] != bytes / item) {
            fprintf(stderr, "consumer %zu saw %llu items\n", i, (unsigned long long)seen[i]);
            exit(1);
        }
    if (used_window)
        *used_window = rep.window;
    return t;
}

/* Best of `repeat` calls of fn(arg). */
static double best_of(double (*fn)(void *), void *arg)
{
    double best = 1e30;
    for (int i = 0; i < repeat; i++) {
        double t = fn(arg);
        if (t < best)
            best = t;
    }
    return best;
}

typedef struct {
    lockstep_engine e;
    size_t window, item;
    uint64_t bytes;
    size_t n;
    size_t used;
} take_job;

static double take_job_run(void *arg)
{
    take_job *j = arg;
    return run_take(j->e, j->window, j->item, j->bytes, j->n, &j->used);
}

/* The suites of the JSON rows: bench/py_chart.py draws one panel each,
 * titled so. */
#define SUITE_TAKE4 "C bytes: 4 consumers that lockstep_take each span"
#define SUITE_DIGESTS "C bytes: SHA-256 + SHA-1 consumers"
#define SUITE_PIPE "C bytes: 4 take consumers from a pipe"
#define SUITE_RSS "C bytes: peak RSS by stream length"

static void print_row(const char *suite, const char *name, double bytes, double t, double ratio,
                      long peak_kib)
{
    printf("| %-46s | %8.2f GB/s | %8.3f s | %7.2fx |", name, bytes / t / 1e9, t, ratio);
    if (peak_kib > 0)
        printf(" %7.1f MiB |", peak_kib / 1024.0);
    printf("\n");
    json_row(suite, name, bytes, t, ratio, peak_kib);
}

/* Runs `cmd` and parses "seconds" from its last line; returns -1 when it
 * cannot run here. */
static double run_external(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    char line[256];
    double t = -1;
    while (fgets(line, sizeof line, p) != NULL)
        if (sscanf(line, "seconds %lf", &t) != 1)
            t = -1;
    if (pclose(p) != 0)
        return -1;
    return t;
}

/* ---- GNU tee to 3 pipes ------------------------------------------------ */

typedef struct {
    int fd;
    uint64_t got;
} drain_arg;

static void *drain(void *arg)
{
    drain_arg *d = arg;
    static __thread unsigned char buf[1 << 16];
    ssize_t n;
    while ((n = read(d->fd, buf, sizeof buf)) > 0)
        d->got += (uint64_t)n;
    return NULL;
}

/* tee reads a pipe we write `bytes` into and writes 3 pipes that 3
 * threads drain.  Returns seconds, or -1 when tee cannot run. */
static double run_tee(uint64_t bytes)
{
    int in[2], out[3][2];
    if (pipe(in) != 0)
        return -1;
    for (int i = 0; i < 3; i++)
        if (pipe(out[i]) != 0)
            return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        char f1[32], f2[32];
        snprintf(f1, sizeof f1, "/dev/fd/%d", out[1][1]);
        snprintf(f2, sizeof f2, "/dev/fd/%d", out[2][1]);
        dup2(in[0], 0);
        dup2(out[0][1], 1);
        close(in[1]);
        for (int i = 0; i < 3; i++)
            close(out[i][0]);
        execlp("tee", "tee", f1, f2, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    drain_arg d[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        close(out[i][1]);
        d[i] = (drain_arg){out[i][0], 0};
    }
    double t0 = wall_now();
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, drain, &d[i]);
    for (uint64_t left = bytes; left > 0;) {
        size_t n = left < 65536 ? (size_t)left : 65536;
        ssize_t w = write(in[1], block, n);
        if (w <= 0)
            break;
        left -= (uint64_t)w;
    }
    close(in[1]);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    double t = wall_now() - t0;
    int status;
    waitpid(pid, &status, 0);
    for (int i = 0; i < 3; i++)
        close(out[i][0]);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    for (int i = 0; i < 3; i++)
        if (d[i].got != bytes)
            return -1;
    return t;
}

static double tee_job(void *arg)
{
    return run_tee(*(uint64_t *)arg);
}

/* ---- Digests ----------------------------------------------------------- */

typedef struct {
    lockstep_engine e;
    uint64_t bytes;
    size_t window; /* bytes */
} digest_job;

/* On the thread engine, the CPU seconds of each consumer thread and of the
 * producer in the last digest_pair: what two idle cores could overlap. */
static double pair_cpu[3];

static double digest_pair(void *arg)
{
    digest_job *j = arg;
    digest_arg d[2] = {{EVP_sha256(), {0}, 0}, {EVP_sha1(), {0}, 0}};
    lockstep_consumer cs[2] = {{digest_consumer, &d[0]}, {digest_consumer, &d[1]}};
    block_source b = {block, BLOCK_LEN, j->bytes, 1};
    lockstep_options o = engine_opts(j->e, j->window, NULL);
    double t0 = now(), c0 = thread_cpu();
    if (lockstep_run_read(block_read, &b, 1, cs, 2, &o) != 0)
        exit(1);
    double t = now() - t0;
    pair_cpu[0] = d[0].cpu;
    pair_cpu[1] = d[1].cpu;
    pair_cpu[2] = thread_cpu() - c0;
    return t;
}

/* One digest alone over the same bytes: the block, window-sized pieces. */
static const EVP_MD *alone_md;

/* Digests j->bytes of the block with md, in window-sized pieces. */
static void digest_bytes(const EVP_MD *md, const digest_job *j)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char out[64];
    EVP_DigestInit_ex(ctx, md, NULL);
    for (uint64_t left = j->bytes; left > 0;) {
        size_t n = left < j->window ? (size_t)left : j->window;
        n = n < BLOCK_LEN ? n : BLOCK_LEN;
        EVP_DigestUpdate(ctx, block, n);
        left -= n;
    }
    EVP_DigestFinal_ex(ctx, out, NULL);
    EVP_MD_CTX_free(ctx);
}

static double digest_alone(void *arg)
{
    double t0 = now();
    digest_bytes(alone_md, arg);
    return now() - t0;
}

typedef struct {
    const EVP_MD *md;
    const digest_job *j;
} plain_thread_arg;

static void *plain_digest_thread(void *arg)
{
    plain_thread_arg *a = arg;
    digest_bytes(a->md, a->j);
    return NULL;
}

/* SHA-256 and SHA-1 over the same bytes on two plain threads, no lockstep:
 * how much parallelism the machine gives right now, the ceiling for the
 * thread engine's speed-up over fibers. */
static double digest_two_threads(void *arg)
{
    plain_thread_arg a[2] = {{EVP_sha256(), arg}, {EVP_sha1(), arg}};
    pthread_t th[2];
    double t0 = now();
    for (int i = 0; i < 2; i++)
        if (pthread_create(&th[i], NULL, plain_digest_thread, &a[i]) != 0)
            exit(1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    return now() - t0;
}

/* The source alone, reading into a window-sized buffer. */
static double source_alone(void *arg)
{
    digest_job *j = arg;
    unsigned char *buf = malloc(j->window);
    block_source b = {block, BLOCK_LEN, j->bytes, 1};
    double t0 = now();
    long n;
    uint64_t acc = 0;
    while ((n = block_read(&b, buf, j->window)) > 0)
        acc += buf[n - 1];
    double t = now() - t0;
    __asm__ __volatile__("" : : "r"(acc));
    free(buf);
    return t;
}

/* ---- Pipe -------------------------------------------------------------- */

/* Starts a writer process that writes `bytes` into a new pipe; returns
 * the read end and sets *pid. */
static int start_writer(uint64_t bytes, pid_t *pid)
{
    int fds[2];
    if (pipe(fds) != 0)
        exit(1);
    fflush(NULL);
    *pid = fork();
    if (*pid == 0) {
        close(fds[0]);
        for (uint64_t left = bytes; left > 0;) {
            size_t n = left < 65536 ? (size_t)left : 65536;
            ssize_t w = write(fds[1], block, n);
            if (w <= 0)
                _exit(1);
            left -= (uint64_t)w;
        }
        _exit(0);
    }
    close(fds[1]);
    return fds[0];
}

typedef struct {
    uint64_t bytes;
    size_t window;
    int use_lockstep;
} pipe_job;

static double pipe_run(void *arg)
{
    pipe_job *j = arg;
    pid_t pid;
    int fd = start_writer(j->bytes, &pid);
    double t0 = now();
    if (j->use_lockstep) {
        uint64_t seen[4];
        lockstep_consumer cs[4];
        for (int i = 0; i < 4; i++)
            cs[i] = (lockstep_consumer){take_touch, &seen[i]};
        lockstep_options o = engine_opts(LOCKSTEP_ENGINE_FIBER, j->window, NULL);
        if (lockstep_run_read(fd_read, &fd, 1, cs, 4, &o) != 0 || seen[3] != j->bytes)
            exit(1);
    } else {
        unsigned char *buf = malloc(j->window);
        uint64_t total = 0, acc = 0;
        long n;
        while ((n = fd_read(&fd, buf, j->window)) > 0) {
            acc += buf[0] ^ buf[n - 1];
            total += (uint64_t)n;
        }
        __asm__ __volatile__("" : : "r"(acc));
        free(buf);
        if (total != j->bytes)
            exit(1);
    }
    double t = now() - t0;
    close(fd);
    int status;
    waitpid(pid, &status, 0);
    return t;
}

/* ---- Peak RSS ---------------------------------------------------------- */

/* Runs take_job in a child and returns its peak RSS in KiB. */
static long child_peak(take_job *j)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        take_job_run(j);
        _exit(0);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        exit(1);
    return ru.ru_maxrss;
}

/* ---- The default-window sweep ------------------------------------------ */

/* Per item: a source that copies one item of `size` bytes per call. */
typedef struct {
    uint64_t left;
    size_t size;
} item_source;

static int item_pull(void *arg, void *item)
{
    item_source *s = arg;
    if (s->left == 0)
        return 0;
    s->left--;
    memcpy(item, block, s->size);
    return 1;
}

static int next_touch(lockstep_iter *it, void *arg)
{
    const unsigned char *p;
    uint64_t acc = 0, count = 0;
    while ((p = lockstep_next(it)) != NULL) {
        acc += p[0];
        count++;
    }
    __asm__ __volatile__("" : : "r"(acc));
    *(uint64_t *)arg = count;
    return 0;
}

static double run_items(lockstep_engine e, size_t window, size_t size, uint64_t items)
{
    uint64_t seen[2];
    lockstep_consumer cs[2] = {{next_touch, &seen[0]}, {next_touch, &seen[1]}};
    item_source s = {items, size};
    lockstep_options o = engine_opts(e, window, NULL);
    double t0 = now();
    if (lockstep_run(item_pull, &s, size, cs, 2, &o) != 0 || seen[1] != items)
        exit(1);
    return now() - t0;
}

static void sweep(uint64_t bulk_bytes)
{
    static const size_t sizes[] = {1, 8, 64, 4096};
    printf("\n### Window sweep, bulk: 2 take consumers, lockstep_run_read (GB/s of source bytes)\n");
    static const size_t window_bytes[] = {256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10,
                                          1 << 20, 4 << 20, 0};
    const size_t n_windows = sizeof window_bytes / sizeof window_bytes[0];
    printf("| engine | item | 256 B | 1 KiB | 4 KiB | 16 KiB | 64 KiB | 256 KiB | 1 MiB | 4 MiB "
           "| default (items) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int e = 0; e < 2; e++) {
        lockstep_engine eng = e ? LOCKSTEP_ENGINE_THREAD : LOCKSTEP_ENGINE_FIBER;
        for (size_t k = 0; k < 4; k++) {
            printf("| %s | %zu B |", lockstep_engine_name(eng), sizes[k]);
            for (size_t x = 0; x < n_windows; x++) {
                size_t wb = window_bytes[x];
                size_t w = wb / sizes[k];
                int is_default = wb == 0;
                if (!is_default && w == 0) {
                    printf(" - |");
                    continue;
                }
                /* A thread hand-off per small segment costs microseconds:
                 * a sixteenth of the bytes keeps those cells to seconds. */
                uint64_t nb = e && wb != 0 && wb < ((size_t)64 << 10) ? bulk_bytes / 16 : bulk_bytes;
                take_job j = {eng, w, sizes[k], nb, 2, 0};
                double t = best_of(take_job_run, &j);
                printf(" %.2f", nb / t / 1e9);
                if (is_default)
                    printf(" (%zu)", j.used);
                printf(" |");
                fflush(stdout);
                char name[96];
                snprintf(name, sizeof name, "sweep bulk %s item %zu window %zu",
                         lockstep_engine_name(eng), sizes[k], is_default ? j.used : w);
                json_row("sweep", name, (double)nb, t, 0, 0);
            }
            printf("\n");
        }
    }
    printf("\n### Window sweep, per item: 2 next consumers, lockstep_run, fiber (ns per item)\n");
    printf("| item | 16 | 64 | 256 | 1024 | 4096 | 16384 | 65536 | default |\n"
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t k = 0; k < 4; k++) {
        uint64_t items = sizes[k] >= 4096 ? 200000 : 4000000;
        printf("| %zu B |", sizes[k]);
        for (size_t w = 16; w <= 65536 * 4; w *= 4) {
            size_t win = w > 65536 ? 0 : w;
            double best = 1e30;
            for (int r = 0; r < repeat; r++) {
                double t = run_items(LOCKSTEP_ENGINE_FIBER, win, sizes[k], items);
                best = t < best ? t : best;
            }
            printf(" %.2f |", best * 1e9 / (double)items);
            fflush(stdout);
            char name[96];
            snprintf(name, sizeof name, "sweep items fiber item %zu window %zu", sizes[k], win);
            json_row("sweep", name, (double)items * (double)sizes[k], best, 0, 0);
        }
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    double gib = 4;
    int quick = 0, do_sweep = 0;
    const char *json_path = NULL, *go_path = "bench/go_pipe.go";
    size_t window_opt = 0; /* --window: lockstep's window in the main rows (0: default) */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--sweep") == 0)
            do_sweep = 1;
        else if (strcmp(argv[i], "--sweep-only") == 0)
            do_sweep = 2;
        else if (strcmp(argv[i], "--cpu") == 0)
            clock_id = CLOCK_PROCESS_CPUTIME_ID;
        else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc)
            window_opt = (size_t)atoll(argv[++i]);
        else if (strcmp(argv[i], "--gib") == 0 && i + 1 < argc)
            gib = atof(argv[++i]);
        else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            json_path = argv[++i];
        else if (strcmp(argv[i], "--go") == 0 && i + 1 < argc)
            go_path = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--quick] [--sweep] [--sweep-only] [--cpu] [--gib G] "
                            "[--json PATH] [--go FILE] [--window W]\n", argv[0]);
            return 2;
        }
    }
    if (quick)
        gib = 0.25;
    signal(SIGPIPE, SIG_IGN);
    block = malloc(BLOCK_LEN);
    for (size_t i = 0; i < BLOCK_LEN; i++)
        block[i] = (unsigned char)(i * 131 + (i >> 9));
    if (json_path != NULL && (json = fopen(json_path, "w")) == NULL) {
        fprintf(stderr, "%s: %s\n", json_path, strerror(errno));
        return 1;
    }
    if (json)
        fprintf(json, "{\"rows\": [");
    uint64_t bytes = (uint64_t)(gib * (double)(1ull << 30));
    if (do_sweep == 2) {
        sweep(quick ? (64u << 20) : (512u << 20));
        goto done;
    }

    printf("clock: %s\n", clock_id == CLOCK_MONOTONIC ? "wall (CLOCK_MONOTONIC)"
                                                     : "process CPU time (--cpu)");
    printf("### 4 consumers that take and touch each span (%.2f GiB, best of %d)\n", gib, repeat);
    printf("| approach | throughput | time | vs fiber |\n|---|---:|---:|---:|\n");
    take_job fib = {LOCKSTEP_ENGINE_FIBER, window_opt, 1, bytes, 4, 0};
    double t_fib = best_of(take_job_run, &fib);
    char name[128];
    snprintf(name, sizeof name, "lockstep fiber, window %zu B", fib.used);
    print_row(SUITE_TAKE4, name, (double)bytes, t_fib, 1.0, 0);
    take_job thr = {LOCKSTEP_ENGINE_THREAD, 0, 1, bytes, 4, 0};
    double t_thr = best_of(take_job_run, &thr);
    snprintf(name, sizeof name, "lockstep thread, default window (%zu B)", thr.used);
    print_row(SUITE_TAKE4, name, (double)bytes, t_thr, t_thr / t_fib, 0);
    char cmd[512];
    uint64_t go_bytes = bytes / 4;
    snprintf(cmd, sizeof cmd,
             "GO111MODULE=off GOPROXY=off GOCACHE=${GOCACHE:-/tmp/lockstep-gocache} "
             "go run '%s' -bytes %llu -readers 4 2>/dev/null",
             go_path, (unsigned long long)go_bytes);
    double t_go = run_external(cmd);
    if (t_go > 0)
        print_row(SUITE_TAKE4, "Go io.Pipe + io.MultiWriter, 4 readers (wall)", (double)go_bytes, t_go,
                  (t_go / (double)go_bytes) / (t_fib / (double)bytes), 0);
    else
        printf("| %-46s | could not run here (go run bench/go_pipe.go) |\n",
               "Go io.Pipe + io.MultiWriter, 4 readers");
    uint64_t tee_bytes = bytes / 16;
    double t_tee = best_of(tee_job, &tee_bytes);
    if (t_tee > 0)
        print_row(SUITE_TAKE4, "GNU tee to 3 pipes (wall)", (double)tee_bytes, t_tee,
                  (t_tee / (double)tee_bytes) / (t_fib / (double)bytes), 0);
    else
        printf("| %-46s | could not run here |\n", "GNU tee to 3 pipes");

    uint64_t dbytes = quick ? (64u << 20) : (256u << 20);
    size_t dwin = fib.used;
    printf("\n### SHA-256 + SHA-1 consumers over %llu MiB (best of %d)\n",
           (unsigned long long)(dbytes >> 20), repeat);
    printf("| approach | throughput | time | ratio |\n|---|---:|---:|---:|\n");
    digest_job dj = {LOCKSTEP_ENGINE_FIBER, dbytes, dwin};
    alone_md = EVP_sha256();
    double t256 = best_of(digest_alone, &dj);
    alone_md = EVP_sha1();
    double t1 = best_of(digest_alone, &dj);
    double tsrc = best_of(source_alone, &dj);
    double parts = t256 + t1 + tsrc;
    print_row(SUITE_DIGESTS, "SHA-256 alone, in memory", (double)dbytes, t256, t256 / parts, 0);
    print_row(SUITE_DIGESTS, "SHA-1 alone, in memory", (double)dbytes, t1, t1 / parts, 0);
    print_row(SUITE_DIGESTS, "source alone, window-sized reads", (double)dbytes, tsrc, tsrc / parts, 0);
    print_row(SUITE_DIGESTS, "sum of the three (the floor for fibers)", (double)dbytes, parts, 1.0, 0);
    double tdf = best_of(digest_pair, &dj);
    print_row(SUITE_DIGESTS, "lockstep fiber: SHA-256 + SHA-1 (vs sum)", (double)dbytes, tdf,
              tdf / parts, 0);
    digest_job dt = {LOCKSTEP_ENGINE_THREAD, dbytes, 0};
    double tdt = best_of(digest_pair, &dt);
    print_row(SUITE_DIGESTS, "lockstep thread: same pair (vs sum)", (double)dbytes, tdt, tdt / parts,
              0);
    double t2 = best_of(digest_two_threads, &dj);
    print_row(SUITE_DIGESTS, "two plain threads hashing, no lockstep (vs sum)", (double)dbytes, t2,
              t2 / parts, 0);
    if (clock_id == CLOCK_PROCESS_CPUTIME_ID) /* threads' CPU times add up: no speed-up here */
        printf("CPU time, thread engine / fibers: %.2fx; two plain threads / the two digests "
               "alone: %.2fx (the cost of running on threads, not a speed)\n",
               tdt / tdf, t2 / (t256 + t1));
    else
        printf("thread engine speed-up over fibers: %.2fx; the machine's ceiling now, "
               "(SHA-256 alone + SHA-1 alone) / two plain threads: %.2fx\n",
               tdf / tdt, (t256 + t1) / t2);
    /* On a shared machine the wall clock says little about two threads;
     * their CPU times say what two idle cores could do: the run cannot end
     * before its busiest thread, nor before half the CPU time of all. */
    double busiest = pair_cpu[0] > pair_cpu[1] ? pair_cpu[0] : pair_cpu[1];
    busiest = busiest > pair_cpu[2] ? busiest : pair_cpu[2];
    double half = (pair_cpu[0] + pair_cpu[1] + pair_cpu[2]) / 2;
    double floor2 = busiest > half ? busiest : half;
    printf("thread engine CPU: SHA-256 thread %.3f s, SHA-1 thread %.3f s, producer %.3f s: "
           "on 2 idle cores at least %.3f s", pair_cpu[0], pair_cpu[1], pair_cpu[2], floor2);
    if (clock_id == CLOCK_PROCESS_CPUTIME_ID) /* tdf is the fibers' CPU time: comparable */
        printf(", %.2fx faster than fibers at best", tdf / floor2);
    printf("\n");

    uint64_t pbytes = quick ? (256u << 20) : (1u << 30);
    printf("\n### From a pipe: a writer process, %llu MiB, 64 KiB writes (best of %d)\n",
           (unsigned long long)(pbytes >> 20), repeat);
    printf("| approach | throughput | time | ratio |\n|---|---:|---:|---:|\n");
    pipe_job pr = {pbytes, dwin, 0}, pl = {pbytes, window_opt, 1};
    double tpr = best_of(pipe_run, &pr);
    double tpl = best_of(pipe_run, &pl);
    print_row(SUITE_PIPE, "plain read(2) loop, window-sized buffer", (double)pbytes, tpr, 1.0, 0);
    print_row(SUITE_PIPE, "lockstep fiber, 4 take consumers (throughput vs read)", (double)pbytes, tpl,
              tpr / tpl, 0);

    printf("\n### Peak RSS, 4 take consumers (a child per row)\n");
    printf("| approach | throughput | time | ratio | peak RSS |\n|---|---:|---:|---:|---:|\n");
    for (int e = 0; e < 2; e++)
        for (int big = 0; big < 2; big++) {
            uint64_t n = big ? (1ull << 30) : (64ull << 20);
            take_job j = {e ? LOCKSTEP_ENGINE_THREAD : LOCKSTEP_ENGINE_FIBER, 0, 1, n, 4, 0};
            long kib = child_peak(&j);
            snprintf(name, sizeof name, "%s, %s", e ? "thread" : "fiber", big ? "1 GiB" : "64 MiB");
            double t = take_job_run(&j);
            print_row(SUITE_RSS, name, (double)n, t, 1.0, kib);
        }
    if (do_sweep)
        sweep(quick ? (64u << 20) : (512u << 20));
done:
    if (json) {
        fprintf(json, "\n]}\n");
        fclose(json);
    }
    free(block);
    return 0;
}
