/*
 * run.c: the run state that run() and Stream share, and run() itself.  A
 * runstate holds the consumers' slots, the parsed window and engine, and
 * the core's stream; this file turns callables into C consumers
 * (consumer_entry, each called in its own context by pyls_call_in_context),
 * Python references into window items (pyls_drop_items), lets go of the
 * GIL while the thread engine's producer waits, opens the stream on the
 * chosen engine, pulls a source iterator into it and turns the core's
 * report into results or the exception earliest in the stream.  The
 * per-item helpers it shares with stream.c and greenlet_engine.c
 * (pyls_rs_put, pyls_rs_source...) are static inline in binding.h.
 */
#include "binding.h"

#include <string.h>

const char *const pyls_engine_names[ENG_COUNT_] = {"greenlet", "thread", "buffer"};
const size_t pyls_default_windows[2][ENG_COUNT_] = {
    {PYLOCKSTEP_WINDOW_GREENLET, PYLOCKSTEP_WINDOW_THREAD, PYLOCKSTEP_WINDOW_BUFFER},
    {PYLOCKSTEP_BYTES_WINDOW_GREENLET, PYLOCKSTEP_BYTES_WINDOW_THREAD,
     PYLOCKSTEP_BYTES_WINDOW_BUFFER},
};

/* ------------------------------------------------------------------------
 * Exceptions.
 * ------------------------------------------------------------------------ */

/* Takes the pending exception and returns it normalized, with its traceback
 * attached (a new reference; never NULL). */
PyObject *pyls_fetch_exception(void)
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
void pyls_raise_exception(PyObject *exc)
{
    if (PyExceptionClass_Check(exc)) {
        PyErr_SetNone(exc);
        Py_DECREF(exc);
        return;
    }
    PyObject *tb = PyException_GetTraceback(exc);
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, tb);
}

/* Raises a MemoryError of its own for an allocation of the core that
 * failed; returns NULL.  Not PyErr_NoMemory(): from CPython 3.12 on, when
 * its freelist of 16 MemoryErrors is empty, that raises one static,
 * immortal MemoryError which is never freed and whose traceback grows by
 * the frames of every raise, keeping them and what they hold (an arun's
 * Task and ARun) forever.  A failed arun's MemoryError lives in a cycle
 * with its Task until the collector runs, so 16 such failures empty the
 * freelist (python/tests/test_faults.py).  PyErr_SetNone makes the
 * instance through MemoryError(), which takes the freelist's first; if
 * even that allocation fails, the MemoryError it raises is what we raise. */
PyObject *pyls_raise_nomemory(void)
{
    PyErr_SetNone(PyExc_MemoryError);
    return NULL;
}

/* Raises the Python exception that stands for library code rc; returns NULL. */
PyObject *pyls_raise_code(int rc)
{
    switch (rc) {
    case LOCKSTEP_ENOMEM:
        return pyls_raise_nomemory();
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
 * Consumers and items.
 * ------------------------------------------------------------------------ */

/* See binding.h. */
PyObject *pyls_call_in_context(PyObject *ctx, PyObject *callable, PyObject *arg)
{
#ifdef PYPY_VERSION
    /* PyPy's C-API layer has no PyContext_Enter/Exit: Context.run does both. */
    return PyObject_CallMethod(ctx, "run", "OO", callable, arg);
#else
    if (PyContext_Enter(ctx) < 0)
        return NULL;
    PyObject *result = PyObject_CallOneArg(callable, arg);
    if (PyContext_Exit(ctx) < 0)
        Py_CLEAR(result); /* it left another context entered: RuntimeError */
    return result;
#endif
}

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
    lockstep_iter *saved = pyls_tls_current;
    if (sl->iter == NULL && (sl->iter = pyls_iter_make(rs, it)) == NULL) {
        sl->exc = pyls_fetch_exception();
        goto done;
    }
    /* Its own copy of the caller's context (see pyls_rs_open): entered here
     * on every engine, so its ContextVar.set() calls stay in the copy. */
    pyls_tls_current = it;
    PyObject *result = pyls_call_in_context(sl->context, sl->consumer, (PyObject *)sl->iter);
    pyls_tls_current = saved;
    sl->iter->it = NULL;
    if (result == NULL) {
        sl->exc = pyls_fetch_exception();
        goto done;
    }
    sl->result = result;
    rc = 0;
done:
    if (rs->engine == ENG_THREAD)
        PyGILState_Release(gil);
    return rc;
}

/* See binding.h. */
void pyls_drop_items(void *arg, void *items, size_t count)
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
 * Argument checking and the run state's life cycle.
 * ------------------------------------------------------------------------ */

/* Parses engine= (None or a name) into *out, loading greenlet if needed.
 * Returns 0, or -1 with ValueError (unknown name) or ImportError set. */
static int parse_engine(PyObject *obj, pyengine *out)
{
    if (obj == NULL || obj == Py_None) {
        if (pyls_greenlet_load() == 0) {
            *out = ENG_GREENLET;
            return 0;
        }
        PyErr_Clear();
        *out = pyls_thread_available() ? ENG_THREAD : ENG_BUFFER;
        return 0;
    }
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "engine must be None or a str, not %.200s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    for (int e = 0; e < ENG_COUNT_; e++) {
        if (PyUnicode_CompareWithASCIIString(obj, pyls_engine_names[e]) != 0)
            continue;
        *out = (pyengine)e;
        if (e == ENG_GREENLET)
            return pyls_greenlet_load();
        if (e == ENG_THREAD && !pyls_thread_available()) {
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

/* See binding.h. */
int pyls_parse_window(PyObject *obj, size_t *out)
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
 * pyls_rs_clear either way. */
int pyls_rs_init(runstate *rs, modstate *st, PyObject *const *consumers, size_t n,
                   PyObject *window, PyObject *engine, int bytes)
{
    memset(rs, 0, sizeof *rs);
    rs->st = st;
    rs->bytes = bytes != 0;
    for (size_t i = 0; i < n; i++) {
        if (!PyCallable_Check(consumers[i])) {
            PyErr_Format(PyExc_TypeError, "lockstep consumer %zu is not callable: %.200s object",
                         i, Py_TYPE(consumers[i])->tp_name);
            return -1;
        }
    }
    if (pyls_parse_window(window, &rs->window) < 0 || parse_engine(engine, &rs->engine) < 0)
        return -1;
    if (rs->window == 0)
        rs->window = pyls_default_windows[rs->bytes][rs->engine];
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
void pyls_rs_clear(runstate *rs)
{
    for (size_t i = 0; rs->slots != NULL && i < rs->n; i++) {
        slot *sl = &rs->slots[i];
        Py_CLEAR(sl->consumer);
        Py_CLEAR(sl->result);
        Py_CLEAR(sl->exc);
        Py_CLEAR(sl->iter);
        Py_CLEAR(sl->context);
    }
    PyMem_Free(rs->slots);
    rs->slots = NULL;
    rs->n = 0;
    Py_CLEAR(rs->src_exc);
    Py_CLEAR(rs->lib_exc);
    Py_CLEAR(rs->scheduler);
    Py_CLEAR(rs->context);
}

/* Declared in binding.h. */
lockstep_consumer *pyls_consumers_make(lockstep_consumer_fn fn, void *slots, size_t stride,
                                       size_t n)
{
    lockstep_consumer *cs = PyMem_Calloc(n ? n : 1, sizeof *cs);
    if (cs == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        cs[i].fn = fn;
        cs[i].arg = (char *)slots + i * stride;
    }
    return cs;
}

/* Opens rs's stream on its engine: consumers start and run up to their
 * first next().  Returns 0, or -1 with an exception set. */
int pyls_rs_open(runstate *rs)
{
    int rc;
    lockstep_consumer *cs = pyls_consumers_make(consumer_entry, rs->slots, sizeof *rs->slots, rs->n);
    if (cs == NULL)
        return -1;
    for (size_t i = 0; i < rs->n; i++) {
        /* Taken now, when run() is called or the Stream created, as an
         * asyncio task copies the context when it is created. */
        if ((rs->slots[i].context = PyContext_CopyCurrent()) == NULL) {
            PyMem_Free(cs);
            return -1;
        }
    }
    /* A byte run (bytes.c) holds bytes; run() and Stream hold references. */
    size_t item_size = rs->bytes ? 1 : sizeof(PyObject *);
    lockstep_options o;
    lockstep_options_init(&o);
    o.window = rs->window;
    o.report = &rs->report;
    rs->owner = PyThread_get_thread_ident();
    rs->busy = 1;
    switch (rs->engine) {
#if LOCKSTEP_HAVE_GREENLET
    case ENG_GREENLET:
        rc = lockstep__open_ops(&rs->s, &pyls_greenlet_ops, rs, item_size, cs, rs->n, &o);
        break;
#endif
    case ENG_THREAD:
        rs->hook.before_wait = gil_release;
        rs->hook.after_wait = gil_acquire;
        o.engine = LOCKSTEP_ENGINE_THREAD;
        o.blocking = &rs->hook;
        rc = lockstep_open(&rs->s, item_size, cs, rs->n, &o);
        break;
    case ENG_BUFFER:
        o.engine = LOCKSTEP_ENGINE_BUFFER;
        rc = lockstep_open(&rs->s, item_size, cs, rs->n, &o);
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
            pyls_raise_code(rc);
        return -1;
    }
    /* Nothing has been pushed yet, so the window holds no references. */
    if (!rs->bytes) {
        rs->s->drop_items = pyls_drop_items;
        rs->s->drop_arg = rs;
    }
    return 0;
}

/* Records the pending Python exception as the producer's failure at the
 * current stream position. */
void pyls_rs_source_failed(runstate *rs)
{
    PyObject *exc = pyls_fetch_exception();
    Py_XSETREF(rs->src_exc, exc);
    (void)lockstep_fail(rs->s, PYLOCKSTEP_EPYTHON);
}

/* Pulls items from src into the stream until src ends or fails, or no
 * consumer wants more.  A failure of src (or a KeyboardInterrupt between
 * items) becomes the producer's failure when source_failure is set (run);
 * otherwise it is left pending and -1 returned (Stream.extend).  Returns 0
 * or -1. */
int pyls_rs_pull(runstate *rs, PyObject *src, int source_failure)
{
    iternextfunc next = Py_TYPE(src)->tp_iternext;
    lockstep_stream *s = rs->s;
    /* Cooperative engines change the live count only inside dispatch, so
     * the loop asks again only after one; thread consumers may stop at any
     * moment, so it asks after every item, as lockstep_run does. */
    const int poll = rs->engine == ENG_THREAD;
    for (long live = lockstep_live(s); live > 0;) {
        PyObject *item = NULL;
        if (pyls_rs_tick(rs) == 0)
            item = next(src);
        if (item == NULL) {
            if (pyls_rs_ended())
                return 0;
            if (!source_failure)
                return -1;
            pyls_rs_source_failed(rs);
            return 0;
        }
        if (pyls_rs_put(rs, item) || poll)
            live = lockstep_live(s);
    }
    return 0;
}

/* Closes the stream and turns the outcome into a tuple of results (a new
 * reference) or a raised exception (NULL): the failure earliest in the
 * stream, as the core's report says. */
PyObject *pyls_rs_close(runstate *rs)
{
    rs->busy = 1;
    (void)lockstep_close(rs->s);
    rs->busy = 0;
    rs->s = NULL;
    return pyls_outcome(&rs->report, rs->n, &rs->slots[0].result, &rs->slots[0].exc,
                        sizeof(slot), &rs->src_exc, &rs->lib_exc);
}

/* See binding.h. */
PyObject *pyls_outcome(const lockstep_report *r, size_t n, PyObject **results0,
                       PyObject **excs0, size_t stride, PyObject **src_exc, PyObject **lib_exc)
{
#define PYLS_NTH(first, i) ((PyObject **)((char *)(first) + (i) * stride))
    if (r->failed != LOCKSTEP_FAILED_NONE || r->code != 0) {
        PyObject **from = lib_exc;
        if (r->failed >= 0 && (size_t)r->failed < n)
            from = PYLS_NTH(excs0, (size_t)r->failed);
        else if (r->failed == LOCKSTEP_FAILED_SOURCE)
            from = src_exc;
        PyObject *exc = *from;
        *from = NULL;
        if (exc == NULL)
            return pyls_raise_code(r->code < 0 && r->code != PYLOCKSTEP_EPYTHON ? r->code
                                                                          : LOCKSTEP_ESTATE);
        pyls_raise_exception(exc);
        return NULL;
    }
    PyObject *results = PyTuple_New((Py_ssize_t)n);
    if (results == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *v = *PYLS_NTH(results0, i);
        PyTuple_SET_ITEM(results, (Py_ssize_t)i, Py_NewRef(v != NULL ? v : Py_None));
    }
    return results;
#undef PYLS_NTH
}

/* ------------------------------------------------------------------------
 * run()
 * ------------------------------------------------------------------------ */

const char pyls_run_doc[] = PyDoc_STR(
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

/* The keyword arguments of fname (run, run_read), METH_FASTCALL style:
 * values[k] is the value of kwnames[k].  Sets *window and *engine to those
 * given (borrowed); returns 0, or -1 with TypeError for any other keyword. */
int pyls_run_keywords(const char *fname, PyObject *const *values, PyObject *kwnames,
                      PyObject **window, PyObject **engine)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        if (PyUnicode_CompareWithASCIIString(name, "window") == 0)
            *window = values[k];
        else if (PyUnicode_CompareWithASCIIString(name, "engine") == 0)
            *engine = values[k];
        else {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname,
                         name);
            return -1;
        }
    }
    return 0;
}

/* run(iterable, /, *consumers, window=None, engine=None) */
PyObject *pyls_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames)
{
    PyObject *window = NULL, *engine = NULL, *src = NULL, *result = NULL;
    runstate rs;
    memset(&rs, 0, sizeof rs);
    if (pyls_run_keywords("run", args + nargs, kwnames, &window, &engine) < 0)
        return NULL;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "run() missing required argument 'iterable' (pos 1)");
        return NULL;
    }
    if (pyls_rs_init(&rs, PyModule_GetState(module), args + 1, (size_t)(nargs - 1), window,
                engine, 0) < 0)
        goto done;
    src = PyObject_GetIter(args[0]);
    if (src == NULL)
        goto done;
    if (pyls_rs_open(&rs) < 0)
        goto done;
    rs.busy = 1;
#if LOCKSTEP_HAVE_GREENLET
    if (rs.engine == ENG_GREENLET)
        pyls_greenlet_pull(&rs, src);
    else
#endif
        (void)pyls_rs_pull(&rs, src, 1);
    rs.busy = 0;
    result = pyls_rs_close(&rs);
done:
    Py_XDECREF(src);
    pyls_rs_clear(&rs);
    return result;
}
