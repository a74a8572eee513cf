/*
 * async_driver.c: lockstep.arun, the binding's driver for async code
 * (lockstep.AsyncIterator, the iterator it hands each consumer, is in
 * async_iter.c; async.h holds what both share).
 *
 * `await lockstep.arun(source, *consumers)` runs the consumers over one
 * pass of source, which may be an async iterable, under any event loop
 * (asyncio, uvloop, trio, or a hand-written send(None) loop).  The core
 * still decides everything about the stream: the window, the positions,
 * the rounds (lockstep__round_*), which failure wins and who is cancelled.
 * This file is an engine plugged into it (async_ops) plus a driver that
 * runs that engine's rounds step by step, because any step may have to
 * wait for the event loop:
 *
 *   - ARun, the object arun() returns, is its own awaitable.  Its send
 *     (am_send) runs the driver until the run ends (PYGEN_RETURN with the
 *     results) or something has to wait for the loop: the async source's
 *     __anext__, or a consumer, awaited a foreign object (an asyncio
 *     Future, a trio trap).  The driver then yields exactly that object to
 *     the loop and passes the loop's answer (send or throw) back to who
 *     awaited it.  It creates no Task and no Future and calls no loop API
 *     per item; every few milliseconds it gives the loop a turn.
 *   - Every consumer gets an AsyncIterator, which is both an iterator and
 *     an async iterator.  Its __anext__ returns the same small awaitable
 *     every time, whose am_send returns an item already in the window with
 *     PYGEN_RETURN: no object and no suspension per item.  When the window is used up it suspends
 *     the consumer's coroutine with the module's private marker, which
 *     the driver recognises as "this consumer took the window".
 *   - A consumer whose call returns an awaitable is driven as a coroutine
 *     (no greenlet).  Any other consumer was synchronous: its call runs on
 *     a greenlet of its own, and its iterator's __next__ switches back to
 *     the driver when the window is used up.
 *   - Before Python 3.10, and on PyPy (7.3, Python 3.9, through its C-API
 *     layer), the same objects are served through tp_iternext, send and
 *     throw (pycompat.h's PyIter_Send); on PyPy each consumer's context is
 *     entered with Context.run, and synchronous consumers raise at their
 *     first next(), since PyPy's greenlet has no C API.
 *
 * Public objects: arun().
 */
#include "async.h"

#if LOCKSTEP_HAVE_GREENLET
#  include "greenlet.h"
#endif

#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------
 * Small helpers.
 * ------------------------------------------------------------------------ */

/* Interned method names, made by the first arun() (kept for good). */
static PyObject *str_throw, *str_close, *str_send;

/* Makes str_throw, str_close and str_send.  Returns 0, or -1 with MemoryError. */
static int async_names_init(void)
{
    if (str_throw == NULL && (str_throw = PyUnicode_InternFromString("throw")) == NULL)
        return -1;
    if (str_close == NULL && (str_close = PyUnicode_InternFromString("close")) == NULL)
        return -1;
    if (str_send == NULL && (str_send = PyUnicode_InternFromString("send")) == NULL)
        return -1;
    return 0;
}

/* Looks up an attribute that may be missing: 1 and *out, 0 and NULL, or
 * -1 with an exception (the API was renamed in Python 3.13). */
static int lookup_attr(PyObject *ob, PyObject *name, PyObject **out)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(ob, name, out);
#else
    return _PyObject_LookupAttr(ob, name, out);
#endif
}

/* Monotonic time in nanoseconds. */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* True for a cancellation: a BaseException that is not an Exception
 * (asyncio.CancelledError, trio.Cancelled, KeyboardInterrupt...). */
static int is_cancellation(PyObject *exc)
{
    return !PyErr_GivenExceptionMatches(exc, PyExc_Exception);
}

/* Returns the co_flags of code object code, or 0 when it is none (no
 * exception left).  Through PyPy's C-API layer the struct field did not
 * give them (the async generator check missed), so there they come from
 * the co_flags attribute. */
static int code_flags(PyObject *code)
{
    if (code == NULL || !PyCode_Check(code))
        return 0;
#ifdef PYPY_VERSION
    PyObject *v = PyObject_GetAttrString(code, "co_flags");
    long flags = v != NULL ? PyLong_AsLong(v) : 0;
    Py_XDECREF(v);
    PyErr_Clear();
    return flags == -1 ? 0 : (int)flags;
#else
    return ((PyCodeObject *)code)->co_flags;
#endif
}

/* Returns the co_flags of a plain function or bound method, else 0. */
static int func_flags(PyObject *f)
{
    if (PyMethod_Check(f))
        f = PyMethod_GET_FUNCTION(f);
    if (!PyFunction_Check(f))
        return 0;
    return code_flags(PyFunction_GET_CODE(f));
}

#if LOCKSTEP_HAVE_GREENLET
/* True when calling f surely returns a coroutine without running it. */
static int is_coroutine_function(PyObject *f)
{
    return (func_flags(f) & CO_COROUTINE) != 0;
}
#endif

/* True when ob can be awaited. */
static int is_awaitable(PyObject *ob)
{
#ifdef PYPY_VERSION
    /* PyPy's C-API layer fills am_await on every type: ask for __await__. */
    if (PyCoro_CheckExact(ob) || PyObject_HasAttrString((PyObject *)Py_TYPE(ob), "__await__"))
        return 1;
#else
    PyAsyncMethods *am = Py_TYPE(ob)->tp_as_async;
    if (am != NULL && am->am_await != NULL)
        return 1;
#endif
    if (!PyGen_CheckExact(ob))
        return 0;
    PyObject *code = PyObject_GetAttrString(ob, "gi_code");
    int flags = code_flags(code);
    Py_XDECREF(code);
    PyErr_Clear();
    return (flags & CO_ITERABLE_COROUTINE) != 0;
}

/* A consumer's call returned r: raises TypeError (and returns -1) when r
 * is an async generator, which is neither a result nor an awaitable. */
static int check_not_asyncgen(PyObject *r)
{
    if (r == NULL || !PyAsyncGen_CheckExact(r))
        return 0;
    PyErr_SetString(PyExc_TypeError,
                    "lockstep.arun: a consumer returned an async generator, neither a result "
                    "nor an awaitable; make it an 'async def' that returns its result");
    return -1;
}

/* The iterator to send into for awaiting ob (a new reference), or NULL
 * with TypeError.  A coroutine or generator is its own. */
static PyObject *awaitable_iter(PyObject *ob)
{
    if (PyCoro_CheckExact(ob) || PyGen_CheckExact(ob))
        return Py_NewRef(ob);
#ifdef PYPY_VERSION
    /* Its C-API layer's am_await is no sign of __await__ (is_awaitable). */
    PyObject *it = PyObject_CallMethod(ob, "__await__", NULL);
    if (it == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
#else
    PyAsyncMethods *am = Py_TYPE(ob)->tp_as_async;
    PyObject *it = am != NULL && am->am_await != NULL ? am->am_await(ob) : NULL;
    if (it == NULL && !PyErr_Occurred()) {
#endif
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     Py_TYPE(ob)->tp_name);
        return NULL;
    }
    if (it != NULL && !PyIter_Check(it) && !PyCoro_CheckExact(it)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(it)->tp_name);
        Py_CLEAR(it);
    }
    return it;
}

/* Sends the loop's answer into aw: value, or exc (borrowed) when not NULL,
 * thrown in with aw's throw() (raised at aw when it has none). */
static PySendResult send_into(PyObject *aw, PyObject *value, PyObject *exc, PyObject **out)
{
    *out = NULL;
    if (exc == NULL)
        return PyIter_Send(aw, value != NULL ? value : Py_None, out);
    PyObject *meth;
    if (lookup_attr(aw, str_throw, &meth) < 0)
        return PYGEN_ERROR;
    if (meth == NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        return PYGEN_ERROR;
    }
    PyObject *r = PyObject_CallOneArg(meth, exc);
    Py_DECREF(meth);
    if (r != NULL) {
        *out = r;
        return PYGEN_NEXT;
    }
    if (pyls_fetch_stop_value(out) == 0)
        return PYGEN_RETURN;
    return PYGEN_ERROR;
}

/* send_into (value, or exc thrown in) run inside context ctx. */
static PySendResult send_in_context(PyObject *ctx, PyObject *aw, PyObject *value, PyObject *exc,
                                    PyObject **out)
{
    *out = NULL;
#ifdef PYPY_VERSION
    /* No PyContext_Enter there: the step is one Context.run call of aw's
     * throw, its send, or next(aw) for an iterator without send. */
    PyObject *meth, *arg = exc != NULL ? exc : value != NULL ? value : Py_None;
    if (lookup_attr(aw, exc != NULL ? str_throw : str_send, &meth) < 0)
        return PYGEN_ERROR;
    if (meth == NULL && exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        return PYGEN_ERROR;
    }
    if (meth == NULL && arg == Py_None) {
        meth = PyDict_GetItemString(PyEval_GetBuiltins(), "next");
        Py_XINCREF(meth);
        arg = aw;
    }
    if (meth == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute 'send'",
                     Py_TYPE(aw)->tp_name);
        return PYGEN_ERROR;
    }
    PyObject *r = pyls_call_in_context(ctx, meth, arg);
    Py_DECREF(meth);
    if (r != NULL) {
        *out = r;
        return PYGEN_NEXT;
    }
    return pyls_fetch_stop_value(out) == 0 ? PYGEN_RETURN : PYGEN_ERROR;
#else
    if (PyContext_Enter(ctx) < 0)
        return PYGEN_ERROR;
    PySendResult res = send_into(aw, value, exc, out);
    if (PyContext_Exit(ctx) < 0 && res != PYGEN_ERROR) {
        Py_CLEAR(*out);
        res = PYGEN_ERROR;
    }
    return res;
#endif
}

/* Calls aw.close() if it has one; an exception it raises is returned as
 * PYGEN_ERROR, else PYGEN_RETURN with None. */
static PySendResult close_aw(PyObject *aw, PyObject **out)
{
    *out = NULL;
    PyObject *meth;
    if (lookup_attr(aw, str_close, &meth) < 0)
        return PYGEN_ERROR;
    if (meth == NULL) {
        *out = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    PyObject *r = PyObject_CallNoArgs(meth);
    Py_DECREF(meth);
    if (r == NULL)
        return PYGEN_ERROR;
    Py_DECREF(r);
    *out = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

/* ------------------------------------------------------------------------
 * Greenlet, loaded when first needed.
 * ------------------------------------------------------------------------ */

/* Returns 1 when greenlet's C API is usable, both this file's copy and the
 * binding's (pyls_greenlet_load), else 0 (no exception left). */
static int greenlet_usable(void)
{
#if LOCKSTEP_HAVE_GREENLET
    if (_PyGreenlet_API != NULL)
        return 1;
    /* The binding's copy first: async_iter.c asks pyls_greenlet_current. */
    if (pyls_greenlet_load() < 0) {
        PyErr_Clear();
        return 0;
    }
    PyGreenlet_Import();
    if (_PyGreenlet_API != NULL)
        return 1;
    PyErr_Clear();
#endif
    return 0;
}
#if LOCKSTEP_HAVE_GREENLET
/* Declared in async.h: switches the synchronous consumer's greenlet of
 * self back to the driver until the window is refilled. */
int pyls_async_wait_window(AIterObject *self)
{
    ARunObject *run = self->run;
    PyObject *r = PyGreenlet_Switch((PyGreenlet *)run->scheduler, run->st->marker_args, NULL);
    tls_sync = self->it;
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}
#endif

/* ------------------------------------------------------------------------
 * The engine the core sees.  Consumers never run from inside the core:
 * the driver below runs every round itself (lockstep__round_*), so
 * dispatch, finish and next_slow only guard against being called.
 * ------------------------------------------------------------------------ */

/* The consumer function the core is given; the driver runs consumers
 * itself, so the core never calls it. */
static int async_consumer_fn(lockstep_iter *it, void *arg)
{
    (void)it;
    (void)arg;
    return LOCKSTEP_ESTATE;
}

/* coop_create: the consumer's iterator. */
static int async_create(lockstep_stream *s, lockstep_iter *it)
{
    ARunObject *run = s->engine_arg;
    aslot *sl = it->consumer.arg;
    AIterObject *io = PyObject_New(AIterObject, run->st->aiter_type);
    if (io == NULL)
        return LOCKSTEP_ENOMEM;
    io->it = it;
    io->run = run;
    io->greenlet = NULL;
    io->next_aw = NULL;
    sl->iter = io;
    return 0;
}

/* coop_destroy: ends the iterator and drops the greenlet (finished). */
static void async_free(lockstep_stream *s, lockstep_iter *it)
{
    (void)s;
    aslot *sl = it->consumer.arg;
    if (sl->iter != NULL)
        sl->iter->it = NULL;
    Py_CLEAR(sl->greenlet);
}

/* open: the window and the order list, one iterator per consumer; no
 * consumer starts here (the driver's first round starts them). */
static int async_open(lockstep_stream *s)
{
    ARunObject *run = s->engine_arg;
    size_t created = 0;
    s->cap = run->buffer ? ARUN_BUFFER_FIRST : s->window;
    s->win = lockstep__malloc(s->cap * s->item_size);
    s->order = lockstep__malloc(s->n * sizeof *s->order);
    if (s->win == NULL || s->order == NULL)
        goto fail;
    for (; created < s->n; created++) {
        if (async_create(s, &s->iters[created]) < 0)
            goto fail;
        s->iters[created].started = 1;
        s->order[created] = created;
    }
    s->n_order = s->n;
    return 0;
fail:
    while (created > 0)
        async_free(s, &s->iters[--created]);
    lockstep__free(s->order);
    lockstep__free(s->win);
    s->order = NULL;
    s->win = NULL;
    return LOCKSTEP_ENOMEM;
}

static int async_dispatch(lockstep_stream *s)
{
    (void)s;
    return LOCKSTEP_ESTATE;
}

/* finish: the driver has run the last round; every consumer returned. */
static int async_finish(lockstep_stream *s)
{
    return NEVER(s->live != 0) ? LOCKSTEP_ESTATE : 0;
}

static const void *async_next_slow(lockstep_iter *it)
{
    it->stream->misuse = LOCKSTEP_EPERM;
    return NULL;
}

static const lockstep__engine_ops async_ops = {
    .name = "async",
    .open = async_open,
    .dispatch = async_dispatch,
    .finish = async_finish,
    .destroy = lockstep__coop_destroy,
    .next_slow = async_next_slow,
    .coop_create = async_create,
    .coop_destroy = async_free,
};

/* ------------------------------------------------------------------------
 * The driver.  Each step returns STEP_ON (go on: the phase may have
 * changed) or STEP_YIELD (*out is to be yielded to the event loop).
 * ------------------------------------------------------------------------ */

enum { STEP_ON = 0, STEP_YIELD = 1 };

/* A cancellation ends the run: every consumer's iterator ends from the
 * window's start on, and arun raises exc (borrowed), whatever its position. */
static void note_cancel(ARunObject *self, PyObject *exc)
{
    if (self->cancel_exc == NULL && exc != NULL)
        self->cancel_exc = Py_NewRef(exc);
    lockstep__record_failure(self->s, self->s->base, LOCKSTEP__RANK_LIBRARY, LOCKSTEP_ESTATE);
}

/* Records how consumer it ended: with result (stolen), or, when result is
 * NULL, with the pending exception. */
static void consumer_done(ARunObject *self, lockstep_iter *it, PyObject *result)
{
    aslot *sl = it->consumer.arg;
    int rc = 0;
    if (result != NULL) {
        Py_XSETREF(sl->result, result);
    } else {
        PyObject *exc = pyls_fetch_exception();
        if (is_cancellation(exc))
            note_cancel(self, exc);
        Py_XSETREF(sl->exc, exc);
        rc = PYLOCKSTEP_EPYTHON;
    }
    sl->iter->it = NULL;
    Py_CLEAR(sl->coro);
    lockstep__consumer_finished(it, rc);
}

#if LOCKSTEP_HAVE_GREENLET
/* The body of a synchronous consumer's greenlet (self is its iterator):
 * calls the consumer.  A result that is awaitable means the consumer was
 * async after all: the driver goes on sending into it.  Returns the
 * marker to the driver, whose greenlet is this one's parent. */
static PyObject *greenlet_body(PyObject *self, PyObject *unused)
{
    (void)unused;
    AIterObject *io = (AIterObject *)self;
    lockstep_iter *it = io->it;
    ARunObject *run = io->run;
    aslot *sl = it->consumer.arg;
    PyObject *r = PyObject_CallOneArg(sl->consumer, self);
    if (check_not_asyncgen(r) < 0)
        Py_CLEAR(r);
    if (r == NULL)
        sl->exc = pyls_fetch_exception();
    else if (is_awaitable(r)) {
        sl->coro = awaitable_iter(r);
        if (sl->coro == NULL)
            sl->exc = pyls_fetch_exception();
        Py_DECREF(r);
    } else
        sl->result = r;
    return Py_NewRef(run->st->marker);
}

static PyMethodDef greenlet_body_def = {"_lockstep_async_consumer", greenlet_body, METH_VARARGS,
                                        NULL};

/* Starts or resumes a synchronous consumer's greenlet until it takes the
 * window, returns, or turns out to be async (sl->coro set).  Returns 1 when
 * the consumer is still running synchronously. */
static int greenlet_step(ARunObject *self, lockstep_iter *it, aslot *sl)
{
    if (sl->greenlet == NULL) {
        PyObject *body = PyCMethod_New(&greenlet_body_def, (PyObject *)sl->iter, NULL, NULL);
        PyGreenlet *g = body != NULL ? PyGreenlet_New(body, NULL) : NULL;
        Py_XDECREF(body);
        if (g == NULL || PyObject_SetAttrString((PyObject *)g, "gr_context", sl->context) < 0) {
            Py_XDECREF(g);
            consumer_done(self, it, NULL);
            return 0;
        }
        sl->greenlet = (PyObject *)g;
        sl->iter->greenlet = sl->greenlet;
    }
    lockstep_iter *saved = tls_sync;
    tls_sync = it;
    PyObject *r = PyGreenlet_Switch((PyGreenlet *)sl->greenlet, self->st->marker_args, NULL);
    tls_sync = saved;
    if (PyGreenlet_ACTIVE((PyGreenlet *)sl->greenlet)) {
        if (r == self->st->marker) {
            Py_DECREF(r);
            return 1;
        }
        /* Switched to us behind lockstep's back: fail the run, and throw
         * into the consumer so that it ends. */
        Py_XDECREF(r);
        if (r != NULL)
            PyErr_SetString(PyExc_RuntimeError, "lockstep.arun: a consumer switched greenlets "
                                                "outside lockstep's control");
        PyObject *exc = pyls_fetch_exception();
        Py_XSETREF(self->lib_exc, exc);
        lockstep__record_failure(self->s, lockstep__iter_pos(it), LOCKSTEP__RANK_LIBRARY,
                                 LOCKSTEP_ESTATE);
        tls_sync = it;
        r = PyGreenlet_Throw((PyGreenlet *)sl->greenlet, PyExc_GeneratorExit, NULL, NULL);
        tls_sync = saved;
        Py_XDECREF(r);
        PyErr_Clear();
    } else if (r == NULL) {
        consumer_done(self, it, NULL);
        return 0;
    } else {
        Py_DECREF(r);
    }
    if (sl->coro != NULL)
        return 0;
    PyObject *exc = sl->exc, *result = sl->result;
    sl->exc = sl->result = NULL;
    if (result != NULL) {
        consumer_done(self, it, result);
    } else {
        if (exc == NULL)
            exc = Py_NewRef(PyExc_SystemError);
        pyls_raise_exception(exc);
        consumer_done(self, it, NULL);
    }
    return 0;
}
#endif

/* Starts consumer it: calls it on its greenlet, or directly when it is
 * async (or no greenlet is used).  Leaves sl->coro set when the call
 * returned an awaitable.  Returns 1 when it runs synchronously and took
 * the window, else 0. */
static int consumer_start(ARunObject *self, lockstep_iter *it, aslot *sl)
{
    sl->begun = 1;
    sl->context = PyContext_CopyCurrent();
    if (sl->context == NULL) {
        consumer_done(self, it, NULL);
        return 0;
    }
#if LOCKSTEP_HAVE_GREENLET
    if (self->use_greenlet && !is_coroutine_function(sl->consumer))
        return greenlet_step(self, it, sl);
#endif
    lockstep_iter *saved = tls_sync;
    tls_sync = it;
    PyObject *r = pyls_call_in_context(sl->context, sl->consumer, (PyObject *)sl->iter);
    tls_sync = saved;
    if (check_not_asyncgen(r) < 0)
        Py_CLEAR(r);
    if (r == NULL || !is_awaitable(r)) {
        consumer_done(self, it, r);
        return 0;
    }
    sl->coro = awaitable_iter(r);
    Py_DECREF(r);
    if (sl->coro == NULL)
        consumer_done(self, it, NULL);
    return 0;
}

/* Runs consumer it (starting it if needed) until it takes the window,
 * returns, or awaits something foreign (STEP_YIELD, *out set).  value or
 * exc is the loop's answer to what it awaited last. */
static int consumer_step(ARunObject *self, lockstep_iter *it, PyObject *value, PyObject *exc,
                         PyObject **out)
{
    aslot *sl = it->consumer.arg;
    if (!sl->begun) {
        if (consumer_start(self, it, sl))
            return STEP_ON;
    }
#if LOCKSTEP_HAVE_GREENLET
    else if (sl->greenlet != NULL && sl->coro == NULL) {
        (void)greenlet_step(self, it, sl);
        return STEP_ON;
    }
#endif
    if (sl->coro == NULL)
        return STEP_ON;
    PyObject *r;
    PySendResult res;
    lockstep_iter *saved = tls_async;
    tls_async = it;
    res = send_in_context(sl->context, sl->coro, value, exc, &r);
    tls_async = saved;
    if (res == PYGEN_NEXT) {
        if (r == self->st->marker) {
            Py_DECREF(r);
            return STEP_ON;
        }
        if (!self->closing) {
            *out = r;
            return STEP_YIELD;
        }
        /* Closing: nothing may wait for the loop any more. */
        Py_DECREF(r);
        res = close_aw(sl->coro, &r);
    }
    consumer_done(self, it, res == PYGEN_RETURN ? r : NULL);
    return STEP_ON;
}

/* Starts the last round: the stream has ended (or failed, or nobody wants
 * more), so every consumer runs to its end in it. */
static void begin_final_round(ARunObject *self)
{
    lockstep__end(self->s);
    self->final = 1;
    (void)lockstep__round_begin(self->s);
    self->phase = PH_ROUND;
}

/* True when the loop is due a turn (read the clock). */
static int turn_due(ARunObject *self)
{
    return !self->closing && self->turn != TURN_NEVER && now_ns() >= self->turn_at;
}

/* Learns how to give this event loop a turn (sniffio, else asyncio's
 * running loop); no library found means a hand-driven run: never. */
static int turn_kind(void)
{
    PyObject *name = NULL;
    PyObject *mod = PyImport_ImportModule("sniffio");
    if (mod != NULL) {
        name = PyObject_CallMethod(mod, "current_async_library", NULL);
        Py_DECREF(mod);
    }
    if (name == NULL) {
        PyErr_Clear();
        mod = PyImport_ImportModule("asyncio");
        PyObject *loop = mod ? PyObject_CallMethod(mod, "_get_running_loop", NULL) : NULL;
        Py_XDECREF(mod);
        int found = loop != NULL && loop != Py_None;
        Py_XDECREF(loop);
        PyErr_Clear();
        return found ? TURN_YIELD : TURN_NEVER;
    }
    int kind = TURN_NEVER;
    if (PyUnicode_Check(name)) {
        if (PyUnicode_CompareWithASCIIString(name, "trio") == 0)
            kind = TURN_TRIO;
        else if (PyUnicode_CompareWithASCIIString(name, "asyncio") == 0)
            kind = TURN_YIELD;
    }
    Py_DECREF(name);
    return kind;
}

/* PH_TURN: gives the event loop a turn, then goes on filling.  value or
 * exc answers the turn's yield; an exception there is a cancellation. */
static int turn_step(ARunObject *self, PyObject *value, PyObject *exc, PyObject **out)
{
    if (self->turn == TURN_UNKNOWN)
        self->turn = turn_kind();
    if (self->turn == TURN_YIELD) {
        if (value == NULL && exc == NULL) { /* first entry: yield */
            *out = Py_NewRef(Py_None);
            return STEP_YIELD;
        }
        if (exc != NULL)
            note_cancel(self, exc);
    } else if (self->turn == TURN_TRIO) {
        if (self->turn_aw == NULL) {
            PyObject *mod = PyImport_ImportModule("trio.lowlevel");
            PyObject *coro = mod ? PyObject_CallMethod(mod, "checkpoint", NULL) : NULL;
            Py_XDECREF(mod);
            if (coro == NULL) {
                PyErr_Clear();
                self->turn = TURN_NEVER;
                goto on;
            }
            self->turn_aw = coro;
            value = Py_None;
        }
        PyObject *r;
        PySendResult res = send_into(self->turn_aw, value, exc, &r);
        if (res == PYGEN_NEXT) {
            *out = r;
            return STEP_YIELD;
        }
        Py_CLEAR(self->turn_aw);
        if (res == PYGEN_RETURN) {
            Py_DECREF(r);
        } else {
            PyObject *e = pyls_fetch_exception();
            note_cancel(self, e);
            Py_DECREF(e);
        }
    }
on:
    self->turn_at = now_ns() + ARUN_TURN_NS;
    self->phase = PH_FILL;
    return STEP_ON;
}

/* PH_ROUND: runs the round's consumers in the core's order; at its end,
 * goes back to filling (or closing after the last round). */
static int round_step(ARunObject *self, PyObject *value, PyObject *exc, PyObject **out)
{
    lockstep_stream *s = self->s;
    for (lockstep_iter *it = s->current; it != NULL; it = lockstep__round_next(s)) {
        if (consumer_step(self, it, value, exc, out) == STEP_YIELD)
            return STEP_YIELD;
        value = exc = NULL;
    }
    lockstep__round_end(s);
    if (self->final) {
        self->phase = PH_END;
        return STEP_ON;
    }
    self->phase = turn_due(self) ? PH_TURN : PH_FILL;
    return STEP_ON;
}

/* The window is full in buffer mode: doubles it.  Returns 0, or -1 after
 * recording a library failure (out of memory). */
static int buffer_grow(ARunObject *self)
{
    lockstep_stream *s = self->s;
    void *win = s->cap <= SIZE_MAX / 2 / s->item_size
                    ? lockstep__realloc(s->win, 2 * s->cap * s->item_size)
                    : NULL;
    if (win == NULL) {
        pyls_raise_nomemory();
        Py_XSETREF(self->lib_exc, pyls_fetch_exception());
        lockstep__record_failure(s, s->read, LOCKSTEP__RANK_LIBRARY, LOCKSTEP_ENOMEM);
        return -1;
    }
    s->win = win;
    s->cap *= 2;
    return 0;
}

/* Asks the source for its next item.  Returns 1 with *item set, 0 at its
 * end, -1 on failure (exception set), or STEP_YIELD + 1 (2) when its
 * __anext__ awaits something foreign (*out set). */
static int source_next(ARunObject *self, PyObject *value, PyObject *exc, PyObject **item,
                       PyObject **out)
{
    if (!self->src_async) {
        *item = Py_TYPE(self->src)->tp_iternext(self->src);
        if (*item != NULL)
            return 1;
        if (!PyErr_Occurred())
            return 0;
        if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    if (self->src_aw == NULL) {
        PyObject *aw = Py_TYPE(self->src)->tp_as_async->am_anext(self->src);
        if (aw == NULL)
            return -1;
        self->src_aw = awaitable_iter(aw);
        Py_DECREF(aw);
        if (self->src_aw == NULL)
            return -1;
        value = Py_None;
        exc = NULL;
    }
    PyObject *r;
    PySendResult res = send_into(self->src_aw, value, exc, &r);
    if (res == PYGEN_NEXT) {
        if (self->closing) {
            Py_DECREF(r);
            PyObject *ignored;
            if (close_aw(self->src_aw, &ignored) == PYGEN_RETURN)
                Py_DECREF(ignored);
            else
                PyErr_Clear();
            Py_CLEAR(self->src_aw);
            PyErr_SetNone(PyExc_GeneratorExit);
            return -1;
        }
        *out = r;
        return 2;
    }
    Py_CLEAR(self->src_aw);
    if (res == PYGEN_RETURN) {
        *item = r;
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_StopAsyncIteration)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* PH_FILL: fills the window from the source, then begins a round: the
 * next one when the window is full, the last one when the source stopped
 * or nobody wants more.  value or exc answers the source's last await. */
static int fill_step(ARunObject *self, PyObject *value, PyObject *exc, PyObject **out)
{
    lockstep_stream *s = self->s;
    if (exc != NULL && self->src_aw == NULL) { /* nobody to give it to */
        note_cancel(self, exc);
        exc = NULL;
    }
    for (;;) {
        if (self->src_aw == NULL) {
            if (!lockstep__wanted(s) || s->source_done) {
                begin_final_round(self);
                return STEP_ON;
            }
            if (s->filled == s->cap) {
                if (!self->buffer) {
                    (void)lockstep__round_begin(s);
                    self->phase = PH_ROUND;
                    return STEP_ON;
                }
                if (buffer_grow(self) < 0)
                    continue;
            }
            if (NEVER(++self->ticks % ARUN_CLOCK_EVERY == 0)) {
                if (PyErr_CheckSignals() < 0) {
                    PyObject *e = pyls_fetch_exception();
                    note_cancel(self, e);
                    Py_DECREF(e);
                    continue;
                }
                if (turn_due(self)) {
                    self->phase = PH_TURN;
                    return STEP_ON;
                }
            }
        }
        PyObject *item = NULL;
        int rc = source_next(self, value, exc, &item, out);
        value = exc = NULL;
        if (rc == 2)
            return STEP_YIELD;
        if (rc == 1) {
            ((PyObject **)s->win)[s->filled] = item;
            s->filled++;
            s->read++;
            continue;
        }
        if (rc == 0) {
            lockstep__source_stopped(s, 0);
            continue;
        }
        PyObject *e = pyls_fetch_exception();
        if (is_cancellation(e)) {
            note_cancel(self, e);
            Py_DECREF(e);
            s->source_done = 1;
        } else {
            Py_XSETREF(self->src_exc, e);
            lockstep__source_stopped(s, PYLOCKSTEP_EPYTHON);
        }
    }
}

/* Builds the run's outcome once every consumer has returned: the results
 * tuple (PYGEN_RETURN), or the failure earliest in the stream raised, or a
 * cancellation, which beats everything. */
static PySendResult finish(ARunObject *self, PyObject **out)
{
    (void)lockstep__close_ended(self->s);
    self->s = NULL;
    self->phase = PH_DONE;
    *out = NULL;
    if (self->cancel_exc != NULL) {
        PyObject *exc = self->cancel_exc;
        self->cancel_exc = NULL;
        pyls_raise_exception(exc);
        return PYGEN_ERROR;
    }
    *out = pyls_outcome(&self->report, self->n, &self->slots[0].result, &self->slots[0].exc,
                        sizeof(aslot), &self->src_exc, &self->lib_exc);
    return *out != NULL ? PYGEN_RETURN : PYGEN_ERROR;
}

/* Opens the stream (PH_START -> the first round, or filling when
 * buffered).  Returns 0, or -1 with an exception set. */
static int start(ARunObject *self)
{
    lockstep_consumer *cs = pyls_consumers_make(async_consumer_fn, self->slots, sizeof(aslot),
                                                self->n);
    if (cs == NULL)
        return -1;
    lockstep_options o;
    lockstep_options_init(&o);
    o.window = self->window;
    o.report = &self->report;
    int rc = lockstep__open_ops(&self->s, &async_ops, self, sizeof(PyObject *), cs, self->n, &o);
    PyMem_Free(cs);
    if (rc < 0) {
        self->s = NULL;
        pyls_raise_code(rc);
        return -1;
    }
    self->s->drop_items = pyls_drop_items;
    self->s->drop_arg = self;
    if (self->buffer) {
        self->phase = PH_FILL;
    } else {
        (void)lockstep__round_begin(self->s);
        self->phase = PH_ROUND;
    }
    return 0;
}

/* Releases everything a finished (or never started) run holds but its
 * results' source: consumers, iterators, awaitables. */
static void arun_release(ARunObject *self)
{
    for (size_t i = 0; self->slots != NULL && i < self->n; i++) {
        aslot *sl = &self->slots[i];
        if (sl->iter != NULL)
            sl->iter->it = NULL;
        Py_CLEAR(sl->consumer);
        Py_CLEAR(sl->result);
        Py_CLEAR(sl->exc);
        Py_CLEAR(sl->iter);
        Py_CLEAR(sl->coro);
        Py_CLEAR(sl->greenlet);
        Py_CLEAR(sl->context);
    }
    PyMem_Free(self->slots);
    self->slots = NULL;
    self->n = 0;
    Py_CLEAR(self->src);
    Py_CLEAR(self->src_aw);
    Py_CLEAR(self->src_exc);
    Py_CLEAR(self->lib_exc);
    Py_CLEAR(self->cancel_exc);
    Py_CLEAR(self->turn_aw);
    Py_CLEAR(self->scheduler);
}

/* Runs the driver with the loop's answer (value, or exc when not NULL)
 * until it must yield to the loop (PYGEN_NEXT), or the run ends. */
static PySendResult drive(ARunObject *self, PyObject *value, PyObject *exc, PyObject **out)
{
    *out = NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "lockstep.arun() is already running");
        return PYGEN_ERROR;
    }
    if (self->phase == PH_DONE) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited lockstep.arun()");
        return PYGEN_ERROR;
    }
    if (self->phase == PH_START) {
        if (exc != NULL || start(self) < 0) {
            if (exc != NULL)
                PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            self->phase = PH_DONE;
            arun_release(self);
            return PYGEN_ERROR;
        }
        value = NULL;
    }
    self->busy = 1;
#if LOCKSTEP_HAVE_GREENLET
    if (self->use_greenlet)
        Py_XSETREF(self->scheduler, (PyObject *)PyGreenlet_GetCurrent());
#endif
    self->turn_at = now_ns() + ARUN_TURN_NS;
    PySendResult res = PYGEN_NEXT;
    for (;;) {
        int k;
        switch (self->phase) {
        case PH_FILL:
            k = fill_step(self, value, exc, out);
            break;
        case PH_ROUND:
            k = round_step(self, value, exc, out);
            break;
        case PH_TURN:
            k = turn_step(self, value, exc, out);
            break;
        default:
            res = finish(self, out);
            k = STEP_YIELD;
            break;
        }
        if (k == STEP_YIELD)
            break;
        value = exc = NULL;
    }
    self->busy = 0;
    if (res != PYGEN_NEXT)
        arun_release(self);
    return res;
}

/* ------------------------------------------------------------------------
 * ARun: the awaitable arun() returns.
 * ------------------------------------------------------------------------ */

#if PY_VERSION_HEX >= 0x030A0000 /* am_send exists from 3.10 on */
static PySendResult arun_am_send(ARunObject *self, PyObject *arg, PyObject **out)
{
    return drive(self, arg, NULL, out);
}
#endif

/* Turns a send result into what a send()/__next__ method returns. */
static PyObject *send_result(PySendResult r, PyObject *out)
{
    if (r == PYGEN_RETURN) {
        pyls_set_stop_value(out);
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *arun_iternext(ARunObject *self)
{
    PyObject *out;
    PySendResult r = drive(self, Py_None, NULL, &out);
    if (r == PYGEN_RETURN && out == Py_None) { /* tp_iternext may not signal None silently */
        Py_DECREF(out);
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    return send_result(r, out);
}

static PyObject *arun_send(ARunObject *self, PyObject *arg)
{
    PyObject *out;
    PySendResult r = drive(self, arg, NULL, &out);
    return send_result(r, out);
}

/* throw(exc) / throw(type[, value[, tb]]): the loop throws into whoever
 * awaits something foreign now (a cancellation, usually). */
static PyObject *arun_throw(ARunObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3)
        return PyErr_Format(PyExc_TypeError, "throw expected 1 to 3 arguments, got %zd", nargs);
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : Py_None;
    PyObject *exc;
    if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val == Py_None ? NULL : val);
        exc = pyls_fetch_exception();
    } else if (PyExceptionInstance_Check(typ)) {
        exc = Py_NewRef(typ);
    } else {
        return PyErr_Format(PyExc_TypeError,
                            "exceptions must be classes or instances deriving from "
                            "BaseException, not %.100s", Py_TYPE(typ)->tp_name);
    }
    if (nargs > 2 && args[2] != Py_None && PyTraceBack_Check(args[2]))
        PyException_SetTraceback(exc, args[2]);
    PyObject *out;
    PySendResult r = drive(self, NULL, exc, &out);
    Py_DECREF(exc);
    return send_result(r, out);
}

/* For close(): closes whoever awaits something foreign now (the source's
 * __anext__, a consumer, a trio checkpoint) and cancels the run. */
static void close_waiting(ARunObject *self)
{
    PyObject *r;
    if (self->src_aw != NULL) {
        if (close_aw(self->src_aw, &r) == PYGEN_RETURN)
            Py_DECREF(r);
        else
            PyErr_Clear();
        Py_CLEAR(self->src_aw);
    }
    if (self->turn_aw != NULL) {
        if (close_aw(self->turn_aw, &r) == PYGEN_RETURN)
            Py_DECREF(r);
        else
            PyErr_Clear();
        Py_CLEAR(self->turn_aw);
    }
    if (self->phase == PH_TURN)
        self->phase = PH_FILL;
    lockstep_iter *it = self->s != NULL ? self->s->current : NULL;
    if (self->phase == PH_ROUND && it != NULL && !it->done) {
        aslot *sl = it->consumer.arg;
        if (sl->coro != NULL) {
            lockstep_iter *saved = tls_async;
            tls_async = it;
            PySendResult res = close_aw(sl->coro, &r);
            tls_async = saved;
            consumer_done(self, it, res == PYGEN_RETURN ? r : NULL);
        }
    }
    if (self->s != NULL)
        note_cancel(self, NULL);
}

/* close(): the awaiting coroutine is being closed.  Whoever awaits
 * something foreign is closed, every consumer's iterator ends and every
 * consumer runs to its end without yielding again (an await that would
 * wait closes that consumer); the outcome is dropped. */
static PyObject *arun_close(ARunObject *self, PyObject *unused)
{
    (void)unused;
    if (self->phase == PH_DONE)
        Py_RETURN_NONE;
    if (self->phase == PH_START || self->busy) {
        if (self->busy) {
            PyErr_SetString(PyExc_RuntimeError, "lockstep.arun() is already running");
            return NULL;
        }
        self->phase = PH_DONE;
        arun_release(self);
        Py_RETURN_NONE;
    }
    self->closing = 1;
    close_waiting(self);
    /* The outcome goes nowhere: GeneratorExit beats it, and close() swallows that. */
    if (self->cancel_exc == NULL) {
        PyErr_SetNone(PyExc_GeneratorExit);
        self->cancel_exc = pyls_fetch_exception();
    }
    PyObject *out;
    PySendResult r = drive(self, NULL, NULL, &out);
    if (r == PYGEN_ERROR) {
        if (PyErr_ExceptionMatches(PyExc_GeneratorExit)) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        return NULL;
    }
    Py_XDECREF(out);
    Py_RETURN_NONE;
}

static PyObject *arun_await(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *arun_repr(ARunObject *self)
{
    static const char *const names[] = {"not started", "running", "running", "running",
                                        "running", "done"};
    return PyUnicode_FromFormat("<lockstep.arun %s consumers=%zu at %p>", names[self->phase],
                                self->n, self);
}

/* tp_finalize: a run dropped before it finished is closed, so that its
 * consumers end and their finally blocks run; one never awaited warns, as
 * a coroutine would.  PyPy's C-API layer has no tp_finalize (it aborts on
 * a type that has one), so there arun_dealloc calls this itself, as
 * stream.c does. */
static void arun_finalize(ARunObject *self)
{
    if (self->phase == PH_DONE)
        return;
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (self->phase == PH_START) {
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "lockstep.arun() was never awaited") < 0)
            PyErr_WriteUnraisable((PyObject *)self);
        self->phase = PH_DONE;
        arun_release(self);
    } else {
        PyObject *r = arun_close(self, NULL);
        if (r == NULL)
            PyErr_WriteUnraisable((PyObject *)self);
        Py_XDECREF(r);
    }
    PyErr_Restore(t, v, tb);
}

/* GC: the consumers, results and exceptions; a running run's awaitables
 * and greenlets are not visited (they may be suspended mid-consumer and
 * must not be torn down by the collector: tp_finalize closes them). */
static int arun_traverse(ARunObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    for (size_t i = 0; self->slots != NULL && i < self->n; i++) {
        Py_VISIT(self->slots[i].consumer);
        Py_VISIT(self->slots[i].result);
        Py_VISIT(self->slots[i].exc);
    }
    Py_VISIT(self->src);
    Py_VISIT(self->src_exc);
    Py_VISIT(self->lib_exc);
    Py_VISIT(self->cancel_exc);
    return 0;
}

/* GC: clears a run that is not running (finalize has closed any other). */
static int arun_clear(ARunObject *self)
{
    if (self->s == NULL && !self->busy)
        arun_release(self);
    return 0;
}

static void arun_dealloc(ARunObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
#ifdef PYPY_VERSION
    arun_finalize(self);
#else
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return; /* resurrected */
#endif
    PyObject_GC_UnTrack(self);
    if (self->s == NULL)
        arun_release(self);
    /* else: still open (finalize failed): leak it rather than free live state */
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef arun_methods[] = {
    {"send", (PyCFunction)arun_send, METH_O, "Drive the run; used by event loops."},
    {"throw", (PyCFunction)(void (*)(void))arun_throw, METH_FASTCALL,
     "Throw an exception (a cancellation) into the run."},
    {"close", (PyCFunction)arun_close, METH_NOARGS,
     "End the run: every consumer's iterator ends and every consumer returns."},
    {NULL},
};

PyDoc_STRVAR(arun_type_doc,
"What lockstep.arun() returns: await it (once) for the results tuple.");

static PyType_Slot arun_slots[] = {
    {Py_tp_doc, (void *)arun_type_doc},
    {Py_tp_dealloc, arun_dealloc},
#ifndef PYPY_VERSION
    {Py_tp_finalize, arun_finalize},
#endif
    {Py_tp_traverse, arun_traverse},
    {Py_tp_clear, arun_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, arun_iternext},
    {Py_am_await, arun_await},
#if PY_VERSION_HEX >= 0x030A0000 /* before: tp_iternext and send (pycompat.h) */
    {Py_am_send, arun_am_send},
#endif
    {Py_tp_methods, arun_methods},
    {Py_tp_repr, arun_repr},
    {0, NULL},
};

PyType_Spec pyls_arun_spec = {
    .name = "lockstep.ARun",
    .basicsize = sizeof(ARunObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = arun_slots,
};

/* ------------------------------------------------------------------------
 * arun(): checks everything, reads nothing.
 * ------------------------------------------------------------------------ */

/* Parses engine=: None and 'greenlet' run consumers as they come (sync
 * ones on greenlets), 'buffer' reads everything first; 'thread' is
 * refused.  Sets self->buffer and self->use_greenlet. */
static int parse_engine(ARunObject *self, PyObject *obj)
{
    if (obj != NULL && obj != Py_None && !PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "engine must be None or a str, not %.200s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (obj == NULL || obj == Py_None || PyUnicode_CompareWithASCIIString(obj, "greenlet") == 0) {
        self->use_greenlet = greenlet_usable();
        if (!self->use_greenlet && obj != NULL && obj != Py_None) {
            PyErr_SetString(PyExc_ImportError,
                            "lockstep.arun engine 'greenlet' needs the greenlet package (pip "
                            "install greenlet, or apt install python3-greenlet)");
            return -1;
        }
        return 0;
    }
    if (PyUnicode_CompareWithASCIIString(obj, "buffer") == 0) {
        self->buffer = 1;
        return 0;
    }
    if (PyUnicode_CompareWithASCIIString(obj, "thread") == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "lockstep.arun cannot use engine='thread': its consumers run on the "
                        "event loop's own thread, and a consumer thread may not await the "
                        "loop's objects; for CPU-heavy synchronous consumers use "
                        "await asyncio.to_thread(lockstep.run, iterable, *consumers, "
                        "engine='thread')");
        return -1;
    }
    PyErr_Format(PyExc_ValueError,
                 "unknown lockstep.arun engine %R; expected None, 'greenlet' or 'buffer'", obj);
    return -1;
}

/* Checks that consumer i is callable and not an async generator function. */
static int check_consumer(PyObject *c, Py_ssize_t i)
{
    if (!PyCallable_Check(c)) {
        PyErr_Format(PyExc_TypeError, "lockstep consumer %zd is not callable: %.200s object", i,
                     Py_TYPE(c)->tp_name);
        return -1;
    }
    if (func_flags(c) & CO_ASYNC_GENERATOR) {
        PyErr_Format(PyExc_TypeError,
                     "lockstep consumer %zd (%R) is an async generator function: it returns "
                     "an async generator, neither a result nor an awaitable; make it an "
                     "'async def' that returns its result",
                     i, c);
        return -1;
    }
    return 0;
}

/* The source's async iterator (src_async = 1) or iterator (0). */
static PyObject *source_iter(PyObject *source, int *src_async)
{
    PyAsyncMethods *am = Py_TYPE(source)->tp_as_async;
    if (am != NULL && am->am_aiter != NULL) {
        PyObject *ai = am->am_aiter(source);
        if (ai == NULL)
            return NULL;
        PyAsyncMethods *am2 = Py_TYPE(ai)->tp_as_async;
        if (am2 == NULL || am2->am_anext == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "lockstep.arun: __aiter__ of the source returned %.100s, which has no "
                         "__anext__", Py_TYPE(ai)->tp_name);
            Py_DECREF(ai);
            return NULL;
        }
        *src_async = 1;
        return ai;
    }
    if (Py_TYPE(source)->tp_iter == NULL && !PySequence_Check(source)) {
        PyErr_Format(PyExc_TypeError,
                     "lockstep.arun: the source must be an iterable or an async iterable, "
                     "not %.200s", Py_TYPE(source)->tp_name);
        return NULL;
    }
    *src_async = 0;
    return PyObject_GetIter(source);
}

const char pyls_arun_doc[] =
"arun($module, source, /, *consumers, window=None, engine=None)\n"
"--\n"
"\n"
"Run every consumer over one pass of source, under the running event loop;\n"
"await it for their results.\n"
"\n"
"    async def asum(it):\n"
"        s = 0\n"
"        async for x in it:\n"
"            s += x\n"
"        return s\n"
"\n"
"    total, largest = await lockstep.arun(websocket, asum, max)\n"
"\n"
"source: any iterable, or any async iterable (its __anext__ is awaited, so\n"
"  whatever it awaits goes to the event loop).\n"
"consumers: callables taking one iterator, which is both an iterator and\n"
"  an async iterator.  A call that returns an awaitable (an async def\n"
"  consumer, an aiostream stream) is driven by arun, and reads with\n"
"  `async for`.  Any other consumer (sum, max, Counter) is synchronous: it\n"
"  runs on a greenlet and reads with `for`; without greenlet its first\n"
"  next() raises RuntimeError.  Sync and async consumers mix freely.\n"
"window: items handed over at once (None: lockstep.DEFAULT_WINDOW; 1 is\n"
"  strict lockstep).  At most a window's worth of work runs between two\n"
"  event-loop turns of a synchronous consumer.\n"
"engine: None or 'greenlet' (consumers as above), or 'buffer' (read\n"
"  everything first, then run each consumer; synchronous consumers then\n"
"  need no greenlet).  'thread' raises ValueError.\n"
"\n"
"Works under asyncio, uvloop and trio: arun creates no task and no future.\n"
"When a consumer (or the source) awaits something of the loop's, arun\n"
"yields exactly that to the loop and passes the answer back; meanwhile the\n"
"other consumers wait, since they all share the awaiting task.  So a\n"
"cancel scope or asyncio.timeout() opened inside a consumer around its\n"
"reads of the stream cannot work; put it around the await of arun.  A run\n"
"that awaits nothing foreign still gives the loop a turn every few ms.\n"
"\n"
"Semantics are those of lockstep.run: results as if each consumer ran over\n"
"its own copy; a consumer that returns early detaches (an infinite source\n"
"whose consumers all stop terminates); the exception earliest in the\n"
"stream propagates and the other consumers' iterators end, so their\n"
"finally blocks and `async with` exits run.  A cancellation from outside\n"
"(task.cancel(), a timeout, trio's move_on_after) reaches the consumer\n"
"awaiting at that moment; every other iterator ends; arun re-raises the\n"
"cancellation.  The source is never closed.  Each consumer runs in its own\n"
"copy of the awaiting task's contextvars context; the source in the\n"
"task's.\n"
"\n"
"Raises TypeError (a non-callable consumer, an async generator function as\n"
"consumer, a source that is neither iterable nor async iterable) or\n"
"ValueError (window < 1, an unknown engine or 'thread') at the call,\n"
"before anything is read.";

PyObject *pyls_arun(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames)
{
    modstate *st = PyModule_GetState(module);
    if (async_names_init() < 0)
        return NULL;
    PyObject *window = NULL, *engine = NULL;
    if (pyls_run_keywords("arun", args + nargs, kwnames, &window, &engine) < 0)
        return NULL;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "arun() missing required argument 'source' (pos 1)");
        return NULL;
    }
    for (Py_ssize_t i = 1; i < nargs; i++)
        if (check_consumer(args[i], i - 1) < 0)
            return NULL;
    ARunObject *self = PyObject_GC_New(ARunObject, st->arun_type);
    if (self == NULL)
        return NULL;
    memset((char *)self + sizeof(PyObject), 0, sizeof *self - sizeof(PyObject));
    self->st = st;
    self->phase = PH_DONE; /* until fully built: dealloc just releases */
    PyObject_GC_Track(self);
    if (pyls_parse_window(window, &self->window) < 0 || parse_engine(self, engine) < 0)
        goto fail;
    if (self->window == 0)
        self->window = PYLOCKSTEP_WINDOW_GREENLET; /* lockstep.DEFAULT_WINDOW */
    self->src = source_iter(args[0], &self->src_async);
    if (self->src == NULL)
        goto fail;
    size_t n = (size_t)(nargs - 1);
    self->slots = PyMem_Calloc(n ? n : 1, sizeof *self->slots);
    if (self->slots == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    self->n = n;
    for (size_t i = 0; i < n; i++) {
        self->slots[i].consumer = Py_NewRef(args[i + 1]);
        self->slots[i].run = self;
    }
    self->phase = PH_START;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

