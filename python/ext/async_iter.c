/*
 * async_iter.c: lockstep.AsyncIterator, the iterator lockstep.arun hands
 * every consumer (both an iterator and an async iterator), and
 * lockstep._AsyncNext, the one awaitable its __anext__ returns, reused for
 * every item.  Its am_send returns an item already in the window with
 * PYGEN_RETURN: no object and no suspension per item.  When the window is
 * used up it suspends the consumer's coroutine with the module's private
 * marker, which the driver (async_driver.c) recognises as "this consumer
 * took the window"; a synchronous consumer's __next__ instead asks the
 * driver to switch its greenlet back (pyls_async_wait_window).
 *
 * Public objects: AsyncIterator.
 */
#include "async.h"

/* Declared in async.h. */
_Thread_local lockstep_iter *pyls_tls_async __attribute__((tls_model("initial-exec")));

/* ------------------------------------------------------------------------
 * AsyncIterator: a consumer's view of the stream, for `for` and `async for`.
 * ------------------------------------------------------------------------ */

/* Raises the RuntimeError for an iterator used where it may not be. */
static __attribute__((noinline, cold)) void aiter_misuse(AIterObject *self, int async)
{
    if (self->it != NULL && async && self->it == tls_sync)
        PyErr_SetString(PyExc_RuntimeError,
                        "lockstep iterator: a synchronous consumer cannot await it");
    else if (self->it != NULL && !async && self->it == tls_async)
        PyErr_SetString(PyExc_RuntimeError,
                        "lockstep.arun: an async consumer must read its iterator with "
                        "'async for' (or 'await it.__anext__()'), not with for/next()");
    else
        pyls_misuse("iterator", self->it, "another consumer, task, thread or greenlet");
}

/* The item at it's cursor, which the caller checked is in range (a new
 * reference). */
static inline PyObject *take_item(lockstep_iter *it)
{
    PyObject *item = *(PyObject *const *)it->head.cur;
    it->head.cur += sizeof(PyObject *);
    return Py_NewRef(item);
}

/* The slow path of am_send: the window is used up.  Returns the item, or
 * suspends the consumer's coroutine with the marker until the driver has
 * refilled the window, or ends (StopAsyncIteration). */
static __attribute__((noinline)) PySendResult aiter_send_slow(AIterObject *self, PyObject **out)
{
    lockstep_iter *it = self->it;
    *out = NULL;
    if (!lockstep__iter_is_current(it)) {
        aiter_misuse(self, 1);
        return PYGEN_ERROR;
    }
    int must_wait;
    const void *p = lockstep__next_step(it, &must_wait);
    if (p != NULL) {
        *out = Py_NewRef(*(PyObject *const *)p);
        return PYGEN_RETURN;
    }
    if (must_wait) {
        *out = Py_NewRef(self->run->st->marker);
        return PYGEN_NEXT;
    }
    PyErr_SetNone(PyExc_StopAsyncIteration);
    return PYGEN_ERROR;
}

/* The await of `it.__anext__()`: an item at once, or the marker. */
static PySendResult aiter_send(AIterObject *self, PyObject *arg, PyObject **out)
{
    (void)arg;
    lockstep_iter *it = self->it;
    if (NEVER(it == NULL || it != tls_async)) {
        aiter_misuse(self, 1);
        *out = NULL;
        return PYGEN_ERROR;
    }
    if (ALWAYS(it->head.cur < it->head.end)) {
        *out = take_item(it);
        return PYGEN_RETURN;
    }
    return aiter_send_slow(self, out);
}

/* __aiter__. */
static PyObject *aiter_self(PyObject *self)
{
    return Py_NewRef(self);
}

/* __anext__: the iterator's one AnextObject, made the first time. */
static PyObject *aiter_anext(AIterObject *self)
{
    if (ALWAYS(self->next_aw != NULL))
        return Py_NewRef(self->next_aw);
    if (self->it == NULL) {
        aiter_misuse(self, 1);
        return NULL;
    }
    AnextObject *aw = PyObject_New(AnextObject, self->run->st->anext_type);
    if (aw == NULL)
        return NULL;
    aw->owner = self;
    self->next_aw = (PyObject *)aw;
    return Py_NewRef(aw);
}

/* The slow path of __next__: the window is used up, so a synchronous
 * consumer switches back to the driver's greenlet until it is refilled. */
static __attribute__((noinline)) PyObject *aiter_next_slow(AIterObject *self)
{
    lockstep_iter *it = self->it;
    if (!lockstep__iter_is_current(it)) {
        aiter_misuse(self, 0);
        return NULL;
    }
    for (;;) {
        int must_wait;
        const void *p = lockstep__next_step(it, &must_wait);
        if (p != NULL)
            return Py_NewRef(*(PyObject *const *)p);
        if (!must_wait)
            return NULL;
#if LOCKSTEP_HAVE_GREENLET
        if (self->greenlet != NULL) {
            /* Only a greenlet exists to switch from: greenlet was loaded. */
            if (pyls_greenlet_current() != self->greenlet) {
                aiter_misuse(self, 0);
                return NULL;
            }
            if (pyls_async_wait_window(self) < 0)
                return NULL;
            continue;
        }
#endif
        PyErr_SetString(PyExc_RuntimeError,
                        "lockstep.arun: this consumer reads with for/next() and must wait for "
                        "the next window, which needs greenlet (pip install greenlet, or apt "
                        "install python3-greenlet); without it, make the consumer async "
                        "('async for'), or run synchronous consumers off the loop with "
                        "await asyncio.to_thread(lockstep.run, iterable, *consumers)");
        return NULL;
    }
}

/* __next__: for synchronous consumers. */
static PyObject *aiter_next(AIterObject *self)
{
    lockstep_iter *it = self->it;
    if (NEVER(it == NULL || it != tls_sync)) {
        aiter_misuse(self, 0);
        return NULL;
    }
    if (ALWAYS(it->head.cur < it->head.end))
        return take_item(it);
    return aiter_next_slow(self);
}

/* AnextObject's am_send: the await of __anext__(). */
static PySendResult anext_send(AnextObject *self, PyObject *arg, PyObject **out)
{
    if (NEVER(self->owner == NULL)) {
        PyErr_SetString(PyExc_RuntimeError, "lockstep iterator used after it was freed");
        *out = NULL;
        return PYGEN_ERROR;
    }
    return aiter_send(self->owner, arg, out);
}

/* send(value) and __next__, as a generator's: a yielded value is returned,
 * a returned one raised as StopIteration(value).  Python 3.12+ awaits
 * through __next__. */
static PyObject *anext_send_method(AnextObject *self, PyObject *arg)
{
    PyObject *out;
    PySendResult r = anext_send(self, arg, &out);
    if (r == PYGEN_RETURN) {
        pyls_set_stop_value(out);
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *anext_iternext(AnextObject *self)
{
    return anext_send_method(self, Py_None);
}

/* throw(...): raised where the consumer awaits (nothing is in flight). */
static PyObject *anext_throw(AnextObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 1)
        return PyErr_Format(PyExc_TypeError, "throw expected at least 1 argument");
    PyObject *exc = args[0];
    if (PyExceptionClass_Check(exc))
        PyErr_SetObject(exc, nargs > 1 ? args[1] : NULL);
    else
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    return NULL;
}

static PyObject *anext_close(AnextObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    Py_RETURN_NONE;
}

/* AnextObjects hold no references (owner is borrowed). */
static void anext_dealloc(AnextObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef anext_methods[] = {
    {"send", (PyCFunction)anext_send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))anext_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)anext_close, METH_NOARGS, NULL},
    {NULL},
};

static PyType_Slot anext_slots[] = {
    {Py_tp_dealloc, anext_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, anext_iternext},
    {Py_am_await, aiter_self},
#if PY_VERSION_HEX >= 0x030A0000 /* before: tp_iternext and send (pycompat.h) */
    {Py_am_send, anext_send},
#endif
    {Py_tp_methods, anext_methods},
    {0, NULL},
};

PyType_Spec pyls_anext_spec = {
    .name = "lockstep._AsyncNext",
    .basicsize = sizeof(AnextObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = anext_slots,
};

static PyObject *aiter_get_active(AIterObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->it != NULL);
}

static PyObject *aiter_get_position(AIterObject *self, void *closure)
{
    (void)closure;
    if (self->it == NULL || (self->it != tls_async && self->it != tls_sync)) {
        aiter_misuse(self, self->it == tls_sync);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(lockstep_position(self->it));
}

static PyObject *aiter_repr(AIterObject *self)
{
    if (self->it == NULL)
        return PyUnicode_FromFormat("<lockstep.AsyncIterator (finished) at %p>", self);
    return PyUnicode_FromFormat("<lockstep.AsyncIterator consumer=%zu at %p>",
                                lockstep_index(self->it), self);
}

/* An AsyncIterator holds only its AnextObject (run and greenlet are
 * borrowed), which forgets it here. */
static void aiter_dealloc(AIterObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->next_aw != NULL) {
        ((AnextObject *)self->next_aw)->owner = NULL;
        Py_DECREF(self->next_aw);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyGetSetDef aiter_getset[] = {
    {"active", (getter)aiter_get_active, NULL,
     "True while the consumer this iterator was made for is running.", NULL},
    {"position", (getter)aiter_get_position, NULL,
     "Number of items this consumer has received (only inside the consumer).", NULL},
    {NULL},
};

PyDoc_STRVAR(aiter_doc,
"The iterator lockstep.arun hands each consumer: both an iterator and an\n"
"async iterator.\n\n"
"An async consumer reads it with `async for` (or `await it.__anext__()`);\n"
"a synchronous one (sum, max, a plain loop) with `for`.  It yields the\n"
"stream's items in order and ends at the end of the stream, or early when\n"
"the run is cancelled.  An item already in the window is returned without\n"
"suspending.  It works only inside its own consumer: after the run, or\n"
"from another task, thread or consumer, it raises RuntimeError.");

static PyType_Slot aiter_slots[] = {
    {Py_tp_doc, (void *)aiter_doc},
    {Py_tp_dealloc, aiter_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, aiter_next},
    {Py_am_aiter, aiter_self},
    {Py_am_anext, (unaryfunc)aiter_anext},
    {Py_tp_getset, aiter_getset},
    {Py_tp_repr, aiter_repr},
    {0, NULL},
};

PyType_Spec pyls_aiter_spec = {
    .name = "lockstep.AsyncIterator",
    .basicsize = sizeof(AIterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = aiter_slots,
};

