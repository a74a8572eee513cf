/*
 * lockstep.h: the one public header of the lockstep library.
 *
 * lockstep runs several pull-style consumers over one stream, in one pass,
 * with memory bounded by a window of items instead of the stream's length.
 * A consumer is an ordinary function that loops over lockstep_next() until
 * it returns NULL; nobody rewrites it as a callback.  The stream comes either
 * from a source function (lockstep_run, or lockstep_run_read for a bulk
 * source such as a pipe) or from a producer that pushes items as they arrive
 * (lockstep_open / lockstep_push / lockstep_close).  Byte streams and other
 * small items are read in spans with lockstep_take and lockstep_read.
 *
 * Conventions, in the manner of libuv: every name starts with lockstep_ or
 * LOCKSTEP_, library errors are negative LOCKSTEP_E* codes generated from
 * one table, and lockstep_strerror() describes any code.
 */
#ifndef LOCKSTEP_H
#define LOCKSTEP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOCKSTEP_VERSION_MAJOR 0
#define LOCKSTEP_VERSION_MINOR 1
#define LOCKSTEP_VERSION_PATCH 0
/* One integer that grows with every release: 0xMMmmpp. */
#define LOCKSTEP_VERSION_HEX \
    ((LOCKSTEP_VERSION_MAJOR << 16) | (LOCKSTEP_VERSION_MINOR << 8) | LOCKSTEP_VERSION_PATCH)

#if defined(__GNUC__)
#  define LOCKSTEP__LIKELY(x) __builtin_expect(!!(x), 1)
#else
#  define LOCKSTEP__LIKELY(x) (x)
#endif

#if defined(_WIN32)
#  define LOCKSTEP_API
#elif defined(__GNUC__)
#  define LOCKSTEP_API __attribute__((visibility("default")))
#else
#  define LOCKSTEP_API
#endif

/*
 * The error table.  Library codes live in [-1099, -1001] so that they rarely
 * collide with the small codes users return from their own consumers and
 * sources; when it matters, lockstep_report.failed says for certain who
 * produced a code.
 */
#define LOCKSTEP_ERRNO_MAP(X)                                                   \
    X(EINVAL,  -1001, "invalid argument")                                       \
    X(ENOMEM,  -1002, "out of memory")                                          \
    X(ENOTSUP, -1003, "engine not supported in this build")                     \
    X(EPERM,   -1004, "iterator used outside its own consumer")                 \
    X(ESTATE,  -1005, "operation not allowed in the stream's current state")    \
    X(ETHREAD, -1006, "could not create a thread")

typedef enum {
#define LOCKSTEP__ERR_ENUM(name, value, text) LOCKSTEP_##name = (value),
    LOCKSTEP_ERRNO_MAP(LOCKSTEP__ERR_ENUM)
#undef LOCKSTEP__ERR_ENUM
    LOCKSTEP_OK = 0
} lockstep_errno;

/* A consumer's handle on the stream.  Opaque; valid only while that
 * consumer's function is running. */
typedef struct lockstep_iter lockstep_iter;

/* A stream fed by lockstep_push.  Opaque. */
typedef struct lockstep_stream lockstep_stream;

/*
 * A consumer: fn(it, arg) loops over lockstep_next(it) and returns 0 on
 * success or its own nonzero code on failure.  It may stop early by simply
 * returning; it then detaches and the other consumers go on.
 */
typedef int (*lockstep_consumer_fn)(lockstep_iter *it, void *arg);
typedef struct {
    lockstep_consumer_fn fn;
    void *arg;
} lockstep_consumer;

/*
 * A source writes the next item (item_size bytes) to *item and returns 1,
 * returns 0 at the end of the stream, or returns a negative code on failure.
 * The code is passed through to the caller of lockstep_run unchanged.
 */
typedef int (*lockstep_source_fn)(void *arg, void *item);

typedef enum {
    LOCKSTEP_ENGINE_FIBER = 0, /* each consumer on its own stack; the default */
    LOCKSTEP_ENGINE_THREAD,    /* each consumer on its own POSIX thread */
    LOCKSTEP_ENGINE_BUFFER,    /* read everything first: the reference */
    LOCKSTEP_ENGINE_COUNT_     /* number of engines; not an engine */
} lockstep_engine;

/* Value of lockstep_report.failed when nothing failed, or the source did. */
#define LOCKSTEP_FAILED_NONE   (-1)
#define LOCKSTEP_FAILED_SOURCE (-2)
#define LOCKSTEP_FAILED_LIBRARY (-3)

/* What happened in a run; filled in when the run ends. */
typedef struct {
    int code;            /* what lockstep_run / lockstep_close returned */
    long failed;         /* consumer index, or LOCKSTEP_FAILED_* */
    uint64_t position;   /* stream position of the failure: items before it were delivered */
    uint64_t items_read; /* items pulled from the source or accepted from push */
    size_t window;       /* window actually used, after defaults */
    lockstep_engine engine;
} lockstep_report;

/*
 * Blocking hook, for embedders that hold a lock of their own (such as
 * Python's GIL) that must be released while lockstep waits for another
 * thread.  before_wait() returns a token that after_wait() receives.
 */
typedef struct {
    void *(*before_wait)(void *arg);
    void (*after_wait)(void *arg, void *token);
    void *arg;
} lockstep_blocking_hook;

/*
 * Run options.  Zero-initialise (or use LOCKSTEP_OPTIONS_INIT /
 * lockstep_options_init) and set what you need; zero means "default" in
 * every field.
 */
typedef struct {
    lockstep_engine engine;   /* LOCKSTEP_ENGINE_FIBER by default */
    size_t window;            /* items per window; 0 = the engine's default for the item size (LOCKSTEP_DEFAULT_*), 1 = strict lockstep */
    size_t stack_size;        /* fiber or thread stack in bytes; 0 = LOCKSTEP_DEFAULT_STACK_SIZE */
    lockstep_report *report;  /* optional: filled in when the run ends */
    const lockstep_blocking_hook *blocking; /* optional, thread engine only */
    void *reserved[4];        /* room to grow without breaking the ABI; leave NULL */
} lockstep_options;

#define LOCKSTEP_OPTIONS_INIT {LOCKSTEP_ENGINE_FIBER, 0, 0, NULL, NULL, {NULL, NULL, NULL, NULL}}

/* Default windows, chosen by the window sweeps (make bench; docs/DESIGN.md).
 * A thread hand-off costs microseconds where a fiber switch costs
 * nanoseconds, so the thread engine needs a larger window to amortise it.
 * The window is a count of items, bounded by a byte budget: items smaller
 * than 8 bytes (bytes, characters, read in bulk) get the whole budget
 * (64 KiB of bytes on fibers, 1 MiB on threads), larger ones the item count
 * but no more than the budget (4096-byte items: 16 on fibers, 256 on
 * threads).  lockstep_report.window tells which window a run used. */
#define LOCKSTEP_DEFAULT_WINDOW 256
#define LOCKSTEP_DEFAULT_THREAD_WINDOW 4096
#define LOCKSTEP_DEFAULT_WINDOW_BYTES ((size_t)64 * 1024)
#define LOCKSTEP_DEFAULT_THREAD_WINDOW_BYTES ((size_t)1024 * 1024)
/* Default stack for a fiber or consumer thread: 256 KiB, of which only the
 * pages a consumer touches cost memory. */
#define LOCKSTEP_DEFAULT_STACK_SIZE (256u * 1024u)
/* Largest window accepted, so that window * item_size cannot overflow in
 * practice and a typo does not reserve terabytes. */
#define LOCKSTEP_MAX_WINDOW ((size_t)1 << 30)

/* Sets *options to the defaults.  Does nothing when options is NULL. */
LOCKSTEP_API void lockstep_options_init(lockstep_options *options);

/*
 * Runs every consumer over the items produced by source, in one pass.
 * Items are copied by value (item_size bytes) into a window of
 * options->window slots.  Returns 0 when every consumer succeeded, the code
 * of the failure earliest in the stream (ties: lowest consumer index; a
 * consumer that fails without asking for more before the source, and a
 * consumer that fails after it saw the end last), or a negative LOCKSTEP_E* code: for bad
 * input (no consumer has run, no item was read), or for resources exhausted
 * mid-run (consumers that had started were cancelled and have returned;
 * everything is freed).
 */
LOCKSTEP_API int lockstep_run(lockstep_source_fn source, void *source_arg, size_t item_size,
                              const lockstep_consumer *consumers, size_t n_consumers,
                              const lockstep_options *options);

/*
 * Returns the next item for this consumer, or NULL at the end of the
 * stream, when the run was cancelled (see lockstep_cancelled), or on misuse.
 * The pointer stays valid until this consumer's next call.
 *
 * The common case, an item already in the window, is inlined through the
 * macro below, as stdio's getc is: a consumer pays two compares and an add
 * per item instead of a call.  (lockstep_next)(it), &lockstep_next and
 * defining LOCKSTEP_NO_INLINE all use the real function.
 */
LOCKSTEP_API const void *lockstep_next(lockstep_iter *it);

/* Implementation details the inline fast path needs: the first members of
 * every lockstep_iter, and the out-of-line rest.  Not for direct use. */
typedef struct {
    const unsigned char *cur; /* next item in the window */
    const unsigned char *end; /* end of what this consumer may take now */
    size_t item_size;
} lockstep__iter_head;
LOCKSTEP_API const void *lockstep__next_slow(lockstep_iter *it);

static inline const void *lockstep__next_inline(lockstep_iter *it)
{
    lockstep__iter_head *head = (lockstep__iter_head *)(void *)it;
    if (LOCKSTEP__LIKELY(it != NULL && head->cur < head->end)) {
        const void *item = head->cur;
        head->cur += head->item_size;
        return item;
    }
    return lockstep__next_slow(it);
}
#ifndef LOCKSTEP_NO_INLINE
#  define lockstep_next(it) lockstep__next_inline(it)
#endif

/*
 * Bulk access, for byte streams and other small items.  lockstep_next,
 * lockstep_take and lockstep_read share one cursor per consumer and may be
 * mixed freely.
 *
 * lockstep_take returns up to max contiguous items at this consumer's
 * cursor, at least 1 and never past the end of what the window holds now,
 * and sets *count to how many.  They are consumed, and stay valid until
 * this consumer's next call.  It returns NULL with *count = 0 at the end of
 * the stream, when cancelled (lockstep_cancelled tells), on misuse, and
 * when max is 0 (then nothing is consumed).  No copy: a parser's read
 * callback can hand the pointer straight on.
 */
LOCKSTEP_API const void *lockstep_take(lockstep_iter *it, size_t max, size_t *count);

/*
 * Copies up to max items into buf, like read(2): returns how many (at least
 * 1), or 0 at the end, when cancelled (lockstep_cancelled tells), on misuse
 * or when max is 0.  A short count is normal: it never waits for more once
 * it has one item.
 */
LOCKSTEP_API size_t lockstep_read(lockstep_iter *it, void *buf, size_t max);

/*
 * A bulk source: writes 1..max items (item_size bytes each) to items and
 * returns how many, returns 0 at the end of the stream, or a negative code
 * on failure, passed through to the caller of lockstep_run_read unchanged.
 * A short count is normal (a pipe returns what it has): the items it
 * returned are handed to the consumers before it is called again.
 */
typedef long (*lockstep_read_fn)(void *arg, void *items, size_t max);

/*
 * lockstep_run for a bulk source: the same guarantees on every engine and
 * window (order, early exit with at most window - 1 items read past the
 * last consumer's stop, the deterministic outcome with a failure's position
 * counted in items, cancellation, bad input, allocation failure).  read
 * writes straight into the window, so items are copied once.  A count over
 * max is a source failure with code LOCKSTEP_EINVAL at that position.
 */
LOCKSTEP_API int lockstep_run_read(lockstep_read_fn read, void *read_arg, size_t item_size,
                                   const lockstep_consumer *consumers, size_t n_consumers,
                                   const lockstep_options *options);

/* Returns 1 when lockstep_next returned NULL because the run was cancelled
 * (some consumer or the source failed), 0 otherwise. */
LOCKSTEP_API int lockstep_cancelled(const lockstep_iter *it);

/* Returns how many items this consumer has received so far. */
LOCKSTEP_API uint64_t lockstep_position(const lockstep_iter *it);

/* Returns this consumer's index in the array given to lockstep_run/open. */
LOCKSTEP_API size_t lockstep_index(const lockstep_iter *it);

/*
 * Push side.  lockstep_open prepares a stream and starts every consumer; it
 * returns 0 and sets *out, or a negative code (nothing is left allocated).
 * The stream belongs to the calling thread: push, fail and close must be
 * called from it and never from inside one of its own consumers.
 */
LOCKSTEP_API int lockstep_open(lockstep_stream **out, size_t item_size,
                               const lockstep_consumer *consumers, size_t n_consumers,
                               const lockstep_options *options);

/*
 * Copies count items into the stream and lets the consumers run as windows
 * fill.  Returns the number of consumers still wanting items (0 means stop
 * producing: all detached or the run failed), or a negative code on misuse.
 * Items pushed when no consumer is left are ignored.
 */
LOCKSTEP_API long lockstep_push(lockstep_stream *s, const void *items, size_t count);

/* Returns the number of consumers still wanting items, as lockstep_push does. */
LOCKSTEP_API long lockstep_live(const lockstep_stream *s);

/*
 * Records that the producer failed with nonzero code at the current stream
 * position: consumers that want further items are cancelled.  No more items
 * may be pushed.  Returns 0, or LOCKSTEP_EINVAL / LOCKSTEP_ESTATE.
 */
LOCKSTEP_API int lockstep_fail(lockstep_stream *s, int code);

/*
 * Ends the stream, lets every consumer finish, frees everything and returns
 * the run's outcome exactly as lockstep_run does.  s must not be used again.
 */
LOCKSTEP_API int lockstep_close(lockstep_stream *s);

/* Describes any code: a LOCKSTEP_E* code, 0, or "unknown error". */
LOCKSTEP_API const char *lockstep_strerror(int code);

/* Returns the symbolic name of a library code ("LOCKSTEP_EINVAL"), or NULL. */
LOCKSTEP_API const char *lockstep_err_name(int code);

/* Returns "fiber", "thread" or "buffer", or NULL for an unknown engine. */
LOCKSTEP_API const char *lockstep_engine_name(lockstep_engine engine);

/* Returns 1 when this build supports the engine, 0 otherwise. */
LOCKSTEP_API int lockstep_engine_available(lockstep_engine engine);

/* Returns LOCKSTEP_VERSION_HEX of the library actually linked. */
LOCKSTEP_API unsigned lockstep_version(void);

/* Returns "MAJOR.MINOR.PATCH" of the library actually linked. */
LOCKSTEP_API const char *lockstep_version_string(void);

#ifdef __cplusplus
}
#endif

#endif /* LOCKSTEP_H */
