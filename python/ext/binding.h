/*
 * binding.h: what the files of lockstep's CPython binding (python/ext/)
 * share, and nothing else sees.  The binding is compiled with the C core
 * into one extension, lockstep._lockstep; it is deliberately thin: the
 * core's scheduler decides who runs, what the window holds, which failure
 * wins and who is cancelled; the binding only turns Python objects into
 * items and callables into consumers.
 *
 *   - Items are PyObject pointers (item_size = sizeof(PyObject *)).  The
 *     producer writes a NEW reference into each window slot; the stream's
 *     drop_items hook releases the references of items leaving the window.
 *     Both run on the producer's thread with the GIL held (greenlet run():
 *     in whichever greenlet refills the window).
 *   - A consumer is any callable taking one iterator.  The C consumer
 *     function (run.c) calls it with a lockstep.Iterator whose __next__ is
 *     the core's lockstep_next, and keeps its result or its exception.  A
 *     cancelled consumer sees its iterator end.
 *   - Engines: "greenlet" is a cooperative engine defined by the binding
 *     (greenlet_engine.c), each consumer on its own greenlet, switching as
 *     the core's fiber engine does; "thread" is the core's thread engine,
 *     the GIL released by a blocking hook while the producer waits and by
 *     Iterator.__next__ while a consumer waits; "buffer" is the core's
 *     reference engine.
 *   - Misuse never crashes: an iterator works only inside the consumer it
 *     was made for (a thread-local "current consumer" says which one runs),
 *     and Stream methods refuse re-entrant or foreign-thread calls.
 *
 * The files, in the manner of CPython's Modules/_io/:
 *   binding.h           this header: module state, IterObject, slot,
 *                       runstate, the pyls_ declarations, and the static
 *                       inline helpers on the per-item path
 *   iterator.c          lockstep.Iterator, the thread's current consumer and
 *                       the misuse error all iterators raise
 *   greenlet_engine.c   the greenlet engine's ops and run()'s greenlet loop
 *   run.c               the run state (consumers, engine and window
 *                       arguments, open/pull/close), exceptions, run()
 *   stream.c            lockstep.Stream, the push side
 *   async.h             what the two files of lockstep.arun share
 *   async_iter.c        lockstep.AsyncIterator and its _AsyncNext awaitable
 *   async_driver.c      lockstep.arun: its engine, driver and awaitable
 *   module.c            the module: types, engines(), constants
 *
 * Names shared between the files start with pyls_; they are hidden (the
 * extension is built with -fvisibility=hidden, and this header says so
 * too), so none is exported: PyInit__lockstep is.  Whatever runs once per item
 * is static inline here or lives in the file of its caller, so that the
 * split costs no call on the hot paths.
 */
#ifndef PYLOCKSTEP_BINDING_H
#define PYLOCKSTEP_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pycompat.h"

#include "internal.h"

/* greenlet.h is included by greenlet_engine.c and async_driver.c alone: it
 * gives every file that includes it a private copy of greenlet's C API
 * pointer, which only that file fills in (pyls_greenlet_load;
 * async_driver.c's greenlet_usable).  The other files ask through
 * pyls_greenlet_current. */
#ifndef LOCKSTEP_HAVE_GREENLET
#  define LOCKSTEP_HAVE_GREENLET 0
#endif

/* Windows used when window=None, per engine; chosen by the sweep in
 * python/README.md (sum and max over range(10**6)): the smallest window on
 * each engine's plateau, within a 128 KiB tracemalloc peak. */
#define PYLOCKSTEP_WINDOW_GREENLET 512
#define PYLOCKSTEP_WINDOW_THREAD 2048
#define PYLOCKSTEP_WINDOW_BUFFER 512

/* Bytes the window holds when a byte run (run_bytes) has window=None, per
 * engine: the core's byte budgets (bench/py_bytes_bench.py --sweep, two
 * file_digest consumers, each reading 256 KiB at a time).  greenlet and
 * buffer: 64 KiB, since a larger window and the consumers' own buffers
 * compete for the 512 KiB L2 (CPU seconds over 128 MiB: 64 KiB 0.234, 256
 * KiB 0.297).  thread: 1 MiB, a ring of four 256 KiB segments, so that each
 * such read takes one segment while the source reads ahead: at 256 KiB
 * (64 KiB segments) one read needed the whole ring and the threads took
 * turns (thread 0.87-1.1x as fast as greenlet; 1 MiB 1.6-1.8x, 4 MiB no
 * better). */
#define PYLOCKSTEP_BYTES_WINDOW_GREENLET LOCKSTEP_DEFAULT_WINDOW_BYTES
#define PYLOCKSTEP_BYTES_WINDOW_THREAD LOCKSTEP_DEFAULT_THREAD_WINDOW_BYTES
#define PYLOCKSTEP_BYTES_WINDOW_BUFFER LOCKSTEP_DEFAULT_WINDOW_BYTES

/* The code a consumer or the producer fails with when the failure is a
 * Python exception; the exception itself is kept by the binding. */
#define PYLOCKSTEP_EPYTHON (-1)

/* The producer checks for signals (KeyboardInterrupt) every this many items. */
#define PYLOCKSTEP_SIGNAL_EVERY 256u

typedef enum { ENG_GREENLET = 0, ENG_THREAD, ENG_BUFFER, ENG_COUNT_ } pyengine;

/* ------------------------------------------------------------------------
 * Module state and the run state shared by run() and Stream.
 * ------------------------------------------------------------------------ */

typedef struct {
    PyTypeObject *iter_type;
    PyTypeObject *stream_type;
    PyTypeObject *bytes_type;  /* lockstep.ByteIterator (bytes.c) */
    PyObject *marker;      /* what a consumer greenlet passes when it suspends */
    PyObject *marker_args; /* (marker,) */
    PyTypeObject *aiter_type; /* lockstep.AsyncIterator (async_iter.c) */
    PyTypeObject *arun_type;  /* what arun() returns (async_driver.c) */
    PyTypeObject *anext_type; /* what AsyncIterator.__anext__ returns (async_iter.c) */
#ifdef PYPY_VERSION
    PyObject *pypy_tick;   /* a Python-level no-op: calling it runs PyPy's signal handlers */
#endif
} modstate;

typedef struct runstate runstate;

typedef struct IterObject {
    PyObject_HEAD
    lockstep_iter *it;  /* NULL once its consumer has returned */
    pyengine engine;
    PyObject *greenlet; /* borrowed from the stream: this consumer's greenlet */
} IterObject;

/* Per consumer: what the binding keeps for it. */
typedef struct {
    PyObject *consumer;
    PyObject *result;  /* its return value */
    PyObject *exc;     /* the exception it raised, traceback attached */
    IterObject *iter;  /* the iterator it was given */
    PyObject *context; /* its own copy of the caller's contextvars context, taken at open */
    runstate *rs;
    int begun;         /* greenlet engine: its greenlet has started */
} slot;

struct runstate {
    modstate *st;
    pyengine engine;
    size_t window;
    size_t n;
    slot *slots;
    lockstep_stream *s;        /* NULL before open and after close */
    PyObject *src_exc;         /* the producer's exception */
    PyObject *lib_exc;         /* an exception met inside the engine itself */
    PyObject *scheduler;       /* greenlet engine: the producer's greenlet */
    lockstep_iter *running;    /* greenlet engine: consumer whose greenlet runs, or NULL */
    PyObject *context;         /* greenlet engine: the producer's contextvars context */
    PyObject *src;             /* run(): the source iterator (borrowed) */
    iternextfunc src_next;     /* its tp_iternext */
    int refill_here;           /* greenlet run(): consumers refill the window */
    int refilling;             /* greenlet run(): running's greenlet is in greenlet_refill */
    lockstep_report report;
    lockstep_blocking_hook hook;
    unsigned long owner;       /* thread that opened the stream */
    unsigned tick;             /* items since the last signal check */
    int busy;                  /* producer-side re-entrancy guard */
    int bytes;                 /* run_read(): items are bytes, filled by readinto */
    PyObject *readinto;        /* run_read(): the source's readinto (borrowed) */
};

#pragma GCC visibility push(hidden)

/* ---- iterator.c ---- */

/* The consumer whose Python code runs on this thread right now, or NULL.
 * Iterator.__next__ works only when this is its own consumer.  The
 * initial-exec model keeps the fast path free of __tls_get_addr calls. */
extern _Thread_local lockstep_iter *pyls_tls_current __attribute__((tls_model("initial-exec")));

extern PyType_Spec pyls_iter_spec;

/* Makes the iterator for consumer it of rs; a new reference or NULL. */
IterObject *pyls_iter_make(runstate *rs, lockstep_iter *it);

/* Raises the RuntimeError for a consumer's iterator used where it may not
 * be: after its consumer returned (it is NULL), else outside its own
 * consumer, from one of others ("another consumer, thread or greenlet").
 * noun names the object in the message ("iterator", "reader").  Returns
 * NULL.  Cold: only misuse calls it (run()'s and run_read's iterators
 * through pyls_iter_misuse, arun's AsyncIterator directly).  it comes
 * second so that Iterator.__next__ keeps it in the register that its slow
 * path (iter_next_slow) takes it in too: no move on the per-window path. */
__attribute__((cold)) PyObject *pyls_misuse(const char *noun, const lockstep_iter *it,
                                            const char *others);

/* pyls_misuse for self, an iterator of run(), Stream or run_read (a
 * lockstep.Iterator: noun "iterator"; a ByteIterator: "reader"). */
static inline PyObject *pyls_iter_misuse(IterObject *self, const char *noun)
{
    return pyls_misuse(noun, self->it, "another consumer, thread or greenlet");
}

/* ---- greenlet_engine.c ---- */

/* Loads greenlet's C API once; returns 0, or -1 with ImportError set (also
 * in a build without the greenlet engine). */
int pyls_greenlet_load(void);

#if LOCKSTEP_HAVE_GREENLET
extern const lockstep__engine_ops pyls_greenlet_ops;

/* greenlet.getcurrent() from greenlet's C API (a new reference), copied
 * by pyls_greenlet_load so that every file calls it as cheaply as
 * greenlet.h's own macro would; NULL until then.  struct _greenlet is
 * greenlet.h's PyGreenlet. */
struct _greenlet;
extern struct _greenlet *(*pyls_greenlet_getcurrent)(void);

/* run()'s loop on the greenlet engine: pulls src into rs's open stream. */
void pyls_greenlet_pull(runstate *rs, PyObject *src);
#endif

/* ---- run.c ---- */

/* The engines' names, indexed by pyengine. */
extern const char *const pyls_engine_names[ENG_COUNT_];

/* Windows for window=None, indexed by [bytes][pyengine]: items for run()
 * and Stream, bytes for run_read. */
extern const size_t pyls_default_windows[2][ENG_COUNT_];

/* Takes the pending exception and returns it normalized, with its traceback
 * attached (a new reference; never NULL). */
PyObject *pyls_fetch_exception(void);

/* Raises exc (stolen) as the pending exception, with its own traceback. */
void pyls_raise_exception(PyObject *exc);

/* Raises a MemoryError of its own (not CPython 3.12+'s static one) for an
 * allocation of the core that failed; returns NULL. */
PyObject *pyls_raise_nomemory(void);

/* Raises the Python exception that stands for library code rc; returns NULL. */
PyObject *pyls_raise_code(int rc);

/* Calls callable(arg) inside contextvars context ctx, entered for the call
 * and left after it: a new reference, or NULL with an exception set (also
 * when ctx cannot be entered, or callable left another context entered).
 * Each consumer of run() and arun() runs so, in its own copy of the
 * caller's context.  On PyPy, whose C-API layer has no PyContext_Enter,
 * this is ctx.run(callable, arg). */
PyObject *pyls_call_in_context(PyObject *ctx, PyObject *callable, PyObject *arg);

/* Fills rs for n consumers of objects, or of bytes when bytes is set
 * (run_read): checks they are callable, parses window and engine (None:
 * that engine's default for the kind of item).  On failure (-1, exception
 * set) rs owns whatever it took; call pyls_rs_clear either way. */
int pyls_rs_init(runstate *rs, modstate *st, PyObject *const *consumers, size_t n,
                 PyObject *window, PyObject *engine, int bytes);

/* Releases every reference rs holds and its slot array.  The stream must
 * be closed (rs->s == NULL). */
void pyls_rs_clear(runstate *rs);

/* Opens rs's stream on its engine: consumers start and run up to their
 * first next().  Returns 0, or -1 with an exception set. */
int pyls_rs_open(runstate *rs);

/* The consumer array the core's open takes: consumer i is fn with the
 * slot at slots + i * stride.  Returns it (PyMem_Free it), or NULL with
 * MemoryError.  run() and arun() both build theirs with it. */
lockstep_consumer *pyls_consumers_make(lockstep_consumer_fn fn, void *slots, size_t stride,
                                       size_t n);

/* Parses window= (None or an int >= 1) into *out; None leaves *out 0,
 * for the engine's default.  Returns 0 or -1 with ValueError. */
int pyls_parse_window(PyObject *obj, size_t *out);

/* The streams' drop_items hook: releases the references held by items
 * leaving the window.  Called on the producer's thread with the GIL held. */
void pyls_drop_items(void *arg, void *items, size_t count);

/* Records the pending Python exception as the producer's failure at the
 * current stream position. */
void pyls_rs_source_failed(runstate *rs);

/* Pulls items from src into the stream until src ends or fails, or no
 * consumer wants more.  A failure of src (or a KeyboardInterrupt between
 * items) becomes the producer's failure when source_failure is set (run);
 * otherwise it is left pending and -1 returned (Stream.extend).  Returns 0
 * or -1. */
int pyls_rs_pull(runstate *rs, PyObject *src, int source_failure);

/* Closes the stream and turns the outcome into a tuple of results (a new
 * reference) or a raised exception (NULL): the failure earliest in the
 * stream, as the core's report says. */
PyObject *pyls_rs_close(runstate *rs);

/* A closed stream's outcome, as its report r says: the results tuple (a new
 * reference) built from n result pointers, or NULL with the exception
 * earliest in the stream raised, taken (stolen) from the failing
 * consumer's exception pointer, *src_exc or *lib_exc.  The i-th consumer's
 * pointers are at results0 and excs0 plus i * stride bytes (a slot array:
 * run.c's and async_driver.c's slots differ). */
PyObject *pyls_outcome(const lockstep_report *r, size_t n, PyObject **results0,
                       PyObject **excs0, size_t stride, PyObject **src_exc, PyObject **lib_exc);

/* The keyword arguments of fname (run, run_read), METH_FASTCALL style:
 * values[k] is the value of kwnames[k].  Sets *window and *engine to those
 * given (borrowed); returns 0, or -1 with TypeError for any other keyword. */
int pyls_run_keywords(const char *fname, PyObject *const *values, PyObject *kwnames,
                      PyObject **window, PyObject **engine);

/* run(iterable, /, *consumers, window=None, engine=None), METH_FASTCALL |
 * METH_KEYWORDS, and its docstring. */
PyObject *pyls_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames);
extern const char pyls_run_doc[];

/* ---- bytes.c ---- */

extern PyType_Spec pyls_bytes_spec;

/* A byte run's lockstep_read_fn: rs->readinto(memoryview over max bytes at
 * items).  Returns the count, 0 at the end, or PYLOCKSTEP_EPYTHON with the
 * exception kept in rs->src_exc. */
long pyls_rs_read(void *arg, void *items, size_t max);

/* run_read(readinto, /, *consumers, window=None, engine=None), and its
 * docstring. */
PyObject *pyls_run_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames);
extern const char pyls_run_read_doc[];

/* ---- stream.c ---- */

extern PyType_Spec pyls_stream_spec;

/* ---- async_iter.c, async_driver.c ---- */

/* lockstep.AsyncIterator and the awaitable arun() returns. */
extern PyType_Spec pyls_aiter_spec;
extern PyType_Spec pyls_arun_spec;
extern PyType_Spec pyls_anext_spec;

/* arun(source, /, *consumers, window=None, engine=None), METH_FASTCALL |
 * METH_KEYWORDS, and its docstring. */
PyObject *pyls_arun(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames);
extern const char pyls_arun_doc[];

#pragma GCC visibility pop

/* ---- Static inline helpers: the per-item path, inlined into callers. ---- */

/* Returns 1 when the core in this build has a working thread engine. */
static inline int pyls_thread_available(void)
{
    return lockstep_engine_available(LOCKSTEP_ENGINE_THREAD);
}

#if LOCKSTEP_HAVE_GREENLET
/* Returns the greenlet running now, for comparing identities only (no
 * reference is kept).  greenlet must be loaded (pyls_greenlet_load), as it
 * is once a stream uses the greenlet engine.  It runs once per window on
 * the greenlet engine's slow path, hence inline. */
static inline PyObject *pyls_greenlet_current(void)
{
    PyObject *cur = (PyObject *)pyls_greenlet_getcurrent();
    Py_XDECREF(cur);
    return cur;
}
#endif

/* Counts one item; every PYLOCKSTEP_SIGNAL_EVERY items runs Python's signal
 * handlers.  Returns -1 when one raised (KeyboardInterrupt), else 0. */
static inline int pyls_rs_tick(runstate *rs)
{
    if (NEVER(++rs->tick >= PYLOCKSTEP_SIGNAL_EVERY)) {
        rs->tick = 0;
#ifdef PYPY_VERSION
        /* PyPy's cpyext leaves PyErr_CheckSignals a no-op; its signal
         * handlers run when Python code does, so run a little. */
        PyObject *r = PyObject_CallNoArgs(rs->st->pypy_tick);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
#endif
        return PyErr_CheckSignals();
    }
    return 0;
}

/* After a source's tp_iternext (or pyls_rs_tick) gave no item: returns 1 when
 * the source just ended (clearing a StopIteration it raised), 0 when it
 * failed (exception set). */
static inline int pyls_rs_ended(void)
{
    if (!PyErr_Occurred())
        return 1;
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* Puts item (a new reference, stolen) at the end of the window and
 * dispatches when the window is full: lockstep_run's loop body.  Returns 1
 * when it dispatched (consumers ran; the live count may have changed). */
static inline int pyls_rs_put(runstate *rs, PyObject *item)
{
    lockstep_stream *s = rs->s;
    ((PyObject **)s->win)[s->filled] = item;
    return lockstep__commit_one(s) != 0;
}

#if LOCKSTEP_HAVE_GREENLET
/* run()'s source on the greenlet engine, a lockstep_source_fn: writes the
 * next item of rs->src (a new reference) into slot and returns 1; returns 0
 * at its end, or PYLOCKSTEP_EPYTHON with its exception (or a
 * KeyboardInterrupt met between items) kept as the producer's.  It runs in
 * the producer's greenlet or, through greenlet_refill, in the consumer's
 * that ends a round; either way no exception is left set. */
static inline int pyls_rs_source(void *arg, void *slot)
{
    runstate *rs = arg;
    PyObject *item = NULL;
    if (pyls_rs_tick(rs) == 0)
        item = rs->src_next(rs->src);
    if (ALWAYS(item != NULL)) {
        *(PyObject **)slot = item;
        return 1;
    }
    if (pyls_rs_ended())
        return 0;
    Py_XSETREF(rs->src_exc, pyls_fetch_exception());
    return PYLOCKSTEP_EPYTHON;
}
#endif

#endif /* PYLOCKSTEP_BINDING_H */
