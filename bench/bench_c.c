/*
 * bench_c.c: the C benchmark.  N int64_t items 0..N-1, two consumers (sum
 * and max), measured as ns per item, ratio to the buffer engine, and peak
 * RSS, for: the hand-fused single loop (the physical limit), the buffer
 * engine, the fiber engine at window 1 and at the default window, the
 * thread engine likewise, and "heavy" consumers that spend about 1 us of CPU
 * per item.  Every row runs in a forked child, so its peak RSS is its own;
 * each row warms up once and reports the median and spread of several runs.
 *
 *   bench_c [--n N] [--repeat R] [--quick] [--demo] [--sweep] [--json PATH]
 *           [--variant NAME] [--only ENGINE]
 */
#include <lockstep.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPEAT 15

static uint64_t n_items = 10000000;
static int repeat = 5;
static const char *variant = "asm";
static FILE *json;
static int json_rows;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- The work ----------------------------------------------------------- */

typedef struct {
    int64_t next, limit;
} counter;

static int counter_pull(void *arg, void *item)
{
    counter *c = arg;
    if (c->next >= c->limit)
        return 0;
    *(int64_t *)item = c->next++;
    return 1;
}

static int sum_consumer(lockstep_iter *it, void *arg)
{
    int64_t s = 0;
    const int64_t *x;
    while ((x = lockstep_next(it)) != NULL)
        s += *x;
    *(int64_t *)arg = s;
    return 0;
}

static int max_consumer(lockstep_iter *it, void *arg)
{
    int64_t m = INT64_MIN;
    const int64_t *x;
    while ((x = lockstep_next(it)) != NULL)
        if (*x > m)
            m = *x;
    *(int64_t *)arg = m;
    return 0;
}

/* About 1 us of CPU per item on this class of machine: a dependent chain
 * of multiply-adds the compiler cannot remove.  heavy_rounds is set by
 * calibrate_heavy(). */
static long heavy_rounds = 300;

static uint64_t heavy_work(uint64_t x)
{
    for (long r = 0; r < heavy_rounds; r++)
        x = x * 6364136223846793005u + 1442695040888963407u;
    return x;
}

static int heavy_consumer(lockstep_iter *it, void *arg)
{
    uint64_t h = 0;
    const int64_t *x;
    while ((x = lockstep_next(it)) != NULL)
        h ^= heavy_work((uint64_t)*x);
    *(uint64_t *)arg = h;
    return 0;
}

static void calibrate_heavy(void)
{
    volatile uint64_t sink = 0;
    double t0 = now();
    for (int i = 0; i < 20000; i++)
        sink ^= heavy_work((uint64_t)i);
    double per = (now() - t0) / 20000;
    heavy_rounds = (long)(heavy_rounds * 1e-6 / per);
    if (heavy_rounds < 1)
        heavy_rounds = 1;
    (void)sink;
}

/* One measured run; returns seconds.  Checks the answers. */
typedef struct {
    const char *name;
    int kind; /* 0 fused, 1 lockstep, 2 heavy lockstep */
    lockstep_engine engine;
    size_t window;
    uint64_t n;
} row;

static int (*volatile pull_ptr)(void *, void *) = counter_pull;

static double run_once(const row *r)
{
    counter c = {0, (int64_t)r->n};
    int64_t s = 0, m = INT64_MIN;
    double t0 = now();
    if (r->kind == 0) {
        int64_t x;
        while (pull_ptr(&c, &x) == 1) {
            s += x;
            if (x > m)
                m = x;
        }
    } else {
        lockstep_options o;
        lockstep_options_init(&o);
        o.engine = r->engine;
        o.window = r->window;
        uint64_t h0 = 0, h1 = 0;
        lockstep_consumer light[2] = {{sum_consumer, &s}, {max_consumer, &m}};
        lockstep_consumer heavy[2] = {{heavy_consumer, &h0}, {heavy_consumer, &h1}};
        int rc = lockstep_run(counter_pull, &c, sizeof(int64_t), r->kind == 1 ? light : heavy, 2,
                              &o);
        if (rc != 0) {
            fprintf(stderr, "%s: lockstep_run: %s\n", r->name, lockstep_strerror(rc));
            exit(1);
        }
        if (r->kind == 2) {
            if (h0 != h1) {
                fprintf(stderr, "%s: heavy consumers disagree\n", r->name);
                exit(1);
            }
            return now() - t0;
        }
    }
    double t = now() - t0;
    int64_t n = (int64_t)r->n;
    if (s != n * (n - 1) / 2 || m != n - 1) {
        fprintf(stderr, "%s: wrong answer\n", r->name);
        exit(1);
    }
    return t;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double median, min, max;
    long peak_kib;
} measurement;

/* Runs the row in a child: one warm-up, then `repeat` timed runs. */
static measurement measure(const row *r)
{
    measurement out = {0, 0, 0, 0};
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(1);
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        double t[MAX_REPEAT];
        run_once(r);
        for (int i = 0; i < repeat; i++)
            t[i] = run_once(r);
        ssize_t w = write(fds[1], t, sizeof(double) * (size_t)repeat);
        _exit(w == (ssize_t)(sizeof(double) * (size_t)repeat) ? 0 : 1);
    }
    close(fds[1]);
    double t[MAX_REPEAT];
    size_t got = 0;
    while (got < sizeof(double) * (size_t)repeat) {
        ssize_t k = read(fds[0], (char *)t + got, sizeof(double) * (size_t)repeat - got);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fds[0]);
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        got != sizeof(double) * (size_t)repeat) {
        fprintf(stderr, "row %s failed\n", r->name);
        exit(1);
    }
    qsort(t, (size_t)repeat, sizeof(double), cmp_double);
    out.median = t[repeat / 2];
    out.min = t[0];
    out.max = t[repeat - 1];
    out.peak_kib = ru.ru_maxrss;
    return out;
}

/* Starts the JSON document: which machine, compiler and build measured. */
static void write_machine(FILE *out)
{
    char cpu[128] = "unknown";
    FILE *info = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (info != NULL && fgets(line, sizeof line, info) != NULL) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
            snprintf(cpu, sizeof cpu, "%s", colon + 2);
            cpu[strcspn(cpu, "\n\"")] = '\0';
            break;
        }
    }
    if (info != NULL)
        fclose(info);
    char date[32];
    time_t t = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    fprintf(out,
            "{\"machine\": {\"cpu\": \"%s\", \"cores\": %ld, \"compiler\": \"%s\", "
            "\"lockstep\": \"%s\", \"date\": \"%s\"},\n \"variant\": \"%s\", \"rows\": [",
            cpu, sysconf(_SC_NPROCESSORS_ONLN), __VERSION__, lockstep_version_string(), date, variant);
}

static void json_row(const char *suite, const row *r, const measurement *m, double ratio)
{
    if (json == NULL)
        return;
    fprintf(json,
            "%s\n    {\"suite\": \"%s\", \"name\": \"%s\", \"variant\": \"%s\", \"n\": %" PRIu64
            ", \"window\": %zu, \"median_s\": %.9f, \"min_s\": %.9f, \"max_s\": %.9f, "
            "\"ns_per_item\": %.3f, \"ratio\": %.4f, \"peak_bytes\": %ld}",
            json_rows++ ? "," : "", suite, r->name, variant, r->n, r->window, m->median, m->min,
            m->max, m->median * 1e9 / (double)r->n, ratio, m->peak_kib * 1024L);
}

/* Measures rows[0..count) and prints them as a table, with ratios to the
 * row named "buffer engine" (or to the first row). */
static void run_table(const char *suite, const row *rows, size_t count)
{
    measurement ms[64];
    double base = 0; /* seconds per item of the reference row */
    if (count > sizeof ms / sizeof ms[0]) {
        fprintf(stderr, "run_table: too many rows\n");
        exit(1);
    }
    for (size_t i = 0; i < count; i++) {
        if (!lockstep_engine_available(rows[i].engine) && rows[i].kind != 0) {
            ms[i].median = -1;
            continue;
        }
        ms[i] = measure(&rows[i]);
        if (strstr(rows[i].name, "buffer") != NULL || (base == 0 && i == 0))
            base = ms[i].median / (double)rows[i].n;
    }
    printf("\n%s (N = %" PRIu64 ", %d runs each, median [min-max])\n", suite, rows[0].n, repeat);
    printf("| %-28s | %-22s | %-8s | %-10s |\n", "approach", "ns/item", "vs buffer", "peak RSS");
    printf("|------------------------------|------------------------|----------|------------|\n");
    for (size_t i = 0; i < count; i++) {
        if (ms[i].median < 0) {
            printf("| %-28s | %-22s | %-8s | %-10s |\n", rows[i].name, "not available", "-", "-");
            continue;
        }
        double per = 1e9 / (double)rows[i].n;
        char cell[64];
        snprintf(cell, sizeof cell, "%.2f [%.2f-%.2f]", ms[i].median * per, ms[i].min * per,
                 ms[i].max * per);
        double ratio = base > 0 ? ms[i].median / (double)rows[i].n / base : 0;
        printf("| %-28s | %-22s | %7.2fx | %6.1f MiB |\n", rows[i].name, cell, ratio,
               (double)ms[i].peak_kib / 1024.0);
        json_row(suite, &rows[i], &ms[i], ratio);
    }
}

static void sweep(void)
{
    row rows[2 * 17];
    char names[2 * 17][48];
    size_t count = 0;
    for (int e = 0; e < 2; e++) {
        lockstep_engine engine = e == 0 ? LOCKSTEP_ENGINE_FIBER : LOCKSTEP_ENGINE_THREAD;
        for (size_t w = 1; w <= 65536; w *= 2) {
            snprintf(names[count], sizeof names[count], "%s window %zu", lockstep_engine_name(engine),
                     w);
            /* A tenth of N keeps the sweep within a minute; the thread
             * engine's small windows pay a wake-up per item, so they get a
             * hundredth. */
            uint64_t n = engine == LOCKSTEP_ENGINE_THREAD && w < 64 ? n_items / 100 : n_items / 10;
            rows[count] = (row){names[count], 1, engine, w, n};
            count++;
        }
    }
    int saved = repeat;
    repeat = 3;
    run_table("window sweep (ratio: to fiber window 1)", rows, count);
    repeat = saved;
}

int main(int argc, char **argv)
{
    int demo = 0, do_sweep = 0;
    const char *json_path = NULL, *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--n") == 0 && i + 1 < argc)
            n_items = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc)
            repeat = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0) {
            n_items = 1000000;
            repeat = 3;
        } else if (strcmp(argv[i], "--demo") == 0) {
            demo = 1;
            n_items = 10000000;
            repeat = 3;
        } else if (strcmp(argv[i], "--sweep") == 0)
            do_sweep = 1;
        else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            json_path = argv[++i];
        else if (strcmp(argv[i], "--variant") == 0 && i + 1 < argc)
            variant = argv[++i];
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--n N] [--repeat R] [--quick] [--demo] [--sweep] "
                            "[--json PATH] [--variant NAME] [--only fiber]\n", argv[0]);
            return 2;
        }
    }
    if (repeat < 1 || repeat > MAX_REPEAT || n_items < 2) {
        fprintf(stderr, "bad --repeat or --n\n");
        return 2;
    }
    if (json_path != NULL && (json = fopen(json_path, "w")) == NULL) {
        fprintf(stderr, "%s: %s\n", json_path, strerror(errno));
        return 1;
    }
    if (json)
        write_machine(json);

    uint64_t n = n_items;
    if (demo) {
        row rows[] = {
            {"buffer engine (list first)", 1, LOCKSTEP_ENGINE_BUFFER, 0, n},
            {"fiber, window 1", 1, LOCKSTEP_ENGINE_FIBER, 1, n},
            {"fiber, default window", 1, LOCKSTEP_ENGINE_FIBER, 0, n},
        };
        run_table("sum and max in C", rows, 3);
    } else if (only != NULL && strcmp(only, "fiber") == 0) {
        char w1[64], wd[64];
        snprintf(w1, sizeof w1, "fiber (%s), window 1", variant);
        snprintf(wd, sizeof wd, "fiber (%s), default window", variant);
        row rows[] = {
            {"buffer engine", 1, LOCKSTEP_ENGINE_BUFFER, 0, n},
            {w1, 1, LOCKSTEP_ENGINE_FIBER, 1, n},
            {wd, 1, LOCKSTEP_ENGINE_FIBER, 0, n},
        };
        run_table("C engines", rows, 3);
    } else {
        row rows[] = {
            {"hand-fused loop (limit)", 0, LOCKSTEP_ENGINE_FIBER, 0, n},
            {"buffer engine", 1, LOCKSTEP_ENGINE_BUFFER, 0, n},
            {"fiber, window 1", 1, LOCKSTEP_ENGINE_FIBER, 1, n},
            {"fiber, default window", 1, LOCKSTEP_ENGINE_FIBER, 0, n},
            {"thread, window 1", 1, LOCKSTEP_ENGINE_THREAD, 1, n / 10},
            {"thread, default window", 1, LOCKSTEP_ENGINE_THREAD, 0, n},
        };
        run_table("C engines", rows, sizeof rows / sizeof rows[0]);
        calibrate_heavy();
        uint64_t hn = n / 50 < 200000 ? n / 50 : 200000;
        row heavy[] = {
            {"heavy: buffer engine", 2, LOCKSTEP_ENGINE_BUFFER, 0, hn},
            {"heavy: fiber", 2, LOCKSTEP_ENGINE_FIBER, 0, hn},
            {"heavy: thread", 2, LOCKSTEP_ENGINE_THREAD, 0, hn},
        };
        run_table("heavy consumers (~1 us per item each)", heavy, 3);
        if (do_sweep)
            sweep();
    }
    if (json) {
        fprintf(json, "\n]}\n");
        fclose(json);
    }
    return 0;
}
