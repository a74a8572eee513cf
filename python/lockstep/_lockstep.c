/*
 * _lockstep.c: the CPython binding of lockstep, compiled together with the C
 * core (src/core.c and the engines) into the extension lockstep._lockstep.
 * It is deliberately thin: the core's scheduler decides who runs, what the
 * window holds, which failure wins and who is cancelled; this file only
 * turns Python objects into items and callables into consumers.
 *
 *   - Items are PyObject pointers (item_size = sizeof(PyObject *)).  The
 *     producer writes a NEW reference into each window slot; the stream's
 *     drop_items hook releases the references of items leaving the window.
 *     Both run on the producer's thread with the GIL held (greenlet run():
 *     in whichever greenlet refills the window).
 *   - A consumer is any callable taking one iterator.  consumer_entry (the
 *     C consumer function) calls it with a lockstep.Iterator whose
 *     __next__ is the core's lockstep_next, and keeps its result or its
 *     exception.  A cancelled consumer sees its iterator end.
 *   - Engines: "greenlet" is a cooperative engine defined here, each
 *     consumer on its own greenlet, switching as the core's fiber engine
 *     does (direct hand-off; in run() the consumer that ends a round
 *     refills the window from the source); "thread" is the core's thread
 *     engine, the GIL released by a blocking hook while the producer waits
 *     and by Iterator.__next__ while a consumer waits; "buffer" is the
 *     core's reference engine.
 *   - Misuse never crashes: an iterator works only inside the consumer it
 *     was made for (a thread-local "current consumer" says which one runs),
 *     and Stream methods refuse re-entrant or foreign-thread calls.
 *
 * Public objects: run(), Stream, Iterator, engines(), DEFAULT_WINDOW.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "internal.h"

#ifndef LOCKSTEP_HAVE_GREENLET
#  define LOCKSTEP_HAVE_GREENLET 0
#endif
#if LOCKSTEP_HAVE_GREENLET
#  include "greenlet.h"
#endif

#include <string.h>

/* Windows used when window=None, per engine; chosen by the sweep in
 * python/README.md (sum and max over range(10**6)): the smallest window on
 * each engine's plateau, within a 128 KiB tracemalloc peak. */
#define PYLOCKSTEP_WINDOW_GREENLET 512
#define PYLOCKSTEP_WINDOW_THREAD 2048
#define PYLOCKSTEP_WINDOW_BUFFER 512

/* The code a consumer or the producer fails with when the failure is a
 * Python exception; the exception itself is kept by the binding. */
#define PYLOCKSTEP_EPYTHON (-1)

/* The producer checks for signals (KeyboardInterrupt) every this many items. */
#define PYLOCKSTEP_SIGNAL_EVERY 256u

typedef enum { ENG_GREENLET = 0, ENG_THREAD, ENG_BUFFER, ENG_COUNT_ } pyengine;

static const char *const engine_names[ENG_COUNT_] = {"greenlet", "thread", "buffer"};
static const size_t default_windows[ENG_COUNT_] = {
    PYLOCKSTEP_WINDOW_GREENLET, PYLOCKSTEP_WINDOW_THREAD, PYLOCKSTEP_WINDOW_BUFFER};

/* The consumer whose Python code runs on this thread right now, or NULL.
 * Iterator.__next__ works only when this is its own consumer.  The
 * initial-exec model keeps the fast path free of __tls_get_addr calls. */
static _Thread_local lockstep_iter *tls_current __attribute__((tls_model("initial-exec")));

/* ------------------------------------------------------------------------
 * Module state and the run state shared by run() and Stream.
 * ------------------------------------------------------------------------ */

typedef struct {
    PyTypeObject *iter_type;
    PyTypeObject *stream_type;
    PyObject *marker;      /* what a consumer greenlet passes when it suspends */
    PyObject *marker_args; /* (marker,) */
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
};

/* Returns the state of the module that defines type. */
static modstate *type_state(PyTypeObject *type)
{
    return PyType_GetModuleState(type);
}

/* ------------------------------------------------------------------------
 * Exceptions.
 * ------------------------------------------------------------------------ */

/* Takes the pending exception and returns it normalized, with its traceback
 * attached (a new reference; never NULL). */
static PyObject *fetch_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        type = Py_NewRef(PyExc_SystemError);
        value = PyUnicode_FromString("lockstep: consumer failed without an exception");
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL) /* normalizing failed badly: fall back to MemoryError */
        value = Py_NewRef(PyExc_MemoryError);
    return value;
}

/* Raises exc (stolen) as the pending exception, with its own traceback. */
static void raise_exception(PyObject *exc)
{
    if (PyExceptionClass_Check(exc)) {
        PyErr_SetNone(exc);
        Py_DECREF(exc);
        return;
    }
    PyObject *tb = PyException_GetTraceback(exc);
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, tb);
}

/* Raises the Python exception that stands for library code rc; returns NULL. */
static PyObject *raise_code(int rc)
{
    switch (rc) {
    case LOCKSTEP_ENOMEM:
        return PyErr_NoMemory();
    case LOCKSTEP_EINVAL:
        PyErr_Format(PyExc_ValueError, "lockstep: %s", lockstep_strerror(rc));
        return NULL;
    case LOCKSTEP_ENOTSUP:
        PyErr_Format(PyExc_ImportError, "lockstep: %s", lockstep_strerror(rc));
        return NULL;
    default:
        PyErr_Format(PyExc_RuntimeError, "lockstep: %s (%d)", lockstep_strerror(rc), rc);
        return NULL;
    }
}

/* ------------------------------------------------------------------------
 * Iterator: a consumer's view of the stream.
 * ------------------------------------------------------------------------ */

/* Raises the RuntimeError for an iterator used where it may not be; NULL. */
static __attribute__((noinline, cold)) PyObject *iter_misuse(IterObject *self)
{
    if (self->it == NULL)
        PyErr_SetString(PyExc_RuntimeError,
                        "lockstep iterator used after its consumer returned");
    else
        PyErr_SetString(PyExc_RuntimeError,
                        "lockstep iterator used outside its own consumer "
                        "(from another consumer, thread or greenlet)");
    return NULL;
}

/* The slow path of __next__: the window is used up, so wait for the
 * producer in the engine's way.  Out of line, so that the fast path needs
 * no stack frame of its own.  Returns a new reference, or NULL with
 * StopIteration implied (end or cancellation) or an exception set. */
static __attribute__((noinline)) PyObject *iter_next_slow(IterObject *self, lockstep_iter *it)
{
    const void *p;
    switch (self->engine) {
#if LOCKSTEP_HAVE_GREENLET
    case ENG_GREENLET: {
        PyGreenlet *cur = PyGreenlet_GetCurrent();
        Py_XDECREF(cur);
        if ((PyObject *)cur != self->greenlet)
            return iter_misuse(self);
        p = lockstep_next(it); /* may switch to another consumer's or the producer's greenlet */
        break;
    }
#endif
    case ENG_THREAD:
        Py_BEGIN_ALLOW_THREADS
        p = lockstep_next(it);
        Py_END_ALLOW_THREADS
        break;
    default:
        p = lockstep_next(it);
        break;
    }
    if (p != NULL)
        return Py_NewRef(*(PyObject *const *)p);
    if (PyErr_Occurred())
        return NULL;
    if (it->stream->misuse != 0)
        return raise_code(it->stream->misuse);
    return NULL;
}

/* __next__: the core's fast path, inlined, behind the ownership check. */
static PyObject *iter_next(IterObject *self)
{
    lockstep_iter *it = self->it;
    if (NEVER(it == NULL || it != tls_current))
        return iter_misuse(self);
    if (ALWAYS(it->head.cur < it->head.end)) {
        PyObject *item = *(PyObject *const *)it->head.cur;
        it->head.cur += sizeof(PyObject *);
        return Py_NewRef(item);
    }
    return iter_next_slow(self, it);
}

/* Returns whether self's consumer is still running. */
static PyObject *iter_get_active(IterObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->it != NULL);
}

/* Returns how many items the consumer has received; its own consumer only. */
static PyObject *iter_get_position(IterObject *self, void *closure)
{
    (void)closure;
    if (self->it == NULL || self->it != tls_current)
        return iter_misuse(self);
    return PyLong_FromUnsignedLongLong(lockstep_position(self->it));
}

static PyObject *iter_repr(IterObject *self)
{
    if (self->it == NULL)
        return PyUnicode_FromFormat("<lockstep.Iterator (finished) at %p>", self);
    return PyUnicode_FromFormat("<lockstep.Iterator consumer=%zu engine=%s at %p>",
                                lockstep_index(self->it), engine_names[self->engine], self);
}

/* Iterator objects hold no Python references, so they need no GC. */
static void iter_dealloc(IterObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyGetSetDef iter_getset[] = {
    {"active", (getter)iter_get_active, NULL,
     "True while the consumer this iterator was made for is running.", NULL},
    {"position", (getter)iter_get_position, NULL,
     "Number of items this consumer has received (only inside the consumer).", NULL},
    {NULL},
};

PyDoc_STRVAR(iter_doc,
"The iterator lockstep hands each consumer.\n\n"
"It yields the stream's items in order and ends at the end of the stream,\n"
"or early when the run is cancelled because another consumer or the\n"
"source failed.  It works only inside the consumer it was given to:\n"
"using it after that consumer returned, from another consumer, or from\n"
"another thread raises RuntimeError.");

static PyType_Slot iter_slots[] = {
    {Py_tp_doc, (void *)iter_doc},
    {Py_tp_dealloc, iter_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, iter_next},
    {Py_tp_repr, iter_repr},
    {Py_tp_getset, iter_getset},
    {0, NULL},
};

static PyType_Spec iter_spec = {
    .name = "lockstep.Iterator",
    .basicsize = sizeof(IterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = iter_slots,
};

/* Makes the iterator for consumer it of rs; a new reference or NULL. */
static IterObject *iter_make(runstate *rs, lockstep_iter *it)
{
    IterObject *io = PyObject_New(IterObject, rs->st->iter_type);
    if (io == NULL)
        return NULL;
    io->it = it;
    io->engine = rs->engine;
    io->greenlet = NULL;
    return io;
}

/* ------------------------------------------------------------------------
 * Consumers and items.
 * ------------------------------------------------------------------------ */

/* The C consumer function behind every Python consumer: calls it with its
 * iterator, keeps the result (returns 0) or the exception (returns
 * PYLOCKSTEP_EPYTHON).  On a consumer thread it takes the GIL itself. */
static int consumer_entry(lockstep_iter *it, void *arg)
{
    slot *sl = arg;
    runstate *rs = sl->rs;
    PyGILState_STATE gil = PyGILState_LOCKED;
    int rc = PYLOCKSTEP_EPYTHON;
    if (rs->engine == ENG_THREAD)
        gil = PyGILState_Ensure();
    lockstep_iter *saved = tls_current;
    if (sl->iter == NULL && (sl->iter = iter_make(rs, it)) == NULL) {
        sl->exc = fetch_exception();
        goto done;
    }
    tls_current = it;
    PyObject *result = PyObject_CallOneArg(sl->consumer, (PyObject *)sl->iter);
    tls_current = saved;
    sl->iter->it = NULL;
    if (result == NULL) {
        sl->exc = fetch_exception();
        goto done;
    }
    sl->result = result;
    rc = 0;
done:
    if (rs->engine == ENG_THREAD)
        PyGILState_Release(gil);
    return rc;
}

/* drop_items hook: releases the references held by items leaving the
 * window.  Called on the producer's thread with the GIL held. */
static void drop_items(void *arg, void *items, size_t count)
{
    (void)arg;
    PyObject **p = items;
    for (size_t i = 0; i < count; i++)
        Py_DECREF(p[i]);
}

/* Blocking hook for the thread engine: the producer lets go of the GIL
 * while it waits for consumer threads, and takes it back after. */
static void *gil_release(void *arg)
{
    (void)arg;
    return PyEval_SaveThread();
}

static void gil_acquire(void *arg, void *token)
{
    (void)arg;
    PyEval_RestoreThread(token);
}

/* ------------------------------------------------------------------------
 * The greenlet engine: what src/engine_fiber.c does with fibers, with
 * greenlets.  Consumer greenlets are children of the producer's greenlet
 * (the one current at open), which starts each of them.  A consumer that
 * has taken the window switches straight to the next live consumer of the
 * round (lockstep__round_next), and the last one back to the producer; in
 * run(), the consumer that ends a round refills the window from the source
 * itself and begins the next round (lockstep__round_again), and rounds
 * alternate direction, so with two consumers at window 1 an item costs one
 * switch instead of four.  Every deliberate switch passes the module's
 * marker, and a finished consumer's greenlet returns it: anything else
 * reaching the producer's greenlet came from consumer code switching
 * behind lockstep's back.
 * ------------------------------------------------------------------------ */

#if LOCKSTEP_HAVE_GREENLET

/* Loads greenlet's C API once; returns 0, or -1 with ImportError set. */
static int greenlet_load(void)
{
    if (_PyGreenlet_API != NULL)
        return 0;
    PyGreenlet_Import();
    if (_PyGreenlet_API != NULL)
        return 0;
    PyObject *cause = fetch_exception();
    PyErr_Format(PyExc_ImportError,
                 "lockstep engine 'greenlet' needs the greenlet package, which could not be "
                 "imported (%S); install it (pip install greenlet, or apt install "
                 "python3-greenlet) or pass engine='thread'",
                 cause);
    PyObject *exc = fetch_exception();
    PyException_SetCause(exc, cause); /* steals cause */
    raise_exception(exc);
    return -1;
}

/* The run function of a consumer's greenlet: self is its Iterator.  The
 * producer's greenlet starts it (with the marker as argument, ignored);
 * when the consumer has returned it goes back to its parent, the
 * producer's greenlet, with the marker: "finished, go on with the round". */
static PyObject *greenlet_body(PyObject *self, PyObject *unused_args)
{
    (void)unused_args;
    lockstep_iter *it = ((IterObject *)self)->it;
    if (NEVER(it == NULL))
        Py_RETURN_NONE;
    slot *sl = it->consumer.arg;
    runstate *rs = sl->rs;
    sl->begun = 1;
    rs->running = it;
    lockstep__consumer_main(it);
    rs->running = NULL;
    return Py_NewRef(rs->st->marker);
}

static PyMethodDef greenlet_body_def = {"_lockstep_consumer", greenlet_body, METH_VARARGS, NULL};

/* Records an exception met while switching greenlets as a library failure
 * at stream position pos: the run is cancelled there and raises it. */
static void greenlet_failed(lockstep_stream *s, uint64_t pos)
{
    runstate *rs = s->engine_arg;
    PyObject *exc = fetch_exception();
    if (rs->lib_exc == NULL)
        rs->lib_exc = exc;
    else
        Py_DECREF(exc);
    lockstep__record_failure(s, pos, LOCKSTEP__RANK_LIBRARY, LOCKSTEP_ESTATE);
}

/* open: remembers the producer's greenlet, then lets the core allocate the
 * window and start every consumer. */
static int greenlet_open(lockstep_stream *s)
{
    runstate *rs = s->engine_arg;
    rs->scheduler = (PyObject *)PyGreenlet_GetCurrent();
    if (rs->scheduler == NULL)
        return LOCKSTEP_ENOMEM;
    int rc = lockstep__coop_open(s);
    if (rc < 0)
        Py_CLEAR(rs->scheduler);
    return rc;
}

/* destroy: every consumer greenlet has finished; free them and the window. */
static void greenlet_destroy(lockstep_stream *s)
{
    runstate *rs = s->engine_arg;
    lockstep__coop_destroy(s);
    Py_CLEAR(rs->scheduler);
}

/* coop_create: a greenlet that will run lockstep__consumer_main(it). */
static int greenlet_create(lockstep_stream *s, lockstep_iter *it)
{
    runstate *rs = s->engine_arg;
    slot *sl = it->consumer.arg;
    int rc = LOCKSTEP_ENOMEM;
    IterObject *io = iter_make(rs, it);
    PyObject *body = NULL;
    if (io == NULL)
        goto done;
    body = PyCMethod_New(&greenlet_body_def, (PyObject *)io, NULL, NULL);
    if (body == NULL)
        goto done;
    PyGreenlet *g = PyGreenlet_New(body, (PyGreenlet *)rs->scheduler);
    if (g == NULL)
        goto done;
    io->greenlet = (PyObject *)g;
    it->engine_data = g;
    sl->iter = (IterObject *)Py_NewRef(io);
    rc = 0;
done:
    Py_XDECREF(body);
    Py_XDECREF(io);
    return rc;
}

/* From the producer's greenlet, switches to it's and returns once control
 * comes back with the marker: the round (or a later one) has ended, or a
 * consumer finished, or a consumer asked for s->current to be started.
 * While a consumer refills the window, the source it runs stands in for the
 * producer: whatever reaches the producer's greenlet then (a value switched
 * to it, an exception thrown at it, say a gevent.Timeout) goes back to the
 * source, as a switch to the current greenlet or an exception raised in the
 * producer would have done when the producer called the source.  Anything
 * else came from consumer code switching here behind lockstep's back: a
 * RuntimeError is thrown into the consumer greenlet that ran last until it
 * passes control on properly.  Failures are recorded, never returned, so
 * the round always completes. */
static void greenlet_resume(lockstep_stream *s, lockstep_iter *it)
{
    runstate *rs = s->engine_arg;
    PyObject *marker = rs->st->marker;
    lockstep_iter *saved = tls_current;
    rs->running = it;
    PyObject *r = PyGreenlet_Switch((PyGreenlet *)it->engine_data, rs->st->marker_args, NULL);
    tls_current = saved;
    while (r != marker) {
        PyGreenlet *g = rs->running != NULL ? rs->running->engine_data : NULL;
        int active = g != NULL && PyGreenlet_ACTIVE(g);
        if (rs->refilling && active) {
            tls_current = NULL;
            if (r == NULL) {
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                PyErr_NormalizeException(&type, &value, &tb);
                r = PyGreenlet_Throw(g, type, value, tb);
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
            } else {
                PyObject *args = PyTuple_Pack(1, r);
                Py_DECREF(r);
                r = args != NULL ? PyGreenlet_Switch(g, args, NULL) : NULL;
                Py_XDECREF(args);
            }
            tls_current = saved;
            continue;
        }
        if (r == NULL)
            break;
        Py_DECREF(r);
        r = NULL;
        if (!active) {
            PyErr_SetString(PyExc_RuntimeError, "lockstep: a greenlet switched to the producer "
                                                 "outside lockstep's control");
            break;
        }
        PyObject *msg = PyUnicode_FromString("lockstep consumer switched greenlets "
                                             "outside lockstep's control");
        tls_current = rs->running; /* its consumer goes on where it switched */
        r = PyGreenlet_Throw(g, PyExc_RuntimeError, msg, NULL);
        Py_XDECREF(msg);
        tls_current = saved;
    }
    if (r == NULL)
        greenlet_failed(s, rs->running != NULL ? lockstep__iter_pos(rs->running) : s->read);
    Py_XDECREF(r);
    rs->running = NULL;
}

/* dispatch: one round.  The producer's greenlet runs its first consumer; the
 * others follow by hand-off, and in run() further rounds too.  Control comes
 * back here when a round ends with no refill, when a consumer finishes (go
 * on with the round) and when the next consumer's greenlet has not started
 * yet: new greenlets are started from here only, so that they all begin at
 * the same depth of the C stack (a greenlet started from inside another
 * lives below it, and a chain of n would need n consumers' stacks). */
static int greenlet_dispatch(lockstep_stream *s)
{
    lockstep_iter *it = lockstep__round_begin(s);
    while (it != NULL) {
        greenlet_resume(s, it);
        it = s->current;
        if (it == NULL || it->done || ((slot *)it->consumer.arg)->begun)
            it = lockstep__round_next(s);
    }
    if (s->dispatching) /* else the consumer that ended the last round did */
        lockstep__round_end(s);
    return 0;
}

static lockstep_iter *greenlet_round_again(runstate *rs, lockstep_stream *s);

/* lockstep__round_again from inside it's greenlet: ends the round, refills
 * the window from the source and begins the next round.  The source and
 * the drop_items hook run as they would in the producer's greenlet: no
 * consumer current (tls_current), the producer's contextvars context (a
 * generator source may read a ContextVar, decimal's context for one), and
 * no exception being handled (so that a source's exception is not chained
 * to one the consumer is handling).  The source's own exceptions are kept
 * by rs_source; any other would be a bug, and is recorded, not leaked. */
static lockstep_iter *greenlet_refill(lockstep_stream *s, lockstep_iter *it)
{
    runstate *rs = s->engine_arg;
    PyThreadState *ts = PyThreadState_Get();
    PyObject *own_context = ts->context;
    _PyErr_StackItem *own_exc_info = ts->exc_info;
    _PyErr_StackItem no_exc_info;
    memset(&no_exc_info, 0, sizeof no_exc_info);
    ts->context = rs->context; /* lent: moves back to rs below */
    ts->context_ver++;
    ts->exc_info = &no_exc_info;
    tls_current = NULL;
    rs->refilling = 1;
    lockstep_iter *next = greenlet_round_again(rs, s);
    rs->refilling = 0;
    tls_current = it;
    rs->context = ts->context;
    ts->context = own_context;
    ts->context_ver++;
    ts->exc_info = own_exc_info;
    Py_CLEAR(no_exc_info.exc_value);
#if PY_VERSION_HEX < 0x030B0000
    Py_CLEAR(no_exc_info.exc_type);
    Py_CLEAR(no_exc_info.exc_traceback);
#endif
    if (NEVER(PyErr_Occurred()))
        greenlet_failed(s, s->read);
    return next;
}

/* it has taken what the window offers it, so control passes on: straight
 * to the next live consumer of the round; at the end of a round in run(),
 * to the first consumer of the next round after refilling the window here
 * (possibly it itself: then no switch at all); else to the producer.
 * Returns 0 once it runs again, or -1 if it was resumed behind lockstep's
 * back (its iterator then returns NULL). */
static inline __attribute__((always_inline)) int greenlet_pass_on(lockstep_iter *it)
{
    lockstep_stream *s = it->stream;
    runstate *rs = s->engine_arg;
    lockstep_iter *next = lockstep__round_next(s);
    if (next == NULL && rs->refill_here)
        next = greenlet_refill(s, it);
    if (next == it)
        return 0;
    PyObject *to = rs->scheduler;
    rs->running = NULL;
    if (next != NULL && ((slot *)next->consumer.arg)->begun) {
        to = next->engine_data;
        rs->running = next;
    }
    PyObject *r = PyGreenlet_Switch((PyGreenlet *)to, rs->st->marker_args, NULL);
    tls_current = it;
    rs->running = it;
    if (NEVER(r == NULL)) /* thrown into: cancel the run here; the consumer sees the exception */
        lockstep__record_failure(s, lockstep__iter_pos(it), LOCKSTEP__RANK_LIBRARY,
                                 LOCKSTEP_ESTATE);
    Py_XDECREF(r);
    if (NEVER(!lockstep__iter_is_current(it)))
        return -1;
    return 0;
}

/* next_slow: the core's cooperative slow path, passing on by greenlet. */
static const void *greenlet_next_slow(lockstep_iter *it)
{
    return lockstep__next_slow_with(it, greenlet_pass_on);
}

/* coop_destroy: drops it's greenlet, which has finished or never started. */
static void greenlet_free(lockstep_stream *s, lockstep_iter *it)
{
    (void)s;
    PyObject *g = it->engine_data;
    it->engine_data = NULL;
    Py_XDECREF(g);
}

static const lockstep__engine_ops greenlet_ops = {
    .name = "greenlet",
    .open = greenlet_open,
    .dispatch = greenlet_dispatch,
    .finish = lockstep__coop_finish,
    .destroy = greenlet_destroy,
    .next_slow = greenlet_next_slow,
    .coop_create = greenlet_create,
    .coop_destroy = greenlet_free,
};

#else /* !LOCKSTEP_HAVE_GREENLET */

static int greenlet_load(void)
{
    PyErr_SetString(PyExc_ImportError,
                    "lockstep engine 'greenlet' is unavailable: this build of lockstep was "
                    "compiled without greenlet's C headers (python-greenlet-dev); pass "
                    "engine='thread'");
    return -1;
}

#endif /* LOCKSTEP_HAVE_GREENLET */

/* ------------------------------------------------------------------------
 * Argument checking and the run state's life cycle.
 * ------------------------------------------------------------------------ */

/* Returns 1 when the core in this build has a working thread engine. */
static int thread_available(void)
{
    return lockstep_engine_available(LOCKSTEP_ENGINE_THREAD);
}

/* Parses engine= (None or a name) into *out, loading greenlet if needed.
 * Returns 0, or -1 with ValueError (unknown name) or ImportError set. */
static int parse_engine(PyObject *obj, pyengine *out)
{
    if (obj == NULL || obj == Py_None) {
        if (greenlet_load() == 0) {
            *out = ENG_GREENLET;
            return 0;
        }
        PyErr_Clear();
        *out = thread_available() ? ENG_THREAD : ENG_BUFFER;
        return 0;
    }
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "engine must be None or a str, not %.200s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    for (int e = 0; e < ENG_COUNT_; e++) {
        if (PyUnicode_CompareWithASCIIString(obj, engine_names[e]) != 0)
            continue;
        *out = (pyengine)e;
        if (e == ENG_GREENLET)
            return greenlet_load();
        if (e == ENG_THREAD && !thread_available()) {
            PyErr_SetString(PyExc_ImportError,
                            "lockstep engine 'thread' is not available in this build of the "
                            "lockstep core");
            return -1;
        }
        return 0;
    }
    PyErr_Format(PyExc_ValueError,
                 "unknown lockstep engine %R; expected None, 'greenlet', 'thread' or 'buffer'",
                 obj);
    return -1;
}

/* Parses window= (None or an int >= 1) into *out; None leaves *out 0,
 * for the engine's default.  Returns 0 or -1. */
static int parse_window(PyObject *obj, size_t *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = 0;
        return 0;
    }
    Py_ssize_t w = PyNumber_AsSsize_t(obj, PyExc_OverflowError);
    if (w == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            w = PY_SSIZE_T_MAX;
        } else {
            return -1;
        }
    }
    if (w < 1 || (size_t)w > LOCKSTEP_MAX_WINDOW) {
        PyErr_Format(PyExc_ValueError, "window must be between 1 and %zu, not %R",
                     (size_t)LOCKSTEP_MAX_WINDOW, obj);
        return -1;
    }
    *out = (size_t)w;
    return 0;
}

/* Fills rs for n consumers: checks they are callable, parses window and
 * engine.  On failure (-1, exception set) rs owns whatever it took; call
 * rs_clear either way. */
static int rs_init(runstate *rs, modstate *st, PyObject *const *consumers, size_t n,
                   PyObject *window, PyObject *engine)
{
    memset(rs, 0, sizeof *rs);
    rs->st = st;
    for (size_t i = 0; i < n; i++) {
        if (!PyCallable_Check(consumers[i])) {
            PyErr_Format(PyExc_TypeError, "lockstep consumer %zu is not callable: %.200s object",
                         i, Py_TYPE(consumers[i])->tp_name);
            return -1;
        }
    }
    if (parse_window(window, &rs->window) < 0 || parse_engine(engine, &rs->engine) < 0)
        return -1;
    if (rs->window == 0)
        rs->window = default_windows[rs->engine];
    rs->slots = PyMem_Calloc(n ? n : 1, sizeof *rs->slots);
    if (rs->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    rs->n = n;
    for (size_t i = 0; i < n; i++) {
        rs->slots[i].consumer = Py_NewRef(consumers[i]);
        rs->slots[i].rs = rs;
    }
    return 0;
}

/* Releases every reference rs holds and its slot array.  The stream must
 * be closed (rs->s == NULL). */
static void rs_clear(runstate *rs)
{
    for (size_t i = 0; rs->slots != NULL && i < rs->n; i++) {
        slot *sl = &rs->slots[i];
        Py_CLEAR(sl->consumer);
        Py_CLEAR(sl->result);
        Py_CLEAR(sl->exc);
        Py_CLEAR(sl->iter);
    }
    PyMem_Free(rs->slots);
    rs->slots = NULL;
    rs->n = 0;
    Py_CLEAR(rs->src_exc);
    Py_CLEAR(rs->lib_exc);
    Py_CLEAR(rs->scheduler);
    Py_CLEAR(rs->context);
}

/* Opens rs's stream on its engine: consumers start and run up to their
 * first next().  Returns 0, or -1 with an exception set. */
static int rs_open(runstate *rs)
{
    int rc;
    lockstep_consumer *cs = PyMem_Calloc(rs->n ? rs->n : 1, sizeof *cs);
    if (cs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < rs->n; i++) {
        cs[i].fn = consumer_entry;
        cs[i].arg = &rs->slots[i];
    }
    lockstep_options o;
    lockstep_options_init(&o);
    o.window = rs->window;
    o.report = &rs->report;
    rs->owner = PyThread_get_thread_ident();
    rs->busy = 1;
    switch (rs->engine) {
#if LOCKSTEP_HAVE_GREENLET
    case ENG_GREENLET:
        rc = lockstep__open_ops(&rs->s, &greenlet_ops, rs, sizeof(PyObject *), cs, rs->n, &o);
        break;
#endif
    case ENG_THREAD:
        rs->hook.before_wait = gil_release;
        rs->hook.after_wait = gil_acquire;
        o.engine = LOCKSTEP_ENGINE_THREAD;
        o.blocking = &rs->hook;
        rc = lockstep_open(&rs->s, sizeof(PyObject *), cs, rs->n, &o);
        break;
    case ENG_BUFFER:
        o.engine = LOCKSTEP_ENGINE_BUFFER;
        rc = lockstep_open(&rs->s, sizeof(PyObject *), cs, rs->n, &o);
        break;
    default:
        rc = LOCKSTEP_ENOTSUP;
        break;
    }
    rs->busy = 0;
    PyMem_Free(cs);
    if (rc < 0) {
        rs->s = NULL;
        if (!PyErr_Occurred())
            raise_code(rc);
        return -1;
    }
    /* Nothing has been pushed yet, so the window holds no references. */
    rs->s->drop_items = drop_items;
    rs->s->drop_arg = rs;
    return 0;
}

/* Records the pending Python exception as the producer's failure at the
 * current stream position. */
static void rs_source_failed(runstate *rs)
{
    PyObject *exc = fetch_exception();
    Py_XSETREF(rs->src_exc, exc);
    (void)lockstep_fail(rs->s, PYLOCKSTEP_EPYTHON);
}

/* Counts one item; every PYLOCKSTEP_SIGNAL_EVERY items runs Python's signal
 * handlers.  Returns -1 when one raised (KeyboardInterrupt), else 0. */
static inline int rs_tick(runstate *rs)
{
    if (NEVER(++rs->tick >= PYLOCKSTEP_SIGNAL_EVERY)) {
        rs->tick = 0;
        return PyErr_CheckSignals();
    }
    return 0;
}

/* After a source's tp_iternext (or rs_tick) gave no item: returns 1 when
 * the source just ended (clearing a StopIteration it raised), 0 when it
 * failed (exception set). */
static inline int rs_ended(void)
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
static inline int rs_put(runstate *rs, PyObject *item)
{
    lockstep_stream *s = rs->s;
    ((PyObject **)s->win)[s->filled] = item;
    return lockstep__commit_one(s) != 0;
}

/* Pulls items from src into the stream until src ends or fails, or no
 * consumer wants more.  A failure of src (or a KeyboardInterrupt between
 * items) becomes the producer's failure when source_failure is set (run);
 * otherwise it is left pending and -1 returned (Stream.extend).  Returns 0
 * or -1. */
static int rs_pull(runstate *rs, PyObject *src, int source_failure)
{
    iternextfunc next = Py_TYPE(src)->tp_iternext;
    lockstep_stream *s = rs->s;
    /* Cooperative engines change the live count only inside dispatch, so
     * the loop asks again only after one; thread consumers may stop at any
     * moment, so it asks after every item, as lockstep_run does. */
    const int poll = rs->engine == ENG_THREAD;
    for (long live = lockstep_live(s); live > 0;) {
        PyObject *item = NULL;
        if (rs_tick(rs) == 0)
            item = next(src);
        if (item == NULL) {
            if (rs_ended())
                return 0;
            if (!source_failure)
                return -1;
            rs_source_failed(rs);
            return 0;
        }
        if (rs_put(rs, item) || poll)
            live = lockstep_live(s);
    }
    return 0;
}

#if LOCKSTEP_HAVE_GREENLET
/* run()'s source on the greenlet engine, a lockstep_source_fn: writes the
 * next item of rs->src (a new reference) into slot and returns 1; returns 0
 * at its end, or PYLOCKSTEP_EPYTHON with its exception (or a
 * KeyboardInterrupt met between items) kept as the producer's.  It runs in
 * the producer's greenlet or, through greenlet_refill, in the consumer's
 * that ends a round; either way no exception is left set. */
static inline int rs_source(void *arg, void *slot)
{
    runstate *rs = arg;
    PyObject *item = NULL;
    if (rs_tick(rs) == 0)
        item = rs->src_next(rs->src);
    if (ALWAYS(item != NULL)) {
        *(PyObject **)slot = item;
        return 1;
    }
    if (rs_ended())
        return 0;
    Py_XSETREF(rs->src_exc, fetch_exception());
    return PYLOCKSTEP_EPYTHON;
}

/* The core's refill helpers (lockstep__round_again_with, and
 * lockstep__pull_with below) take rs_source as a constant: they are always
 * inlined, so the source call is direct.  At the default window the source
 * call is most of the producer's cost per item, and the indirect call cost
 * about 1 ns of 20 (sum and max over range(10**6)). */
static lockstep_iter *greenlet_round_again(runstate *rs, lockstep_stream *s)
{
    return lockstep__round_again_with(s, rs_source, rs);
}

/* run()'s loop on the greenlet engine, lockstep__pull_with: the stream is in
 * pull mode, so that consumers refill the window themselves
 * (greenlet_refill).  Not when this run is itself inside a lockstep
 * consumer: its source may be that consumer's iterator, which works only in
 * the consumer's own greenlet, so the producer refills as before. */
static void greenlet_pull(runstate *rs, PyObject *src)
{
    lockstep_stream *s = rs->s;
    rs->src = src;
    rs->src_next = Py_TYPE(src)->tp_iternext;
    if (tls_current == NULL) {
        /* Copying makes sure the producer has a context object of its own,
         * which greenlet_refill lends to the consumer greenlets. */
        PyObject *copy = PyContext_CopyCurrent();
        if (copy == NULL) {
            rs_source_failed(rs);
            return;
        }
        Py_DECREF(copy);
        rs->context = Py_NewRef(PyThreadState_Get()->context);
        rs->refill_here = 1;
    }
    lockstep__pull_with(s, rs_source, rs);
    rs->refill_here = 0;
    rs->src = NULL;
}
#endif

/* Closes the stream and turns the outcome into a tuple of results (a new
 * reference) or a raised exception (NULL): the failure earliest in the
 * stream, as the core's report says. */
static PyObject *rs_close(runstate *rs)
{
    rs->busy = 1;
    (void)lockstep_close(rs->s);
    rs->busy = 0;
    rs->s = NULL;
    const lockstep_report *r = &rs->report;
    if (r->failed != LOCKSTEP_FAILED_NONE || r->code != 0) {
        PyObject **from = &rs->lib_exc;
        if (r->failed >= 0 && (size_t)r->failed < rs->n)
            from = &rs->slots[r->failed].exc;
        else if (r->failed == LOCKSTEP_FAILED_SOURCE)
            from = &rs->src_exc;
        PyObject *exc = *from;
        *from = NULL;
        if (exc == NULL)
            return raise_code(r->code < 0 && r->code != PYLOCKSTEP_EPYTHON ? r->code
                                                                          : LOCKSTEP_ESTATE);
        raise_exception(exc);
        return NULL;
    }
    PyObject *results = PyTuple_New((Py_ssize_t)rs->n);
    if (results == NULL)
        return NULL;
    for (size_t i = 0; i < rs->n; i++) {
        PyObject *v = rs->slots[i].result ? rs->slots[i].result : Py_None;
        PyTuple_SET_ITEM(results, (Py_ssize_t)i, Py_NewRef(v));
    }
    return results;
}

/* ------------------------------------------------------------------------
 * run()
 * ------------------------------------------------------------------------ */

PyDoc_STRVAR(run_doc,
"run($module, iterable, /, *consumers, window=None, engine=None)\n"
"--\n"
"\n"
"Run every consumer over one pass of iterable; return their results.\n"
"\n"
"Each consumer is any callable taking one iterator (sum, max, sorted,\n"
"collections.Counter, statistics.mean, a lambda, a generator-based\n"
"function...).  All of them see the same items, in order, while the\n"
"source is read exactly once and at most `window` items are held at a\n"
"time.  Returns a tuple with one result per consumer, in consumer order:\n"
"\n"
"    >>> s, m = lockstep.run(iter(range(1, 1000)), sum, max)\n"
"    >>> (s, m)\n"
"    (499500, 999)\n"
"\n"
"window: items handed over at once; None picks the engine's default\n"
"  (lockstep.DEFAULT_WINDOWS: greenlet 512, thread 2048); 1 is strict\n"
"  lockstep.\n"
"engine: None picks the best available, see lockstep.engines():\n"
"  'greenlet'  each consumer on its own greenlet (needs greenlet);\n"
"  'thread'    each consumer on its own thread; the GIL is released while\n"
"              waiting;\n"
"  'buffer'    read everything first, then run each consumer (the\n"
"              reference: unbounded memory).\n"
"\n"
"A consumer that returns early detaches and the others go on; once every\n"
"consumer has returned, at most window-1 further items have been pulled,\n"
"and the source iterator is left as it is (not closed).\n"
"\n"
"If a consumer or the source raises, the exception earliest in the stream\n"
"propagates with its traceback (ties: the lowest consumer index, and a\n"
"consumer before the source); the other consumers are cancelled -- their\n"
"iterator simply ends, so their finally blocks run.\n"
"\n"
"Raises TypeError for a non-callable consumer or a non-iterable source,\n"
"ValueError for window < 1 or an unknown engine, ImportError for an\n"
"engine this installation lacks, all before any item is pulled.");

/* run(iterable, /, *consumers, window=None, engine=None) */
static PyObject *py_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    PyObject *window = NULL, *engine = NULL, *src = NULL, *result = NULL;
    runstate rs;
    memset(&rs, 0, sizeof rs);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        if (PyUnicode_CompareWithASCIIString(name, "window") == 0)
            window = args[nargs + k];
        else if (PyUnicode_CompareWithASCIIString(name, "engine") == 0)
            engine = args[nargs + k];
        else {
            PyErr_Format(PyExc_TypeError, "run() got an unexpected keyword argument %R", name);
            return NULL;
        }
    }
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "run() missing required argument 'iterable' (pos 1)");
        return NULL;
    }
    if (rs_init(&rs, PyModule_GetState(module), args + 1, (size_t)(nargs - 1), window,
                engine) < 0)
        goto done;
    src = PyObject_GetIter(args[0]);
    if (src == NULL)
        goto done;
    if (rs_open(&rs) < 0)
        goto done;
    rs.busy = 1;
#if LOCKSTEP_HAVE_GREENLET
    if (rs.engine == ENG_GREENLET)
        greenlet_pull(&rs, src);
    else
#endif
        (void)rs_pull(&rs, src, 1);
    rs.busy = 0;
    result = rs_close(&rs);
done:
    Py_XDECREF(src);
    rs_clear(&rs);
    return result;
}

/* ------------------------------------------------------------------------
 * Stream: the push side.
 * ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    runstate *rs;      /* NULL once closed (or leaked, see stream_finalize) */
    PyObject *results; /* after a successful close */
    int closed;
} StreamObject;

/* Checks that the producer side may be used now: open, not re-entered,
 * and from the thread (and greenlet) that created the stream.  Returns 0
 * or -1 with RuntimeError set. */
static int stream_check(StreamObject *self)
{
    runstate *rs = self->rs;
    if (rs == NULL || rs->s == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "lockstep.Stream is closed");
        return -1;
    }
    if (rs->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "lockstep.Stream used re-entrantly (from a consumer, a source being "
                        "extended from, or a __del__ run by the stream)");
        return -1;
    }
    if (rs->owner != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "lockstep.Stream used from a thread other than the one that created it");
        return -1;
    }
#if LOCKSTEP_HAVE_GREENLET
    if (rs->engine == ENG_GREENLET) {
        PyGreenlet *cur = PyGreenlet_GetCurrent();
        Py_XDECREF(cur);
        if ((PyObject *)cur != rs->scheduler) {
            PyErr_SetString(PyExc_RuntimeError,
                            "lockstep.Stream used from a greenlet other than the one that "
                            "created it (for example from one of its consumers)");
            return -1;
        }
    }
#endif
    return 0;
}

/* Stream(*consumers, window=None, engine=None): opens the stream; every
 * consumer starts and runs up to its first next(). */
static PyObject *stream_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"window", "engine", NULL};
    PyObject *window = NULL, *engine = NULL;
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL)
        return NULL;
    int ok = PyArg_ParseTupleAndKeywords(empty, kwargs, "|$OO:Stream", kwlist, &window, &engine);
    Py_DECREF(empty);
    if (!ok)
        return NULL;
    StreamObject *self = (StreamObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    runstate *rs = PyMem_Calloc(1, sizeof *rs);
    if (rs == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->rs = rs;
    if (rs_init(rs, type_state(type), &PyTuple_GET_ITEM(args, 0),
                (size_t)PyTuple_GET_SIZE(args), window, engine) < 0 ||
        rs_open(rs) < 0) {
        Py_DECREF(self); /* dealloc clears rs: the stream never opened */
        return NULL;
    }
    return (PyObject *)self;
}

/* Pushes one item (a new reference, stolen) unless nobody wants it; returns
 * the live count as lockstep_push does. */
static long stream_put(runstate *rs, PyObject *item)
{
    if (lockstep_live(rs->s) <= 0) {
        Py_DECREF(item);
        return 0;
    }
    (void)rs_put(rs, item);
    return lockstep_live(rs->s);
}

PyDoc_STRVAR(stream_push_doc,
"push($self, item, /)\n--\n\n"
"Add one item to the stream; consumers run as windows fill.\n\n"
"Returns the number of consumers still wanting items (0: stop producing;\n"
"every consumer returned or the run failed).  Items pushed when nobody\n"
"is left are ignored.");

static PyObject *stream_push(StreamObject *self, PyObject *item)
{
    if (stream_check(self) < 0)
        return NULL;
    runstate *rs = self->rs;
    rs->busy = 1;
    long live = stream_put(rs, Py_NewRef(item));
    rs->busy = 0;
    return PyLong_FromLong(live);
}

PyDoc_STRVAR(stream_extend_doc,
"extend($self, iterable, /)\n--\n\n"
"Push every item of iterable, stopping early when no consumer is left.\n\n"
"Returns the live count as push() does.  An exception raised by\n"
"iterable propagates and leaves the stream open (inside a with block it\n"
"then fails the stream).");

static PyObject *stream_extend(StreamObject *self, PyObject *iterable)
{
    if (stream_check(self) < 0)
        return NULL;
    runstate *rs = self->rs;
    PyObject *src = PyObject_GetIter(iterable);
    if (src == NULL)
        return NULL;
    rs->busy = 1;
    int rc = rs_pull(rs, src, 0);
    rs->busy = 0;
    Py_DECREF(src);
    if (rc < 0)
        return NULL;
    return PyLong_FromLong(lockstep_live(rs->s));
}

PyDoc_STRVAR(stream_fail_doc,
"fail($self, exc, /)\n--\n\n"
"Record that the producer failed with exc at the current position.\n\n"
"Consumers wanting further items are cancelled; no more items may be\n"
"pushed.  close() then raises the failure earliest in the stream, which\n"
"is exc unless a consumer failed before this position.");

static PyObject *stream_fail(StreamObject *self, PyObject *exc)
{
    if (stream_check(self) < 0)
        return NULL;
    if (!PyExceptionInstance_Check(exc)) {
        PyErr_Format(PyExc_TypeError, "fail() needs an exception instance, not %.200s",
                     Py_TYPE(exc)->tp_name);
        return NULL;
    }
    runstate *rs = self->rs;
    if (rs->s->src_pending) {
        PyErr_SetString(PyExc_RuntimeError, "lockstep.Stream already failed");
        return NULL;
    }
    Py_XSETREF(rs->src_exc, Py_NewRef(exc));
    (void)lockstep_fail(rs->s, PYLOCKSTEP_EPYTHON);
    Py_RETURN_NONE;
}

/* Closes self's stream and frees its run state; returns the results tuple
 * (also kept in self->results) or NULL with the run's exception set. */
static PyObject *stream_do_close(StreamObject *self)
{
    runstate *rs = self->rs;
    PyObject *results = rs_close(rs);
    self->rs = NULL;
    self->closed = 1;
    rs_clear(rs);
    PyMem_Free(rs);
    if (results != NULL)
        Py_XSETREF(self->results, Py_NewRef(results));
    return results;
}

PyDoc_STRVAR(stream_close_doc,
"close($self, /)\n--\n\n"
"End the stream, let every consumer finish, and return their results.\n\n"
"Returns a tuple with one result per consumer, also kept in .results,\n"
"or raises the failure earliest in the stream as run() does.  Closing a\n"
"closed stream returns its results again (or raises RuntimeError if it\n"
"failed).");

static PyObject *stream_close(StreamObject *self, PyObject *unused)
{
    (void)unused;
    if (self->closed) {
        if (self->results != NULL)
            return Py_NewRef(self->results);
        PyErr_SetString(PyExc_RuntimeError, "lockstep.Stream failed; it has no results");
        return NULL;
    }
    if (stream_check(self) < 0)
        return NULL;
    return stream_do_close(self);
}

static PyObject *stream_enter(StreamObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(self);
}

/* __exit__: closes the stream.  An exception from the with block fails the
 * stream first; it goes on propagating unless a consumer failed earlier in
 * the stream, in which case that consumer's exception is raised instead. */
static PyObject *stream_exit(StreamObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = nargs >= 2 ? args[1] : Py_None;
    if (self->closed)
        Py_RETURN_FALSE;
    if (stream_check(self) < 0)
        return NULL;
    runstate *rs = self->rs;
    if (exc != Py_None && PyExceptionInstance_Check(exc) && !rs->s->src_pending) {
        Py_XSETREF(rs->src_exc, Py_NewRef(exc));
        (void)lockstep_fail(rs->s, PYLOCKSTEP_EPYTHON);
    }
    PyObject *results = stream_do_close(self);
    if (results == NULL) {
        if (exc == Py_None)
            return NULL;
        /* The with block's own exception won: let it propagate as it is. */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        if (v == exc) {
            Py_XDECREF(t);
            Py_XDECREF(v);
            Py_XDECREF(tb);
            Py_RETURN_FALSE;
        }
        PyErr_Restore(t, v, tb);
        return NULL;
    }
    Py_DECREF(results);
    Py_RETURN_FALSE;
}

static PyObject *stream_get_live(StreamObject *self, void *closure)
{
    (void)closure;
    if (self->rs == NULL || self->rs->s == NULL)
        return PyLong_FromLong(0);
    return PyLong_FromLong(lockstep_live(self->rs->s));
}

static PyObject *stream_get_results(StreamObject *self, void *closure)
{
    (void)closure;
    if (self->results == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        self->closed ? "lockstep.Stream failed; it has no results"
                                     : "lockstep.Stream is still open; close it first");
        return NULL;
    }
    return Py_NewRef(self->results);
}

static PyObject *stream_get_closed(StreamObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->closed);
}

static PyObject *stream_repr(StreamObject *self)
{
    if (self->rs == NULL)
        return PyUnicode_FromFormat("<lockstep.Stream %s at %p>",
                                    self->closed ? "closed" : "unopened", self);
    return PyUnicode_FromFormat("<lockstep.Stream engine=%s window=%zu consumers=%zu live=%ld at %p>",
                                engine_names[self->rs->engine], self->rs->window, self->rs->n,
                                self->rs->s ? lockstep_live(self->rs->s) : 0L, self);
}

/* tp_finalize: a stream dropped while open is failed and closed, so that
 * its consumers finish (their iterators end).  That is only possible from
 * the thread and greenlet that created it; elsewhere the stream and its
 * consumers are deliberately leaked (a ResourceWarning says so) rather
 * than resumed in the wrong context. */
static void stream_finalize(StreamObject *self)
{
    runstate *rs = self->rs;
    if (rs == NULL || rs->s == NULL)
        return;
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (stream_check(self) == 0) {
        PyErr_WarnFormat(PyExc_ResourceWarning, 1,
                         "lockstep.Stream was never closed; its consumers were cancelled");
        if (!rs->s->src_pending)
            (void)lockstep_fail(rs->s, PYLOCKSTEP_EPYTHON);
        PyObject *results = stream_do_close(self);
        if (results == NULL)
            PyErr_Clear(); /* the outcome of a dropped stream has nobody to go to */
        Py_XDECREF(results);
    } else {
        PyErr_Clear();
        PyErr_WarnFormat(PyExc_ResourceWarning, 1,
                         "lockstep.Stream was dropped while open outside its own thread or "
                         "greenlet; its consumers are leaked");
        self->rs = NULL; /* leaked on purpose: consumers may still point into it */
    }
    if (PyErr_Occurred())
        PyErr_WriteUnraisable((PyObject *)self);
    PyErr_Restore(t, v, tb);
}

/* GC: an open stream's greenlets and iterators are not visited (they may
 * be suspended mid-consumer and must not be torn down by the collector);
 * everything else is. */
static int stream_traverse(StreamObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->results);
    runstate *rs = self->rs;
    if (rs == NULL)
        return 0;
    for (size_t i = 0; rs->slots != NULL && i < rs->n; i++) {
        Py_VISIT(rs->slots[i].consumer);
        Py_VISIT(rs->slots[i].result);
        Py_VISIT(rs->slots[i].exc);
    }
    Py_VISIT(rs->src_exc);
    Py_VISIT(rs->lib_exc);
    return 0;
}

/* GC: clears only what a closed stream holds; an open stream is closed
 * by stream_finalize first, which the collector always runs before this. */
static int stream_clear(StreamObject *self)
{
    Py_CLEAR(self->results);
    runstate *rs = self->rs;
    if (rs != NULL && rs->s == NULL) {
        self->rs = NULL;
        rs_clear(rs);
        PyMem_Free(rs);
    }
    return 0;
}

static void stream_dealloc(StreamObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(self);
    (void)stream_clear(self);
    if (self->rs != NULL) /* still open: leak it rather than free live memory */
        self->rs = NULL;
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef stream_methods[] = {
    {"push", (PyCFunction)stream_push, METH_O, stream_push_doc},
    {"extend", (PyCFunction)stream_extend, METH_O, stream_extend_doc},
    {"fail", (PyCFunction)stream_fail, METH_O, stream_fail_doc},
    {"close", (PyCFunction)stream_close, METH_NOARGS, stream_close_doc},
    {"__enter__", (PyCFunction)stream_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))stream_exit, METH_FASTCALL, NULL},
    {NULL},
};

static PyGetSetDef stream_getset[] = {
    {"live", (getter)stream_get_live, NULL,
     "Consumers still wanting items; 0 means stop producing.", NULL},
    {"results", (getter)stream_get_results, NULL,
     "Tuple of results after a successful close (RuntimeError before).", NULL},
    {"closed", (getter)stream_get_closed, NULL, "True once the stream is closed.", NULL},
    {NULL},
};

PyDoc_STRVAR(stream_doc,
"Stream(*consumers, window=None, engine=None)\n"
"--\n"
"\n"
"The push side of lockstep, for callback-driven sources.\n"
"\n"
"Creating the stream starts every consumer (each runs up to its first\n"
"next()).  Feed it with push(item) or extend(iterable); both return the\n"
"number of consumers still wanting items (also .live; 0 means stop).\n"
"close() ends the stream and returns the results tuple (also .results),\n"
"or raises the failure earliest in the stream, exactly as run() does:\n"
"\n"
"    with lockstep.Stream(sum, max) as st:\n"
"        for x in source:\n"
"            if not st.push(x):\n"
"                break\n"
"    total, biggest = st.results\n"
"\n"
"Leaving the with block closes the stream; an exception from the block\n"
"fails it first (consumers are cancelled) and keeps propagating unless a\n"
"consumer failed earlier in the stream.\n"
"\n"
"A stream belongs to the thread that created it -- and, with the\n"
"greenlet engine, to that greenlet: using it elsewhere, or from inside\n"
"one of its own consumers, raises RuntimeError.  All three engines work;\n"
"with engine='thread' the producer may be any thread, since consumer\n"
"threads take the GIL themselves.");

static PyType_Slot stream_slots[] = {
    {Py_tp_doc, (void *)stream_doc},
    {Py_tp_new, stream_new},
    {Py_tp_dealloc, stream_dealloc},
    {Py_tp_finalize, stream_finalize},
    {Py_tp_traverse, stream_traverse},
    {Py_tp_clear, stream_clear},
    {Py_tp_methods, stream_methods},
    {Py_tp_getset, stream_getset},
    {Py_tp_repr, stream_repr},
    {0, NULL},
};

static PyType_Spec stream_spec = {
    .name = "lockstep.Stream",
    .basicsize = sizeof(StreamObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = stream_slots,
};

/* ------------------------------------------------------------------------
 * Module.
 * ------------------------------------------------------------------------ */

PyDoc_STRVAR(engines_doc,
"engines($module, /)\n--\n\n"
"Return the engines usable here, best first; engine=None picks the first.");

static PyObject *py_engines(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    PyObject *names = PyList_New(0);
    if (names == NULL)
        return NULL;
    for (int e = 0; e < ENG_COUNT_; e++) {
        int ok = e == ENG_GREENLET ? greenlet_load() == 0
                 : e == ENG_THREAD ? thread_available()
                                   : 1;
        if (e == ENG_GREENLET)
            PyErr_Clear();
        if (!ok)
            continue;
        PyObject *name = PyUnicode_FromString(engine_names[e]);
        if (name == NULL || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    PyObject *tuple = PyList_AsTuple(names);
    Py_DECREF(names);
    return tuple;
}

static PyMethodDef module_methods[] = {
    {"run", (PyCFunction)(void (*)(void))py_run, METH_FASTCALL | METH_KEYWORDS, run_doc},
    {"engines", py_engines, METH_NOARGS, engines_doc},
    {NULL},
};

static int module_exec(PyObject *m)
{
    modstate *st = PyModule_GetState(m);
    st->iter_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &iter_spec, NULL);
    if (st->iter_type == NULL || PyModule_AddType(m, st->iter_type) < 0)
        return -1;
    st->stream_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &stream_spec, NULL);
    if (st->stream_type == NULL || PyModule_AddType(m, st->stream_type) < 0)
        return -1;
    st->marker = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (st->marker == NULL)
        return -1;
    st->marker_args = PyTuple_Pack(1, st->marker);
    if (st->marker_args == NULL)
        return -1;
    PyObject *windows = Py_BuildValue("{snsnsn}", "greenlet", (Py_ssize_t)PYLOCKSTEP_WINDOW_GREENLET,
                                      "thread", (Py_ssize_t)PYLOCKSTEP_WINDOW_THREAD, "buffer",
                                      (Py_ssize_t)PYLOCKSTEP_WINDOW_BUFFER);
    if (windows == NULL)
        return -1;
    int added = PyModule_AddObjectRef(m, "DEFAULT_WINDOWS", windows);
    Py_DECREF(windows);
    if (added < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "DEFAULT_WINDOW", PYLOCKSTEP_WINDOW_GREENLET) < 0 ||
        PyModule_AddIntConstant(m, "MAX_WINDOW", (long)LOCKSTEP_MAX_WINDOW) < 0 ||
        PyModule_AddStringConstant(m, "core_version", lockstep_version_string()) < 0 ||
        PyModule_AddIntConstant(m, "HAVE_GREENLET_ENGINE", LOCKSTEP_HAVE_GREENLET) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    modstate *st = PyModule_GetState(m);
    Py_VISIT(st->iter_type);
    Py_VISIT(st->stream_type);
    Py_VISIT(st->marker);
    Py_VISIT(st->marker_args);
    return 0;
}

static int module_clear(PyObject *m)
{
    modstate *st = PyModule_GetState(m);
    Py_CLEAR(st->iter_type);
    Py_CLEAR(st->stream_type);
    Py_CLEAR(st->marker);
    Py_CLEAR(st->marker_args);
    return 0;
}

static void module_free(void *m)
{
    (void)module_clear(m);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
"lockstep._lockstep: the C binding of the lockstep core (see the lockstep package).");

static struct PyModuleDef lockstep_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lockstep._lockstep",
    .m_doc = module_doc,
    .m_size = sizeof(modstate),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__lockstep(void)
{
    return PyModuleDef_Init(&lockstep_module);
}
