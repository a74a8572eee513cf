/*
 * iterator.c: lockstep.Iterator, a consumer's view of the stream, and the
 * thread's "current consumer" that says which iterator may be used.
 * __next__ is the core's lockstep_next with its fast path inlined behind
 * the ownership check; when the window is used up it waits for the
 * producer in the engine's way (the greenlet engine switches, the thread
 * engine releases the GIL).  Iterators hold no Python references and are
 * made by the run state (run.c) or the greenlet engine.  pyls_misuse, the
 * RuntimeError for an iterator used where it may not be, serves every
 * iterator of the binding (Iterator, ByteIterator, AsyncIterator).
 */
#include "binding.h"

_Thread_local lockstep_iter *pyls_tls_current __attribute__((tls_model("initial-exec")));

/* See binding.h. */
__attribute__((noinline, cold)) PyObject *pyls_misuse(const char *noun, const lockstep_iter *it,
                                                      const char *others)
{
    if (it == NULL)
        PyErr_Format(PyExc_RuntimeError, "lockstep %s used after its consumer returned", noun);
    else
        PyErr_Format(PyExc_RuntimeError, "lockstep %s used outside its own consumer (from %s)",
                     noun, others);
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
    case ENG_GREENLET:
        if (pyls_greenlet_current() != self->greenlet)
            return pyls_iter_misuse(self, "iterator");
        p = lockstep_next(it); /* may switch to another consumer's or the producer's greenlet */
        break;
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
        return pyls_raise_code(it->stream->misuse);
    return NULL;
}

/* __next__: the core's fast path, inlined, behind the ownership check. */
static PyObject *iter_next(IterObject *self)
{
    lockstep_iter *it = self->it;
    if (NEVER(it == NULL || it != pyls_tls_current))
        return pyls_iter_misuse(self, "iterator");
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
    if (self->it == NULL || self->it != pyls_tls_current)
        return pyls_iter_misuse(self, "iterator");
    return PyLong_FromUnsignedLongLong(lockstep_position(self->it));
}

static PyObject *iter_repr(IterObject *self)
{
    if (self->it == NULL)
        return PyUnicode_FromFormat("<lockstep.Iterator (finished) at %p>", self);
    return PyUnicode_FromFormat("<lockstep.Iterator consumer=%zu engine=%s at %p>",
                                lockstep_index(self->it), pyls_engine_names[self->engine], self);
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

#if PY_VERSION_HEX < 0x030A0000
/* Before 3.10 (and on PyPy 3.9) Py_TPFLAGS_DISALLOW_INSTANTIATION does not
 * exist (pycompat.h): this refuses lockstep.Iterator() as the flag does. */
static PyObject *iter_refuse_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    (void)args;
    (void)kwargs;
    PyErr_Format(PyExc_TypeError, "cannot create '%s' instances", type->tp_name);
    return NULL;
}
#endif

static PyType_Slot iter_slots[] = {
    {Py_tp_doc, (void *)iter_doc},
#if PY_VERSION_HEX < 0x030A0000
    {Py_tp_new, iter_refuse_new},
#endif
    {Py_tp_dealloc, iter_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, iter_next},
    {Py_tp_repr, iter_repr},
    {Py_tp_getset, iter_getset},
    {0, NULL},
};

PyType_Spec pyls_iter_spec = {
    .name = "lockstep.Iterator",
    .basicsize = sizeof(IterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = iter_slots,
};

/* Makes the iterator for consumer it of rs; a new reference or NULL. */
IterObject *pyls_iter_make(runstate *rs, lockstep_iter *it)
{
    IterObject *io = PyObject_New(IterObject, rs->bytes ? rs->st->bytes_type : rs->st->iter_type);
    if (io == NULL)
        return NULL;
    io->it = it;
    io->engine = rs->engine;
    io->greenlet = NULL;
    return io;
}
