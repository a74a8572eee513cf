/*
 * core.c: lockstep's one scheduler.  It validates input, owns the window and
 * the stream positions, counts live consumers, and decides the outcome of a
 * run: the failure earliest in the stream wins, ties go to the lowest
 * consumer index and then to the source.  lockstep_run is a thin pull loop
 * over the push API.  Engines (fiber, thread, buffer, and the Python
 * binding's greenlet engine) plug in through lockstep__engine_ops; the
 * cooperative ones reuse lockstep__coop_* below.  Also here: the error
 * table's functions and allocation with fault injection for tests.
 */
#include "internal.h"

#include <stdatomic.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Errors, version, options.
 * ------------------------------------------------------------------------ */

/* Describes code; never returns NULL. */
const char *lockstep_strerror(int code)
{
    switch (code) {
#define LOCKSTEP__ERR_TEXT(name, value, text) case LOCKSTEP_##name: return text;
        LOCKSTEP_ERRNO_MAP(LOCKSTEP__ERR_TEXT)
#undef LOCKSTEP__ERR_TEXT
    case 0:
        return "success";
    default:
        return "unknown error";
    }
}

/* Returns "LOCKSTEP_EINVAL" and so on, or NULL when code is not ours. */
const char *lockstep_err_name(int code)
{
    switch (code) {
#define LOCKSTEP__ERR_NAME(name, value, text) case LOCKSTEP_##name: return "LOCKSTEP_" #name;
        LOCKSTEP_ERRNO_MAP(LOCKSTEP__ERR_NAME)
#undef LOCKSTEP__ERR_NAME
    default:
        return NULL;
    }
}

unsigned lockstep_version(void) { return LOCKSTEP_VERSION_HEX; }

#define LOCKSTEP__STR2(x) #x
#define LOCKSTEP__STR(x) LOCKSTEP__STR2(x)
const char *lockstep_version_string(void)
{
    return LOCKSTEP__STR(LOCKSTEP_VERSION_MAJOR) "." LOCKSTEP__STR(LOCKSTEP_VERSION_MINOR) "."
        LOCKSTEP__STR(LOCKSTEP_VERSION_PATCH);
}

/* Sets every field to its default; NULL is ignored. */
void lockstep_options_init(lockstep_options *options)
{
    if (options == NULL)
        return;
    memset(options, 0, sizeof *options);
    options->engine = LOCKSTEP_ENGINE_FIBER;
}

static const lockstep__engine_ops *engine_ops(lockstep_engine engine)
{
    switch (engine) {
    case LOCKSTEP_ENGINE_FIBER: return &lockstep__engine_fiber;
    case LOCKSTEP_ENGINE_THREAD: return &lockstep__engine_thread;
    case LOCKSTEP_ENGINE_BUFFER: return &lockstep__engine_buffer;
    default: return NULL;
    }
}

const char *lockstep_engine_name(lockstep_engine engine)
{
    const lockstep__engine_ops *ops = engine_ops(engine);
    return ops ? ops->name : NULL;
}

/* An engine is available when this build gave it an open function. */
int lockstep_engine_available(lockstep_engine engine)
{
    const lockstep__engine_ops *ops = engine_ops(engine);
    return ops != NULL && ops->open != NULL;
}

/* ------------------------------------------------------------------------
 * Allocation with fault injection.  The hook is compiled into release
 * builds, as SQLite's is: one relaxed load per acquisition is cheap, and it
 * lets the tests prove that every failure path frees what it took.
 * ------------------------------------------------------------------------ */

static _Atomic long fault_countdown[LOCKSTEP__FAULT_KINDS];
static _Atomic long fault_seen[LOCKSTEP__FAULT_KINDS];

/* Counts one acquisition of kind; returns 1 when it is the armed one. */
int lockstep__fault(int kind)
{
    if (NEVER(kind < 0 || kind >= LOCKSTEP__FAULT_KINDS))
        return 0;
    atomic_fetch_add_explicit(&fault_seen[kind], 1, memory_order_relaxed);
    long n = atomic_load_explicit(&fault_countdown[kind], memory_order_relaxed);
    while (n > 0) {
        if (atomic_compare_exchange_weak_explicit(&fault_countdown[kind], &n, n - 1,
                                                  memory_order_relaxed, memory_order_relaxed))
            return n == 1;
    }
    return 0;
}

/* Arms the nth next acquisition of kind to fail (0 disarms) and returns
 * how many acquisitions of kind were counted since the previous call. */
long lockstep__fault_arm(int kind, long nth)
{
    if (kind < 0 || kind >= LOCKSTEP__FAULT_KINDS)
        return LOCKSTEP_EINVAL;
    atomic_store(&fault_countdown[kind], nth > 0 ? nth : 0);
    return atomic_exchange(&fault_seen[kind], 0);
}

void *lockstep__malloc(size_t size)
{
    return lockstep__fault(LOCKSTEP__FAULT_ALLOC) ? NULL : malloc(size ? size : 1);
}

void *lockstep__calloc(size_t count, size_t size)
{
    return lockstep__fault(LOCKSTEP__FAULT_ALLOC) ? NULL : calloc(count ? count : 1, size ? size : 1);
}

void *lockstep__realloc(void *p, size_t size)
{
    return lockstep__fault(LOCKSTEP__FAULT_ALLOC) ? NULL : realloc(p, size ? size : 1);
}

void lockstep__free(void *p) { free(p); }

/* ------------------------------------------------------------------------
 * Outcome bookkeeping.
 * ------------------------------------------------------------------------ */

/* Keeps the failure that strict lockstep would meet first: the smallest
 * position, then the smallest rank (consumers by index, then the source). */
void lockstep__record_failure(lockstep_stream *s, uint64_t pos, size_t rank, int code)
{
    if (s->failed && (pos > s->fail_pos || (pos == s->fail_pos && rank >= s->fail_rank)))
        return;
    s->fail_pos = pos;
    s->fail_rank = rank;
    s->fail_code = code;
    atomic_store_explicit(&s->failed, 1, memory_order_release); /* publishes the fields above */
    atomic_store_explicit(&s->unusual, 1, memory_order_relaxed);
}

/* Records that it's consumer returned rc.  A code returned after the
 * consumer saw its run cancelled is ignored: the failure that cancelled it
 * already decides the outcome. */
void lockstep__consumer_finished(lockstep_iter *it, int rc)
{
    lockstep_stream *s = it->stream;
    it->code = rc;
    it->done = 1;
    if (!it->detached)
        lockstep__detach_mark(it);
    /* Ranked where it left the live set: as if it had returned there, so
     * the outcome does not depend on how long it ran after detaching.  A
     * detached iterator stays parked at that position, with finished as it
     * was then (see lockstep_iter). */
    if (rc != 0 && !it->cancelled)
        lockstep__record_failure(s, lockstep__iter_pos(it),
                                 it->finished ? LOCKSTEP__RANK_AFTER_END + it->index : it->index,
                                 rc);
}

/* See internal.h. */
void lockstep__detach_mark(lockstep_iter *it)
{
    lockstep_stream *s = it->stream;
    it->detached = 1;
    lockstep__iter_park(it, lockstep__iter_pos(it));
    s->live--;
}

/* See internal.h.  Engines that run one consumer at a time need no lock:
 * only the running consumer may detach, and nobody else reads its fields
 * until it passes control on. */
int lockstep__detach(lockstep_iter *it)
{
    if (NEVER(it == NULL))
        return LOCKSTEP_EINVAL;
    if (it->stream->ops->detach != NULL)
        return it->stream->ops->detach(it);
    if (!lockstep__iter_is_current(it))
        return LOCKSTEP_EPERM;
    if (!it->detached)
        lockstep__detach_mark(it);
    return 0;
}

/* The body of every cooperative consumer context. */
void lockstep__consumer_main(lockstep_iter *it)
{
    int rc = it->consumer.fn(it, it->consumer.arg);
    lockstep__consumer_finished(it, rc);
}

/* ------------------------------------------------------------------------
 * The consumer side.
 * ------------------------------------------------------------------------ */

/* A stable address for iterators that have no range. */
const unsigned char lockstep__empty_range[1];

/* The real function behind lockstep.h's lockstep_next macro, for callers
 * that take its address or define LOCKSTEP_NO_INLINE. */
const void *(lockstep_next)(lockstep_iter *it)
{
    return lockstep__next_inline(it);
}

/* Everything but the fast path: the engine decides. */
const void *lockstep__next_slow(lockstep_iter *it)
{
    if (NEVER(it == NULL))
        return NULL;
    return it->stream->ops->next_slow(it);
}

/* One call of the slow path at most: the rest of the range the consumer
 * holds, or the next item and the range after it.  Both are contiguous in
 * the window (or the thread engine's segment), and the engine keeps them
 * until the consumer's next call. */
const void *lockstep_take(lockstep_iter *it, size_t max, size_t *count)
{
    if (count != NULL)
        *count = 0;
    if (NEVER(it == NULL || count == NULL) || max == 0)
        return NULL;
    const unsigned char *first = it->head.cur;
    if (first < it->head.end)
        it->head.cur += it->head.item_size;
    else if ((first = lockstep__next_slow(it)) == NULL)
        return NULL;
    /* The range left after the first item.  Items are usually bytes: no
     * division for them. */
    size_t size = it->head.item_size;
    size_t left = (size_t)(it->head.end - it->head.cur);
    if (size != 1)
        left /= size;
    size_t more = max - 1 < left ? max - 1 : left;
    it->head.cur += more * size;
    *count = more + 1;
    return first;
}

/* lockstep_take, then a copy. */
size_t lockstep_read(lockstep_iter *it, void *buf, size_t max)
{
    size_t count;
    if (NEVER(buf == NULL))
        return 0;
    const void *items = lockstep_take(it, max, &count);
    if (items != NULL)
        memcpy(buf, items, count * it->head.item_size);
    return count;
}

int lockstep_cancelled(const lockstep_iter *it) { return it != NULL && it->cancelled; }

uint64_t lockstep_position(const lockstep_iter *it) { return it ? lockstep__iter_pos(it) : 0; }

size_t lockstep_index(const lockstep_iter *it) { return it ? it->index : 0; }

/* ------------------------------------------------------------------------
 * Cooperative engines (fiber, greenlet): shared open, finish and destroy.
 * Each engine runs rounds itself (lockstep__round_*), handing control from
 * consumer to consumer.
 * ------------------------------------------------------------------------ */

/* Allocates the window and contexts, then starts every consumer so that it
 * runs up to its first lockstep_next.  Frees everything on failure. */
int lockstep__coop_open(lockstep_stream *s)
{
    int rc = LOCKSTEP_ENOMEM;
    size_t created = 0;
    s->cap = s->window;
    s->win = lockstep__malloc(s->cap * s->item_size);
    s->order = lockstep__malloc(s->n * sizeof *s->order);
    if (s->win == NULL || s->order == NULL)
        goto fail;
    for (; created < s->n; created++) {
        rc = s->ops->coop_create(s, &s->iters[created]);
        if (rc < 0)
            goto fail;
        s->iters[created].started = 1;
        s->order[created] = created;
    }
    s->n_order = s->n;
    /* Once consumers have started, a failed round cannot unwind them: it
     * cancels the run instead, and lockstep_close lets them return. */
    lockstep__dispatch(s);
    return 0;
fail:
    while (created > 0)
        s->ops->coop_destroy(s, &s->iters[--created]);
    lockstep__free(s->order);
    lockstep__free(s->win);
    s->order = NULL;
    s->win = NULL;
    return rc;
}

/* The stream has ended: one more round lets every consumer see the end (or
 * its cancellation) and return, because lockstep_next never waits once the
 * stream has ended. */
int lockstep__coop_finish(lockstep_stream *s)
{
    int rc = s->ops->dispatch(s);
    if (rc == 0 && NEVER(s->live != 0))
        rc = LOCKSTEP_ESTATE;
    return rc;
}

/* Frees every context, the order list and the window. */
void lockstep__coop_destroy(lockstep_stream *s)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->iters[i].started)
            s->ops->coop_destroy(s, &s->iters[i]);
    lockstep__drop(s, s->win, s->filled);
    s->filled = 0;
    lockstep__free(s->order);
    lockstep__free(s->win);
    s->order = NULL;
    s->win = NULL;
}

/* ------------------------------------------------------------------------
 * Streams: open, push, fail, close, and lockstep_run on top.
 * ------------------------------------------------------------------------ */

/* Smallest stack we accept: lockstep's own frames plus a signal frame need
 * a few KiB, and a consumer needs room of its own. */
#define LOCKSTEP__MIN_STACK_SIZE ((size_t)16 * 1024)
/* Largest stack we accept, to catch size typos. */
#define LOCKSTEP__MAX_STACK_SIZE ((size_t)1 << 30)
/* Largest window in bytes: anything past this is a typo, not a plan. */
#define LOCKSTEP__MAX_WINDOW_BYTES ((size_t)1 << 40)

/* Items below this size get the engine's whole byte budget by default:
 * they are bytes or characters, read in bulk (lockstep_take), where a
 * window costs a read call and a few switches and its bytes a copy each,
 * so the window must be large in bytes (the bulk sweep in docs/DESIGN.md).
 * From 8 bytes up the item counts measured for int64 stay, capped by the
 * budget so that large items do not make windows of megabytes. */
#define LOCKSTEP__SMALL_ITEM 8

/* The window a run uses: the caller's, else the engine's default for
 * items of item_size bytes (see LOCKSTEP_DEFAULT_WINDOW_BYTES). */
static size_t default_window(const lockstep__engine_ops *ops, const lockstep_options *o,
                             size_t item_size)
{
    if (o->window != 0)
        return o->window;
    size_t items = ops->default_window ? ops->default_window : LOCKSTEP_DEFAULT_WINDOW;
    size_t bytes = ops->default_window_bytes ? ops->default_window_bytes
                                             : LOCKSTEP_DEFAULT_WINDOW_BYTES;
    size_t budget = item_size != 0 && bytes / item_size > 0 ? bytes / item_size : 1;
    if (item_size < LOCKSTEP__SMALL_ITEM)
        return budget;
    return items < budget ? items : budget;
}

/* Checks everything lockstep_open is given, before anything is allocated. */
static int validate(const lockstep__engine_ops *ops, size_t item_size,
                    const lockstep_consumer *consumers, size_t n, const lockstep_options *o)
{
    if (ops == NULL || item_size == 0 || (n > 0 && consumers == NULL))
        return LOCKSTEP_EINVAL;
    if (n > SIZE_MAX / sizeof(lockstep_iter)) /* also keeps indices below the ranks */
        return LOCKSTEP_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (consumers[i].fn == NULL)
            return LOCKSTEP_EINVAL;
    size_t window = default_window(ops, o, item_size);
    if (window > LOCKSTEP_MAX_WINDOW || item_size > LOCKSTEP__MAX_WINDOW_BYTES / window)
        return LOCKSTEP_EINVAL;
    if (o->stack_size != 0 &&
        (o->stack_size < LOCKSTEP__MIN_STACK_SIZE || o->stack_size > LOCKSTEP__MAX_STACK_SIZE))
        return LOCKSTEP_EINVAL;
    for (size_t i = 0; i < sizeof o->reserved / sizeof o->reserved[0]; i++)
        if (o->reserved[i] != NULL)
            return LOCKSTEP_EINVAL;
    if (ops->open == NULL)
        return LOCKSTEP_ENOTSUP;
    return 0;
}

/* Fills in the caller's report, if it asked for one. */
static void write_report(const lockstep_options *o, int code, long failed, uint64_t position,
                         uint64_t items_read, size_t window)
{
    if (o == NULL || o->report == NULL)
        return;
    o->report->code = code;
    o->report->failed = failed;
    o->report->position = position;
    o->report->items_read = items_read;
    o->report->window = window;
    o->report->engine = o->engine;
}

int lockstep__open_ops(lockstep_stream **out, const lockstep__engine_ops *ops, void *engine_arg,
                       size_t item_size, const lockstep_consumer *consumers, size_t n,
                       const lockstep_options *options)
{
    lockstep_options defaults;
    if (options == NULL) {
        lockstep_options_init(&defaults);
        options = &defaults;
    }
    if (out == NULL)
        return LOCKSTEP_EINVAL;
    *out = NULL;
    int rc = validate(ops, item_size, consumers, n, options);
    if (rc < 0)
        goto fail;
    rc = LOCKSTEP_ENOMEM;
    lockstep_stream *s = lockstep__calloc(1, sizeof *s);
    if (s == NULL)
        goto fail;
    s->iters = lockstep__calloc(n, sizeof *s->iters);
    if (s->iters == NULL) {
        lockstep__free(s);
        goto fail;
    }
    s->ops = ops;
    s->engine_arg = engine_arg;
    s->opts = *options;
    s->item_size = item_size;
    s->window = default_window(ops, options, item_size);
    s->n = n;
    s->live = n;
    s->backward = 1; /* round_begin flips it: consumers start in index order */
    lockstep__fpmode_get(&s->fpmode);
    for (size_t i = 0; i < n; i++) {
        lockstep_iter *it = &s->iters[i];
        it->stream = s;
        it->head.item_size = item_size;
        it->index = i;
        it->consumer = consumers[i];
        lockstep__iter_park(it, 0);
    }
    rc = ops->open(s);
    if (rc < 0) {
        lockstep__free(s->iters);
        lockstep__free(s);
        goto fail;
    }
    *out = s;
    return 0;
fail:
    write_report(options, rc, LOCKSTEP_FAILED_LIBRARY, 0, 0, 0);
    return rc;
}

int lockstep_open(lockstep_stream **out, size_t item_size, const lockstep_consumer *consumers,
                  size_t n_consumers, const lockstep_options *options)
{
    lockstep_engine engine = options ? options->engine : LOCKSTEP_ENGINE_FIBER;
    return lockstep__open_ops(out, engine_ops(engine), NULL, item_size, consumers, n_consumers,
                              options);
}

long lockstep_live(const lockstep_stream *s)
{
    if (s == NULL)
        return LOCKSTEP_EINVAL;
    return lockstep__wanted(s) ? (long)atomic_load_explicit(&s->live, memory_order_acquire) : 0;
}

/* Push and close may not be called from inside one of the stream's own
 * consumers, nor after the producer failed or the stream closed. */
static int check_producer(const lockstep_stream *s)
{
    if (s == NULL)
        return LOCKSTEP_EINVAL;
    if (s->ops->check_producer != NULL) {
        int rc = s->ops->check_producer(s);
        if (rc < 0)
            return rc;
    }
    if (s->dispatching || s->ended)
        return LOCKSTEP_ESTATE;
    return 0;
}

/* Hands the full window to the engine.  An engine failure (say, memory
 * for the buffer engine) cancels the run at the current position. */
int lockstep__dispatch(lockstep_stream *s)
{
    int rc = s->ops->dispatch(s);
    if (rc < 0)
        lockstep__record_failure(s, s->read, LOCKSTEP__RANK_LIBRARY, rc);
    return rc;
}

long lockstep_push(lockstep_stream *s, const void *items, size_t count)
{
    int rc = check_producer(s);
    if (rc < 0)
        return rc;
    if (count > 0 && items == NULL)
        return LOCKSTEP_EINVAL;
    if (s->src_pending)
        return LOCKSTEP_ESTATE;
    const unsigned char *p = items;
    while (count > 0 && lockstep_live(s) > 0) {
        size_t room = s->cap - s->filled;
        size_t take = count < room ? count : room;
        memcpy(s->win + s->filled * s->item_size, p, take * s->item_size);
        s->filled += take;
        s->read += take;
        p += take * s->item_size;
        count -= take;
        if (s->filled == s->cap && (rc = lockstep__dispatch(s)) < 0)
            return rc;
    }
    return lockstep_live(s);
}

int lockstep_fail(lockstep_stream *s, int code)
{
    int rc = check_producer(s);
    if (rc < 0)
        return rc;
    if (code == 0)
        return LOCKSTEP_EINVAL;
    if (s->src_pending)
        return LOCKSTEP_ESTATE;
    s->src_pending = 1;
    s->src_pos = s->read;
    s->src_code = code;
    atomic_store_explicit(&s->unusual, 1, memory_order_relaxed);
    return 0;
}

int lockstep_close(lockstep_stream *s)
{
    int rc = check_producer(s);
    if (rc < 0)
        return rc;
    lockstep__end(s);
    rc = s->ops->finish(s);
    if (rc < 0)
        lockstep__record_failure(s, s->read, LOCKSTEP__RANK_LIBRARY, rc);
    return lockstep__close_ended(s);
}

/* See internal.h. */
void lockstep__end(lockstep_stream *s)
{
    s->ended = 1;
    atomic_store_explicit(&s->unusual, 1, memory_order_relaxed);
}

/* See internal.h. */
int lockstep__close_ended(lockstep_stream *s)
{
    int code = 0;
    long failed = LOCKSTEP_FAILED_NONE;
    uint64_t position = s->read;
    if (s->failed) {
        code = s->fail_code;
        position = s->fail_pos;
        failed = s->fail_rank == LOCKSTEP__RANK_SOURCE     ? LOCKSTEP_FAILED_SOURCE
                 : s->fail_rank == LOCKSTEP__RANK_LIBRARY  ? LOCKSTEP_FAILED_LIBRARY
                 : s->fail_rank >= LOCKSTEP__RANK_AFTER_END ? (long)(s->fail_rank - LOCKSTEP__RANK_AFTER_END)
                                                            : (long)s->fail_rank;
    } else if (s->misuse) {
        code = s->misuse;
        failed = LOCKSTEP_FAILED_LIBRARY;
    }
    write_report(&s->opts, code, failed, position, s->read, s->window);
    s->ops->destroy(s);
    lockstep__free(s->iters);
    lockstep__free(s);
    return code;
}

/* See internal.h. */
void lockstep__source_stopped(lockstep_stream *s, int rc)
{
    s->source_done = 1;
    if (rc != 0) {
        s->src_pending = 1;
        s->src_pos = s->read;
        s->src_code = rc;
        atomic_store_explicit(&s->unusual, 1, memory_order_relaxed);
    }
}

/* See internal.h.  One test per window chooses the bulk path. */
int lockstep__fill_window(lockstep_stream *s)
{
    if (s->read_fn != NULL)
        return lockstep__fill_read_with(s, s->read_fn, s->read_arg);
    return lockstep__fill_window_with(s, s->source, s->source_arg);
}

/* See internal.h. */
int lockstep__read_one(void *arg, void *item)
{
    lockstep_stream *s = arg;
    return lockstep__read_code(s->read_fn(s->read_arg, item, 1), 1);
}

/* Opens a stream for lockstep_run or lockstep_run_read; have_fn says
 * whether the source function is not NULL.  Returns 0 or the code to
 * return. */
static int open_pull(lockstep_stream **s, int have_fn, size_t item_size,
                     const lockstep_consumer *consumers, size_t n_consumers,
                     const lockstep_options *options)
{
    if (!have_fn) {
        write_report(options, LOCKSTEP_EINVAL, LOCKSTEP_FAILED_LIBRARY, 0, 0, 0);
        return LOCKSTEP_EINVAL;
    }
    return lockstep_open(s, item_size, consumers, n_consumers, options);
}

int lockstep_run(lockstep_source_fn source, void *source_arg, size_t item_size,
                 const lockstep_consumer *consumers, size_t n_consumers,
                 const lockstep_options *options)
{
    lockstep_stream *s;
    int rc = open_pull(&s, source != NULL, item_size, consumers, n_consumers, options);
    if (rc < 0)
        return rc;
    lockstep__pull_with(s, source, source_arg);
    return lockstep_close(s);
}

int lockstep_run_read(lockstep_read_fn read, void *read_arg, size_t item_size,
                      const lockstep_consumer *consumers, size_t n_consumers,
                      const lockstep_options *options)
{
    lockstep_stream *s;
    int rc = open_pull(&s, read != NULL, item_size, consumers, n_consumers, options);
    if (rc < 0)
        return rc;
    lockstep__pull_read_with(s, read, read_arg);
    return lockstep_close(s);
}
