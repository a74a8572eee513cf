/*
 * fuzz_schedule.c: a schedule fuzzer for lockstep, checked against an
 * independent model of strict lockstep.  Each input's bytes decide one run:
 * the engine (fiber, thread, buffer), run API or push API (with random
 * chunk sizes and lockstep_fail for a source failure), the window, the item
 * size (8..64 bytes; each item carries its stream position in its first 8
 * bytes and a position-derived pattern in the rest), 0..8 consumers and what
 * each does (count, sum, stop after k items, fail at item k with a code,
 * return a code only after it saw cancellation, nest a small run of its
 * own), and the source's length and failure point (or an endless source
 * when every consumer stops on its own).  The run's return code,
 * report.failed, report.position, the results of every consumer the
 * failure did not touch, and the number of source pulls (the pull bound:
 * last_stop <= pulls <= last_stop + window - 1 for non-buffer engines when
 * nothing fails) are compared with model(); any mismatch aborts with
 * __builtin_trap so that libFuzzer reports it.
 *
 * Built with -DLOCKSTEP_LIBFUZZER and clang -fsanitize=fuzzer,address,undefined
 * this file is a libFuzzer target.  Without it, main() is a replayer and a
 * random driver, so any compiler can run it in `make test`:
 *
 *   fuzz_schedule FILE|DIR...       replay inputs (a directory: every file in it)
 *   fuzz_schedule --random N [SEED] N random inputs from a seeded PRNG (a
 *                                   mismatch prints its input as --hex)
 *   fuzz_schedule --hex HEX...      replay inputs given in hex
 *
 * LOCKSTEP_TEST_CASES, when set and smaller, caps N (as for conformance.c).
 *   fuzz_schedule --print FILE...   describe the runs the inputs decode to
 *
 * An engine the build does not have (the thread engine returns
 * LOCKSTEP_ENOTSUP until it lands) is checked for exactly that, then the
 * case is skipped.
 */
#include "lockstep.h"

#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_CONSUMERS 8
#define MAX_ITEM 64
#define MAX_CHUNK 32
#define MAX_DEPTH 2            /* an outer run, and nested runs inside its consumers */
#define ENDLESS UINT64_MAX     /* source limit meaning "never ends" */
#define ENDLESS_CAP 1000000u   /* an endless source read this far is a bug: stop it */
#define NO_FAIL UINT64_MAX

enum { K_COUNT, K_SUM, K_STOP, K_FAIL, K_SULK, K_NEST, K_KINDS };
/* What a consumer found wrong (cons_state.error_kinds). */
enum { ERR_START = 1, ERR_STALE = 2, ERR_AFTER_NULL = 4, ERR_ITEM = 8, ERR_CANCEL_FLAG = 16 };
static const char *const kind_names[K_KINDS] = {"count", "sum", "stop", "fail", "sulk", "nest"};

/* One consumer's script. */
typedef struct {
    int kind;
    uint64_t k;        /* K_STOP/K_FAIL/K_NEST: after receiving k items */
    int code;          /* K_FAIL: what it returns; K_SULK: what it returns once cancelled */
    uint32_t nest_seed;/* K_NEST: the seed of the nested case */
} cons_spec;

/* One whole run. */
typedef struct {
    lockstep_engine engine;
    int use_push;
    size_t window;     /* 0: the library default */
    size_t item_size;
    size_t n;
    cons_spec cons[MAX_CONSUMERS];
    uint64_t limit;    /* items in the source, or ENDLESS */
    uint64_t fail_at;  /* the source fails when asked for this item, or NO_FAIL */
    int fail_code;
    size_t max_chunk;  /* push API: chunks of 0..max_chunk items */
    uint32_t chunk_seed;
    int depth;
} case_spec;

/* What a consumer observed. */
typedef struct {
    const cons_spec *spec;
    size_t index;
    size_t item_size;
    int depth;
    uint64_t count;
    uint64_t sum;
    uint64_t errors;   /* wrong item, position, index, or a stale pointer */
    unsigned error_kinds; /* ERR_* bits: which checks failed */
    int saw_cancel, saw_end, started, returned;
    int nest_ran, nest_ok;
} cons_state;

/* The expected outcome. */
typedef struct {
    int code;
    long failed;
    uint64_t position;
    uint64_t n_eff;     /* items the source can deliver before it ends or fails */
    uint64_t last_stop; /* largest natural end, when nothing fails */
} outcome;

/* Counted from nested runs too, which may run on consumer threads. */
static _Atomic long cases_run, cases_skipped, mismatches;

/* ------------------------------------------------------------------------
 * Small deterministic helpers.
 * ------------------------------------------------------------------------ */

/* xorshift64*: advances *state and returns the next value; state != 0. */
static uint64_t prng(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Returns a value in [0, bound), 0 when bound is 0. */
static uint64_t prng_below(uint64_t *state, uint64_t bound)
{
    return bound ? prng(state) % bound : 0;
}

/* The byte j of the item at position pos (j >= 8; bytes 0..7 hold pos). */
static unsigned char pattern(uint64_t pos, size_t j)
{
    return (unsigned char)(pos * 131u + j * 7u + (pos >> 8));
}

/* Writes the item at position pos, item_size bytes, into dst. */
static void make_item(unsigned char *dst, uint64_t pos, size_t item_size)
{
    memcpy(dst, &pos, sizeof pos);
    for (size_t j = sizeof pos; j < item_size; j++)
        dst[j] = pattern(pos, j);
}

/* Returns 1 when item holds exactly the item at position pos. */
static int item_ok(const unsigned char *item, uint64_t pos, size_t item_size)
{
    uint64_t got;
    memcpy(&got, item, sizeof got);
    if (got != pos)
        return 0;
    for (size_t j = sizeof got; j < item_size; j++)
        if (item[j] != pattern(pos, j))
            return 0;
    return 1;
}

/* ------------------------------------------------------------------------
 * Decoding a case, from fuzz bytes or from a PRNG.
 * ------------------------------------------------------------------------ */

/* Reads fuzz input front to back; past the end every byte is 0. */
typedef struct {
    const uint8_t *p;
    size_t left;
} reader;

/* Returns the next byte, or 0 when the input is used up. */
static unsigned rd8(reader *r)
{
    if (r->left == 0)
        return 0;
    r->left--;
    return *r->p++;
}

/* Returns the next two bytes, little-endian. */
static unsigned rd16(reader *r)
{
    unsigned lo = rd8(r);
    return lo | (rd8(r) << 8);
}

static const size_t window_table[16] = {1, 1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 64, 100, 0, 2, 1};
static const int code_table[8] = {1, 2, 42, -1, -7, LOCKSTEP_ENOMEM, INT_MAX, INT_MIN};

/* Makes the case valid whatever decided it: endless sources only where the
 * run must end on its own, and k within reach. */
static void normalise(case_spec *c)
{
    if (c->n > MAX_CONSUMERS)
        c->n = MAX_CONSUMERS;
    if (c->item_size < 8)
        c->item_size = 8;
    if (c->item_size > MAX_ITEM)
        c->item_size = MAX_ITEM;
    if (c->max_chunk < 1)
        c->max_chunk = 1;
    if (c->max_chunk > MAX_CHUNK)
        c->max_chunk = MAX_CHUNK;
    for (size_t i = 0; i < c->n; i++) {
        cons_spec *cs = &c->cons[i];
        if (cs->kind == K_NEST && c->depth + 1 >= MAX_DEPTH)
            cs->kind = K_SUM;
        if ((cs->kind == K_FAIL || cs->kind == K_SULK) && cs->code == 0)
            cs->code = 1;
    }
    if (c->fail_at != NO_FAIL && c->fail_code == 0)
        c->fail_code = -1;
    if (c->limit == ENDLESS) {
        int bounded = c->engine != LOCKSTEP_ENGINE_BUFFER;
        for (size_t i = 0; i < c->n; i++)
            if (c->cons[i].kind != K_STOP && c->cons[i].kind != K_FAIL)
                bounded = 0;
        if (!bounded)
            c->limit = 500;
    }
}

/* Decodes fuzz bytes into *c.  Every input decodes to some valid case;
 * missing bytes read as 0.  Layout (u16 little-endian):
 *   engine(bits 0-1, %3) | push(bit 2) | endless(bit 3);  window_table[b % 16];
 *   item_size - 8 (% 57);  consumers (% 9);  u16 source length (% 600);
 *   source-fail flag(bit 0) | code_table index(bits 1-3) [+ u16 fail_at];
 *   max_chunk - 1 (% 32);  u16 chunk seed;
 *   per consumer: kind(bits 0-2, % 6) | code_table index(bits 3-5);
 *                 u16 k (bit 0 set: (k >> 1) % 12, else (k >> 1) % (length + 3));
 *                 u16 nested-case seed. */
static void decode_bytes(case_spec *c, const uint8_t *data, size_t size)
{
    reader r = {data, size};
    memset(c, 0, sizeof *c);
    unsigned b = rd8(&r);
    c->engine = (lockstep_engine)((b & 3) % 3);
    c->use_push = (b >> 2) & 1;
    int endless = (b >> 3) & 1;
    c->window = window_table[rd8(&r) % 16];
    c->item_size = 8 + rd8(&r) % 57;
    c->n = rd8(&r) % (MAX_CONSUMERS + 1);
    c->limit = rd16(&r) % 600;
    if (endless)
        c->limit = ENDLESS;
    b = rd8(&r);
    c->fail_at = NO_FAIL;
    if (b & 1) {
        uint64_t span = c->limit == ENDLESS ? 600 : c->limit + 2; /* limit + 1: never reached */
        c->fail_at = rd16(&r) % span;
        c->fail_code = code_table[(b >> 1) & 7];
        if (c->fail_code > 0)
            c->fail_code = -c->fail_code; /* sources fail with negative codes */
        if (c->fail_code == 0 || c->fail_code == INT_MIN)
            c->fail_code = -3;
    }
    c->max_chunk = 1 + rd8(&r) % MAX_CHUNK;
    c->chunk_seed = rd16(&r);
    uint64_t reach = (c->limit == ENDLESS ? 600 : c->limit) + 3;
    for (size_t i = 0; i < c->n; i++) {
        cons_spec *cs = &c->cons[i];
        b = rd8(&r);
        cs->kind = (int)((b & 7) % K_KINDS);
        unsigned kb = rd16(&r);
        /* Half of the ks are small, so that early stops and ties are common. */
        cs->k = (kb & 1) ? (kb >> 1) % 12 : (kb >> 1) % reach;
        cs->code = code_table[(b >> 3) & 7];
        cs->nest_seed = rd16(&r) | ((uint32_t)i << 16);
    }
    normalise(c);
}

/* Draws a random case from *st; depth > 0 makes it small (nested runs). */
static void random_case(case_spec *c, uint64_t *st, int depth)
{
    memset(c, 0, sizeof *c);
    c->depth = depth;
    c->engine = (lockstep_engine)prng_below(st, 3);
    c->use_push = (int)prng_below(st, 2);
    c->window = window_table[prng_below(st, 16)];
    c->item_size = 8 + (size_t)prng_below(st, 57);
    c->n = (size_t)prng_below(st, depth ? 4 : MAX_CONSUMERS + 1);
    uint64_t max_len = depth ? 40 : 600;
    c->limit = prng_below(st, max_len);
    if (depth == 0 && prng_below(st, 10) == 0)
        c->limit = ENDLESS;
    c->fail_at = NO_FAIL;
    if (prng_below(st, 3) == 0) {
        uint64_t span = c->limit == ENDLESS ? max_len : c->limit + 2;
        c->fail_at = prng_below(st, span);
        c->fail_code = -(int)(1 + prng_below(st, 9));
    }
    c->max_chunk = 1 + (size_t)prng_below(st, MAX_CHUNK);
    c->chunk_seed = (uint32_t)prng(st);
    uint64_t reach = (c->limit == ENDLESS ? max_len : c->limit) + 3;
    for (size_t i = 0; i < c->n; i++) {
        cons_spec *cs = &c->cons[i];
        cs->kind = (int)prng_below(st, K_KINDS);
        cs->k = prng_below(st, 2) ? prng_below(st, 12) : prng_below(st, reach);
        cs->code = code_table[prng_below(st, 8)];
        cs->nest_seed = (uint32_t)prng(st);
    }
    normalise(c);
}

/* Prints c on f, one line, in the form the replayer and reports use. */
static void describe(FILE *f, const case_spec *c)
{
    fprintf(f, "%*scase: engine=%s api=%s window=%zu item_size=%zu limit=", c->depth * 2, "",
            lockstep_engine_name(c->engine), c->use_push ? "push" : "run", c->window,
            c->item_size);
    if (c->limit == ENDLESS)
        fprintf(f, "endless");
    else
        fprintf(f, "%" PRIu64, c->limit);
    if (c->fail_at != NO_FAIL)
        fprintf(f, " source_fails_at=%" PRIu64 "(%d)", c->fail_at, c->fail_code);
    if (c->use_push)
        fprintf(f, " chunks=0..%zu seed=%u", c->max_chunk, (unsigned)c->chunk_seed);
    fprintf(f, " consumers=%zu:", c->n);
    for (size_t i = 0; i < c->n; i++) {
        const cons_spec *cs = &c->cons[i];
        fprintf(f, " [%zu %s", i, kind_names[cs->kind]);
        if (cs->kind == K_STOP || cs->kind == K_FAIL || cs->kind == K_NEST)
            fprintf(f, " k=%" PRIu64, cs->k);
        if (cs->kind == K_FAIL || cs->kind == K_SULK)
            fprintf(f, " code=%d", cs->code);
        fprintf(f, "]");
    }
    fprintf(f, "\n");
}

/* ------------------------------------------------------------------------
 * The model: strict lockstep, computed without running anything.
 * ------------------------------------------------------------------------ */

/* Where consumer cs stops on its own in a stream of n_eff items. */
static uint64_t natural_end(const cons_spec *cs, uint64_t n_eff)
{
    if (cs->kind == K_STOP || cs->kind == K_FAIL)
        return cs->k < n_eff ? cs->k : n_eff;
    return n_eff;
}

/* Returns 1 when cs stops by itself at its natural end, without asking
 * for the item there. */
static int stops_itself(const cons_spec *cs, uint64_t n_eff)
{
    return (cs->kind == K_STOP || cs->kind == K_FAIL) && cs->k <= n_eff;
}

/* The outcome of c under strict lockstep: the earliest failure wins, ties
 * go to the lowest consumer index, and any consumer beats the source; the
 * source's failure counts only if some consumer asks for that item. */
static outcome model(const case_spec *c)
{
    outcome m = {0, LOCKSTEP_FAILED_NONE, 0, 0, 0};
    int source_fails = c->fail_at != NO_FAIL && c->fail_at <= c->limit;
    m.n_eff = source_fails ? c->fail_at : c->limit;
    for (size_t i = 0; i < c->n; i++) {
        const cons_spec *cs = &c->cons[i];
        uint64_t end = natural_end(cs, m.n_eff);
        if (end > m.last_stop)
            m.last_stop = end;
        if (cs->kind == K_FAIL && cs->k <= m.n_eff &&
            (m.failed == LOCKSTEP_FAILED_NONE || cs->k < m.position)) {
            m.failed = (long)i;
            m.position = cs->k;
            m.code = cs->code;
        }
    }
    if (source_fails) {
        int wanted = 0;
        for (size_t i = 0; i < c->n; i++)
            if (!stops_itself(&c->cons[i], m.n_eff))
                wanted = 1;
        if (wanted && (m.failed == LOCKSTEP_FAILED_NONE || m.position > c->fail_at)) {
            m.failed = LOCKSTEP_FAILED_SOURCE;
            m.position = c->fail_at;
            m.code = c->fail_code;
        }
    }
    if (m.failed == LOCKSTEP_FAILED_NONE)
        m.position = 0;
    return m;
}

/* ------------------------------------------------------------------------
 * Running a case.
 * ------------------------------------------------------------------------ */

/* The source: items 0, 1, ... up to limit; fails when asked for fail_at. */
typedef struct {
    const case_spec *c;
    uint64_t next;
    uint64_t pulls;   /* calls that produced an item */
    int overran;      /* an endless source went past ENDLESS_CAP */
} source_state;

/* lockstep_source_fn over a source_state. */
static int source_pull(void *arg, void *item)
{
    source_state *src = arg;
    if (src->next == src->c->fail_at)
        return src->c->fail_code;
    if (src->next >= src->c->limit)
        return 0;
    if (src->next >= ENDLESS_CAP) {
        src->overran = 1;
        return 0;
    }
    make_item(item, src->next++, src->c->item_size);
    src->pulls++;
    return 1;
}

static int run_case(const case_spec *c, int verbose);

/* Runs the nested case of cs from inside a consumer; returns 1 when it
 * matched its own model. */
static int nested_ok(const cons_state *st)
{
    uint64_t seed = ((uint64_t)st->spec->nest_seed << 1) | 1;
    case_spec inner;
    random_case(&inner, &seed, st->depth + 1);
    return run_case(&inner, 1) == 0;
}

/* Every consumer: loops over lockstep_next checking each item, and
 * behaves as its script says.  The previous item is re-checked just
 * before the next call, since it must stay valid until then. */
static int scripted_consumer(lockstep_iter *it, void *arg)
{
    cons_state *st = arg;
    const cons_spec *cs = st->spec;
    const unsigned char *prev = NULL;
    st->started = 1;
    if (lockstep_index(it) != st->index || lockstep_position(it) != 0)
        st->errors++, st->error_kinds |= ERR_START;
    for (;;) {
        if (cs->kind == K_STOP && st->count == cs->k)
            break;
        if (cs->kind == K_FAIL && st->count == cs->k) {
            st->returned = 1;
            return cs->code;
        }
        if (cs->kind == K_NEST && st->count == cs->k && !st->nest_ran) {
            st->nest_ran = 1;
            st->nest_ok = nested_ok(st);
        }
        if (prev != NULL && !item_ok(prev, st->count - 1, st->item_size))
            st->errors++, st->error_kinds |= ERR_STALE;
        const unsigned char *item = lockstep_next(it);
        if (item == NULL) {
            st->saw_cancel = lockstep_cancelled(it);
            st->saw_end = !st->saw_cancel;
            /* NULL is sticky, and the position stays where it was. */
            if (lockstep_next(it) != NULL || lockstep_position(it) != st->count)
                st->errors++, st->error_kinds |= ERR_AFTER_NULL;
            break;
        }
        if (!item_ok(item, st->count, st->item_size) || lockstep_position(it) != st->count + 1)
            st->errors++, st->error_kinds |= ERR_ITEM;
        if (cs->kind == K_COUNT && lockstep_cancelled(it))
            st->errors++, st->error_kinds |= ERR_CANCEL_FLAG;
        st->sum += st->count;
        st->count++;
        prev = item;
    }
    st->returned = 1;
    if (cs->kind == K_SULK && st->saw_cancel)
        return cs->code; /* must be ignored: the run was already cancelled */
    return 0;
}

/* Feeds the source through the push API in random chunks; returns what
 * lockstep_close returns, or the failing call's code.  *bad is set when a
 * push-side call misbehaved. */
static int run_push(const case_spec *c, source_state *src, const lockstep_consumer *cs,
                    const lockstep_options *o, int *bad)
{
    lockstep_stream *s;
    int rc = lockstep_open(&s, c->item_size, cs, c->n, o);
    if (rc < 0)
        return rc;
    uint64_t st = ((uint64_t)c->chunk_seed << 1) | 1;
    unsigned char buf[MAX_CHUNK * MAX_ITEM];
    for (;;) {
        size_t want = (size_t)prng_below(&st, c->max_chunk + 1), got = 0;
        int item_rc = 1;
        while (got < want && (item_rc = source_pull(src, buf + got * c->item_size)) == 1)
            got++;
        long live = lockstep_push(s, buf, got);
        /* live only falls: threaded consumers may detach after push returns. */
        if (live < 0 || lockstep_live(s) > live) {
            *bad = 1;
            break;
        }
        if (live == 0)
            break;
        if (item_rc != 1) {
            if (item_rc != 0 && lockstep_fail(s, item_rc) != 0)
                *bad = 1;
            break;
        }
    }
    return lockstep_close(s);
}

/* The window an engine uses when the options say 0. */
static size_t default_window(lockstep_engine e)
{
    return e == LOCKSTEP_ENGINE_THREAD ? LOCKSTEP_DEFAULT_THREAD_WINDOW : LOCKSTEP_DEFAULT_WINDOW;
}

/* Runs c and compares it with model(c).  Returns 0 on a match, 1 on a
 * mismatch (described on stderr when verbose). */
static int run_case(const case_spec *c, int verbose)
{
    cons_state st[MAX_CONSUMERS];
    lockstep_consumer cs[MAX_CONSUMERS];
    memset(st, 0, sizeof st);
    for (size_t i = 0; i < c->n; i++) {
        st[i].spec = &c->cons[i];
        st[i].index = i;
        st[i].item_size = c->item_size;
        st[i].depth = c->depth;
        cs[i].fn = scripted_consumer;
        cs[i].arg = &st[i];
    }
    source_state src = {c, 0, 0, 0};
    lockstep_report rep;
    memset(&rep, 0xa5, sizeof rep);
    lockstep_options o;
    lockstep_options_init(&o);
    o.engine = c->engine;
    o.window = c->window;
    o.report = &rep;
    int push_bad = 0;
    int rc = c->use_push ? run_push(c, &src, cs, &o, &push_bad)
                         : lockstep_run(source_pull, &src, c->item_size, cs, c->n, &o);
    char why[160] = "";
#define MISMATCH(...) (snprintf(why, sizeof why, __VA_ARGS__), (void)0)

    if (!lockstep_engine_available(c->engine)) {
        if (rc != LOCKSTEP_ENOTSUP || rep.failed != LOCKSTEP_FAILED_LIBRARY || st[0].started)
            MISMATCH("unavailable engine: rc %d, failed %ld", rc, rep.failed);
        else
            cases_skipped++;
        goto done;
    }
    outcome m = model(c);
    size_t w = c->window ? c->window : default_window(c->engine);
    int is_buffer = c->engine == LOCKSTEP_ENGINE_BUFFER;
    uint64_t read = c->use_push ? rep.items_read : src.pulls;
    if (push_bad)
        MISMATCH("push API: push/live/fail misbehaved");
    else if (src.overran)
        MISMATCH("endless source read past %u items", ENDLESS_CAP);
    else if (rc != m.code)
        MISMATCH("return code %d, model %d", rc, m.code);
    else if (rep.code != rc)
        MISMATCH("report.code %d, returned %d", rep.code, rc);
    else if (rep.failed != m.failed)
        MISMATCH("report.failed %ld, model %ld", rep.failed, m.failed);
    else if (m.failed != LOCKSTEP_FAILED_NONE && rep.position != m.position)
        MISMATCH("report.position %" PRIu64 ", model %" PRIu64, rep.position, m.position);
    else if (rep.window != w || rep.engine != c->engine)
        MISMATCH("report.window %zu / engine %d", rep.window, (int)rep.engine);
    else if (!c->use_push && rep.items_read != src.pulls)
        MISMATCH("report.items_read %" PRIu64 ", source pulls %" PRIu64, rep.items_read,
                 src.pulls);
    else if (c->use_push && rep.items_read > src.pulls)
        MISMATCH("report.items_read %" PRIu64 " > items pushed %" PRIu64, rep.items_read,
                 src.pulls);
    else if (!is_buffer && m.failed == LOCKSTEP_FAILED_NONE &&
             (read < m.last_stop || read > m.last_stop + w - 1))
        MISMATCH("pull bound: read %" PRIu64 ", last stop %" PRIu64 ", window %zu", read,
                 m.last_stop, w);
    else if (!is_buffer && m.failed == LOCKSTEP_FAILED_SOURCE && read > m.position)
        MISMATCH("read %" PRIu64 " past the source failure at %" PRIu64, read, m.position);
    if (why[0])
        goto done;

    for (size_t i = 0; i < c->n && !why[0]; i++) {
        const cons_spec *sp = &c->cons[i];
        const cons_state *s = &st[i];
        uint64_t end = natural_end(sp, m.n_eff);
        int untouched = m.failed == LOCKSTEP_FAILED_NONE || end < m.position ||
                        (end == m.position && stops_itself(sp, m.n_eff));
        if (!s->started || !s->returned)
            MISMATCH("consumer %zu started %d returned %d", i, s->started, s->returned);
        else if (s->errors)
            MISMATCH("consumer %zu saw %" PRIu64 " wrong items/positions (kinds 0x%x: 1 start, "
                     "2 stale pointer, 4 after NULL, 8 item, 16 cancelled flag)",
                     i, s->errors, s->error_kinds);
        else if (s->nest_ran && !s->nest_ok)
            MISMATCH("consumer %zu: its nested run did not match its model", i);
        else if ((long)i == m.failed) {
            if (s->count != sp->k || s->saw_cancel)
                MISMATCH("failing consumer %zu: count %" PRIu64 " cancel %d", i, s->count,
                         s->saw_cancel);
        } else if (untouched) {
            uint64_t sum = end * (end ? end - 1 : 0) / 2;
            int asks_past = !stops_itself(sp, m.n_eff);
            if (s->count != end || s->sum != sum || s->saw_cancel || s->saw_end != asks_past)
                MISMATCH("untouched consumer %zu: count %" PRIu64 " (model %" PRIu64
                         ") cancel %d end %d",
                         i, s->count, end, s->saw_cancel, s->saw_end);
            else if (sp->kind == K_NEST && sp->k <= end && !s->nest_ran)
                MISMATCH("consumer %zu never ran its nested run", i);
        } else {
            /* Cancelled: at least every item before the failure; past it, up
             * to window - 1 more, except on the buffer engine. */
            if (s->count < m.position || s->count > end)
                MISMATCH("cancelled consumer %zu: count %" PRIu64 ", failure at %" PRIu64, i,
                         s->count, m.position);
            else if (!s->saw_cancel && s->count != end)
                MISMATCH("cancelled consumer %zu neither saw cancel nor reached its end", i);
            else if (!is_buffer && s->count > m.position + w)
                MISMATCH("cancelled consumer %zu got %" PRIu64 " items, failure at %" PRIu64, i,
                         s->count, m.position);
        }
    }
done:
    cases_run++;
    if (!why[0])
        return 0;
    mismatches++;
    if (verbose) {
        fprintf(stderr, "%*sMISMATCH: %s\n", c->depth * 2, "", why);
        describe(stderr, c);
        outcome e = model(c);
        fprintf(stderr, "%*s  got rc=%d failed=%ld position=%" PRIu64 " items_read=%" PRIu64
                        " pulls=%" PRIu64 "; model rc=%d failed=%ld position=%" PRIu64
                        " last_stop=%" PRIu64 "\n",
                c->depth * 2, "", rc, rep.failed, rep.position, rep.items_read, src.pulls,
                e.code, e.failed, e.position, e.last_stop);
        for (size_t i = 0; i < c->n; i++)
            fprintf(stderr, "%*s  consumer %zu: count %" PRIu64 " cancel %d end %d errors %" PRIu64
                            " nest %d/%d\n",
                    c->depth * 2, "", i, st[i].count, st[i].saw_cancel, st[i].saw_end,
                    st[i].errors, st[i].nest_ran, st[i].nest_ok);
    }
    return 1;
#undef MISMATCH
}

/* ------------------------------------------------------------------------
 * Entry points.
 * ------------------------------------------------------------------------ */

#ifdef LOCKSTEP_LIBFUZZER

/* libFuzzer's entry: one input, one run; a mismatch traps. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    case_spec c;
    decode_bytes(&c, data, size);
    if (run_case(&c, 1) != 0)
        __builtin_trap();
    return 0;
}

#else

/* Replays one file: decodes it, prints it when print_only, else runs it.
 * Returns 0, 1 on a mismatch, 2 when the file cannot be read. */
static int replay_file(const char *path, int print_only)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 2;
    }
    uint8_t buf[4096];
    size_t size = fread(buf, 1, sizeof buf, f);
    fclose(f);
    case_spec c;
    decode_bytes(&c, buf, size);
    if (print_only) {
        printf("%s: ", path);
        describe(stdout, &c);
        return 0;
    }
    int rc = run_case(&c, 1);
    if (rc != 0)
        fprintf(stderr, "  (input: %s)\n", path);
    return rc;
}

/* Replays path, or every regular file in it when it is a directory. */
static int replay_path(const char *path, int print_only)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        perror(path);
        return 2;
    }
    if (!S_ISDIR(sb.st_mode))
        return replay_file(path, print_only);
    DIR *d = opendir(path);
    if (d == NULL) {
        perror(path);
        return 2;
    }
    int worst = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        int rc = replay_file(full, print_only);
        if (rc > worst)
            worst = rc;
    }
    closedir(d);
    return worst;
}

/* Replayer and random driver; see the header comment for usage. */
int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--random") == 0) {
        long n = atol(argv[2]);
        const char *env = getenv("LOCKSTEP_TEST_CASES"); /* slow tools (valgrind) lower it */
        if (env != NULL && atol(env) > 0 && atol(env) < n)
            n = atol(env);
        uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 0) : 0x5eed;
        uint64_t st = seed * 2 + 1;
        for (long i = 0; i < n; i++) {
            /* Random bytes through the same decoder the fuzzer uses, and
             * random cases straight from the PRNG, in turn. */
            uint8_t bytes[64];
            for (size_t j = 0; j < sizeof bytes; j++)
                bytes[j] = (uint8_t)prng(&st);
            size_t size = 8 + (size_t)prng_below(&st, sizeof bytes - 8 + 1);
            case_spec c;
            decode_bytes(&c, bytes, size);
            if (run_case(&c, 1) != 0) {
                fprintf(stderr, "  (input: --hex ");
                for (size_t j = 0; j < size; j++)
                    fprintf(stderr, "%02x", bytes[j]);
                fprintf(stderr, ")\n");
            }
        }
        printf("fuzz_schedule --random %ld (seed %" PRIu64 "): %ld cases (nested included), "
               "%ld skipped (engine unavailable), %ld mismatches\n",
               n, seed, cases_run, cases_skipped, mismatches);
        return mismatches == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
    }
    if (argc >= 3 && strcmp(argv[1], "--hex") == 0) {
        int worst = 0;
        for (int a = 2; a < argc; a++) {
            uint8_t bytes[4096];
            size_t size = 0;
            for (const char *h = argv[a]; h[0] && h[1] && size < sizeof bytes; h += 2) {
                unsigned v;
                if (sscanf(h, "%2x", &v) != 1)
                    break;
                bytes[size++] = (uint8_t)v;
            }
            case_spec c;
            decode_bytes(&c, bytes, size);
            describe(stdout, &c);
            worst |= run_case(&c, 1);
        }
        return worst == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
    }
    int print_only = argc >= 2 && strcmp(argv[1], "--print") == 0;
    if (argc < 2 + print_only) {
        fprintf(stderr, "usage: %s FILE|DIR... | --random N [SEED] | --print FILE...\n",
                argv[0]);
        return 2;
    }
    int worst = 0;
    for (int i = 1 + print_only; i < argc; i++) {
        int rc = replay_path(argv[i], print_only);
        if (rc > worst)
            worst = rc;
    }
    if (!print_only)
        printf("fuzz_schedule: %ld cases (nested included), %ld skipped (engine unavailable), "
               "%ld mismatches\n",
               cases_run, cases_skipped, mismatches);
    return worst == 0 && mismatches == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
