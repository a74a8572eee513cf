/*
 * stream.c: lockstep.Stream, the push side of lockstep for
 * callback-driven sources.  Creating a Stream opens a run state (run.c) and
 * starts every consumer; push() and extend() feed the window, fail()
 * records the producer's failure, and close() (or leaving a with block)
 * returns the results or raises the failure earliest in the stream, as
 * run() does.  A stream belongs to the thread (and, on the greenlet engine,
 * the greenlet) that created it; every method checks that and refuses
 * re-entrant calls.
 */
#include "binding.h"

typedef struct {
    PyObject_HEAD
    runstate *rs;      /* NULL once closed (or leaked, see stream_finalize) */
    PyObject *results; /* after a successful close */
    int closed;
} StreamObject;

/* Returns the state of the module that defines type. */
static modstate *type_state(PyTypeObject *type)
{
    return PyType_GetModuleState(type);
}

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
    if (rs->owner != (unsigned long)PyThread_get_thread_ident()) { /* PyPy: long */
        PyErr_SetString(PyExc_RuntimeError,
                        "lockstep.Stream used from a thread other than the one that created it");
        return -1;
    }
#if LOCKSTEP_HAVE_GREENLET
    if (rs->engine == ENG_GREENLET) {
        if (pyls_greenlet_current() != rs->scheduler) {
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
    if (pyls_rs_init(rs, type_state(type), &PyTuple_GET_ITEM(args, 0),
                (size_t)PyTuple_GET_SIZE(args), window, engine, 0) < 0 ||
        pyls_rs_open(rs) < 0) {
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
    (void)pyls_rs_put(rs, item);
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
    int rc = pyls_rs_pull(rs, src, 0);
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
    PyObject *results = pyls_rs_close(rs);
    self->rs = NULL;
    self->closed = 1;
    pyls_rs_clear(rs);
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
                                pyls_engine_names[self->rs->engine], self->rs->window, self->rs->n,
                                self->rs->s ? lockstep_live(self->rs->s) : 0L, self);
}

/* tp_finalize: a stream dropped while open is failed and closed, so that
 * its consumers finish (their iterators end).  That is only possible from
 * the thread and greenlet that created it; elsewhere the stream and its
 * consumers are deliberately leaked (a ResourceWarning says so) rather
 * than resumed in the wrong context.  PyPy's C-API layer has no
 * tp_finalize (it aborts on a type that has one), so there stream_dealloc
 * calls this itself: PyPy deallocates at a point where Python code may run. */
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
        Py_VISIT(rs->slots[i].context);
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
        pyls_rs_clear(rs);
        PyMem_Free(rs);
    }
    return 0;
}

static void stream_dealloc(StreamObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
#ifdef PYPY_VERSION
    stream_finalize(self);
#else
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return; /* resurrected */
#endif
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
#ifndef PYPY_VERSION
    {Py_tp_finalize, stream_finalize},
#endif
    {Py_tp_traverse, stream_traverse},
    {Py_tp_clear, stream_clear},
    {Py_tp_methods, stream_methods},
    {Py_tp_getset, stream_getset},
    {Py_tp_repr, stream_repr},
    {0, NULL},
};

PyType_Spec pyls_stream_spec = {
    .name = "lockstep.Stream",
    .basicsize = sizeof(StreamObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = stream_slots,
};
