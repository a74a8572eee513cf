/*
 * bytes.c: byte streams in the binding, the C half of lockstep.run_bytes.
 *
 *   - run_read(readinto, /, *consumers, window, engine) runs the consumers
 *     over a stream of BYTES: items of one byte in the core's window, which
 *     readinto(memoryview) -> int fills in place through the core's bulk
 *     path (lockstep_run_read's loop, lockstep__pull_read_with; on the
 *     greenlet engine the consumer that ends a round refills, as in run()).
 *     The memoryview covers the window's free room only for the call:
 *     right after it, it and any slice the source kept of it are made
 *     inaccessible (ValueError), so no Python code reaches the window.
 *   - Each consumer receives a lockstep.ByteIterator, whose take(n),
 *     readinto1(buffer) and peek() are lockstep_take plus one copy (into a
 *     new bytes, or the caller's buffer), so nothing handed to Python points
 *     into the window.  On the thread engine the GIL is released while
 *     take waits for the producer; on the greenlet engine take switches.
 *     The file object API (lockstep.Reader) is Python, in lockstep/_bytes.py,
 *     over these three calls.
 *
 * A failure's position is the consumer's byte position in the core, so the
 * outcome is byte-exact on every engine and window.
 */
#include "binding.h"

#include <string.h>

/* Returns 1 when self may be used on this thread (and greenlet) now: its
 * consumer is running and it is that consumer's; else 0. */
static int bytes_is_owner(IterObject *self)
{
    lockstep_iter *it = self->it;
    if (it == NULL || it != pyls_tls_current)
        return 0;
#if LOCKSTEP_HAVE_GREENLET
    if (self->engine == ENG_GREENLET && pyls_greenlet_current() != self->greenlet)
        return 0;
#endif
    return 1;
}

/* Returns self's lockstep_iter when self may be used on this thread (and
 * greenlet) now, else NULL with RuntimeError set. */
static lockstep_iter *bytes_owned(IterObject *self)
{
    if (NEVER(!bytes_is_owner(self))) {
        pyls_iter_misuse(self, "reader");
        return NULL;
    }
    return self->it;
}

/* The start of take(n) and readline1(limit): self's lockstep_iter when self
 * may be used now (bytes_owned) and arg is an int, whose value goes into
 * *n; else NULL with an exception set. */
static lockstep_iter *bytes_owned_with_size(IterObject *self, PyObject *arg, Py_ssize_t *n)
{
    lockstep_iter *it = bytes_owned(self);
    if (it == NULL)
        return NULL;
    *n = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (*n == -1 && PyErr_Occurred())
        return NULL;
    return it;
}

/* lockstep_take in the engine's way: the thread engine lets go of the GIL
 * when it may wait (nothing left in hand).  Returns the span (count bytes)
 * or NULL with *count 0 at the end or on cancellation; NULL with an
 * exception set on misuse the core detected. */
static const unsigned char *bytes_take(IterObject *self, lockstep_iter *it, size_t max,
                                       size_t *count)
{
    const void *p;
    if (self->engine == ENG_THREAD && it->head.cur >= it->head.end) {
        Py_BEGIN_ALLOW_THREADS
        p = lockstep_take(it, max, count);
        Py_END_ALLOW_THREADS
    } else {
        p = lockstep_take(it, max, count);
    }
    if (p == NULL && !PyErr_Occurred() && it->stream->misuse != 0)
        pyls_raise_code(it->stream->misuse);
    return p;
}

/* Makes sure self has bytes in hand, unconsumed: when it has none, takes a
 * window's worth (all the core hands it at once) and moves the cursor
 * back, which the core's contract allows since the span stays valid until
 * our next call and it lies in the window segment this consumer holds.
 * Returns 1 with bytes in hand (it->head.cur to it->head.end), 0 at the
 * end or on cancellation, -1 with an exception set. */
static int bytes_fill_hand(IterObject *self, lockstep_iter *it)
{
    if (it->head.cur < it->head.end)
        return 1;
    size_t count;
    const unsigned char *p = bytes_take(self, it, SIZE_MAX, &count);
    if (p == NULL)
        return PyErr_Occurred() ? -1 : 0;
    it->head.cur = p; /* a take of SIZE_MAX left it at it->head.end: p + count */
    return 1;
}

/* take(n): up to n bytes (at least one, b"" at the end), consumed, as a
 * new bytes object.  n < 0 means whatever the window holds for us. */
static PyObject *bytes_take_method(IterObject *self, PyObject *arg)
{
    Py_ssize_t n;
    lockstep_iter *it = bytes_owned_with_size(self, arg, &n);
    if (it == NULL)
        return NULL;
    if (n == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    size_t count;
    const unsigned char *p = bytes_take(self, it, n < 0 ? SIZE_MAX : (size_t)n, &count);
    if (p == NULL)
        return PyErr_Occurred() ? NULL : PyBytes_FromStringAndSize(NULL, 0);
    return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)count);
}

/* readinto1(buffer): copies up to len(buffer) bytes (one take) into a
 * writable buffer; returns how many, 0 at the end. */
static PyObject *bytes_readinto1(IterObject *self, PyObject *arg)
{
    lockstep_iter *it = bytes_owned(self);
    if (it == NULL)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    size_t count = 0;
    const unsigned char *p = NULL;
    if (view.len > 0)
        p = bytes_take(self, it, (size_t)view.len, &count);
    if (p != NULL)
        memcpy(view.buf, p, count);
    PyBuffer_Release(&view);
    if (p == NULL && PyErr_Occurred())
        return NULL;
    return PyLong_FromSize_t(count);
}

/* peek(): the bytes in hand (taking a window's worth if none are: see
 * bytes_fill_hand), not consumed; b"" at the end. */
static PyObject *bytes_peek(IterObject *self, PyObject *unused)
{
    (void)unused;
    lockstep_iter *it = bytes_owned(self);
    if (it == NULL)
        return NULL;
    int in_hand = bytes_fill_hand(self, it);
    if (in_hand <= 0)
        return in_hand < 0 ? NULL : PyBytes_FromStringAndSize(NULL, 0);
    return PyBytes_FromStringAndSize((const char *)it->head.cur,
                                     (Py_ssize_t)(it->head.end - it->head.cur));
}

/* readline1(limit): up to and including the first b"\n" among the bytes in
 * hand (taking a window's worth if none are), at most limit of them
 * (limit < 0: no limit), consumed; b"" at the end.  Without a newline in
 * hand it returns all it has: the caller asks again for the rest. */
static PyObject *bytes_readline1(IterObject *self, PyObject *arg)
{
    Py_ssize_t limit;
    lockstep_iter *it = bytes_owned_with_size(self, arg, &limit);
    if (it == NULL)
        return NULL;
    if (limit == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    int in_hand = bytes_fill_hand(self, it);
    if (in_hand <= 0)
        return in_hand < 0 ? NULL : PyBytes_FromStringAndSize(NULL, 0);
    const unsigned char *p = it->head.cur;
    size_t n = (size_t)(it->head.end - p);
    if (limit > 0 && (size_t)limit < n)
        n = (size_t)limit;
    const unsigned char *nl = memchr(p, '\n', n);
    if (nl != NULL)
        n = (size_t)(nl - p) + 1;
    it->head.cur = p + n;
    return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
}

/* position: bytes this consumer has taken; its own consumer only. */
static PyObject *bytes_get_position(IterObject *self, void *closure)
{
    (void)closure;
    lockstep_iter *it = bytes_owned(self);
    return it == NULL ? NULL : PyLong_FromUnsignedLongLong(lockstep_position(it));
}

/* detach(): the consumer leaves the run as if it had returned here
 * (lockstep__detach): the others and the source stop waiting for it, and
 * its later reads return b''.  Returns True, or False (doing nothing) when
 * called outside the running consumer it belongs to, as Reader.close()
 * may be from a finalizer after the run. */
static PyObject *bytes_detach(IterObject *self, PyObject *unused)
{
    (void)unused;
    if (!bytes_is_owner(self))
        Py_RETURN_FALSE;
    if (lockstep__detach(self->it) < 0)
        return pyls_raise_code(LOCKSTEP_EPERM);
    Py_RETURN_TRUE;
}

/* ByteIterators hold no Python references, so they need no GC. */
static void bytes_dealloc(IterObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef bytes_methods[] = {
    {"take", (PyCFunction)bytes_take_method, METH_O,
     "take(n) -> bytes: up to n bytes (n < 0: what is in hand), b'' at the end."},
    {"readinto1", (PyCFunction)bytes_readinto1, METH_O,
     "readinto1(buffer) -> int: copies up to len(buffer) bytes into it; 0 at the end."},
    {"readline1", (PyCFunction)bytes_readline1, METH_O,
     "readline1(limit) -> bytes: up to the first newline in hand, at most limit bytes."},
    {"peek", (PyCFunction)bytes_peek, METH_NOARGS,
     "peek() -> bytes: the bytes in hand, not consumed; b'' at the end."},
    {"detach", (PyCFunction)bytes_detach, METH_NOARGS,
     "detach() -> bool: leave the run now, as if the consumer returned here;\n"
     "later reads return b''.  False (a no-op) outside its own consumer."},
    {NULL},
};

static PyGetSetDef bytes_getset[] = {
    {"position", (getter)bytes_get_position, NULL,
     "Bytes this consumer has taken (only inside the consumer).", NULL},
    {NULL},
};

PyDoc_STRVAR(bytes_doc,
"A consumer's handle on a byte stream (lockstep.run_bytes wraps it in a\n"
"lockstep.Reader).  It works only inside the consumer it was given to.");

static PyType_Slot bytes_slots[] = {
    {Py_tp_doc, (void *)bytes_doc},
    {Py_tp_dealloc, bytes_dealloc},
    {Py_tp_methods, bytes_methods},
    {Py_tp_getset, bytes_getset},
    {0, NULL},
};

PyType_Spec pyls_bytes_spec = {
    .name = "lockstep.ByteIterator",
    .basicsize = sizeof(IterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = bytes_slots,
};

/* ------------------------------------------------------------------------
 * The source: readinto(memoryview) into the window.
 * ------------------------------------------------------------------------ */

/* The read function (lockstep_read_fn) of a byte run: calls rs->readinto
 * with a memoryview over max bytes at items.  Returns how many it wrote,
 * 0 at the end, or PYLOCKSTEP_EPYTHON with the exception kept as the
 * producer's (also for a count out of range). */
long pyls_rs_read(void *arg, void *items, size_t max)
{
    runstate *rs = arg;
    PyObject *staged = NULL; /* PyPy: the bytearray the source filled */
    if (PyErr_CheckSignals() < 0)
        goto failed;
#ifndef PYPY_VERSION
    PyObject *view = PyMemoryView_FromMemory(items, (Py_ssize_t)max, PyBUF_WRITE);
#else
    /* cpyext hands out read-only memoryviews over raw memory: the source
     * fills a bytearray, copied into the window below (a copy on PyPy only). */
    PyObject *view = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)max);
#endif
    if (view == NULL)
        goto failed;
    PyObject *r = PyObject_CallOneArg(rs->readinto, view);
    /* Whatever the source kept of the view (itself, or slices of it, which
     * share its managed buffer) must not reach the window once the call
     * has returned: marking the managed buffer released makes every view
     * on it raise ValueError, as a released memoryview does.  There is no
     * exporter to release (PyMemoryView_FromMemory). */
#ifndef PYPY_VERSION
    /* The mark cannot reach a buffer export of the view or of a slice
     * (ctypes from_buffer, numpy.frombuffer: they hold a raw pointer).
     * The view's own exports show that; a slice still alive (the mbuf
     * counts every view on it, ours included) might hold one: refuse both,
     * as a source that keeps part of its buffer after readinto is broken. */
    PyMemoryViewObject *mv = (PyMemoryViewObject *)view;
    int kept = mv->exports > 0 || mv->mbuf->exports > 1;
    mv->mbuf->flags |= _Py_MANAGED_BUFFER_RELEASED;
    if (kept && r != NULL) {
        Py_CLEAR(r);
        PyErr_SetString(PyExc_BufferError,
                        "lockstep.run_bytes: readinto kept a slice or a buffer export of its "
                        "buffer, which lies in the window");
    }
    Py_DECREF(view);
#else /* the bytearray is ours: nothing the source kept reaches the window */
    staged = view;
#endif
    if (r == NULL)
        goto failed;
    if (r == Py_None) { /* a non-blocking source with no data yet */
        Py_DECREF(r);
        PyErr_SetString(PyExc_BlockingIOError,
                        "lockstep.run_bytes: readinto returned None (a non-blocking source "
                        "with no data yet); give run_bytes a blocking one");
        goto failed;
    }
    Py_ssize_t n = PyNumber_AsSsize_t(r, PyExc_OverflowError);
    Py_DECREF(r);
    if (n == -1 && PyErr_Occurred())
        goto failed;
    if (n < 0 || (size_t)n > max) {
        PyErr_Format(n < 0 ? PyExc_BlockingIOError : PyExc_ValueError,
                     "lockstep.run_bytes: readinto returned %zd for a buffer of %zu bytes", n,
                     max);
        goto failed;
    }
    if (staged != NULL) {
        memcpy(items, PyByteArray_AS_STRING(staged), (size_t)n);
        Py_DECREF(staged);
    }
    return (long)n;
failed:
    Py_XDECREF(staged);
    Py_XSETREF(rs->src_exc, pyls_fetch_exception());
    return PYLOCKSTEP_EPYTHON;
}

const char pyls_run_read_doc[] = PyDoc_STR(
"run_read($module, readinto, /, *consumers, window=None, engine=None)\n"
"--\n"
"\n"
"The C half of lockstep.run_bytes: runs consumers over the bytes that\n"
"readinto(memoryview) -> int writes into the window (0 at the end).\n"
"Each consumer gets a lockstep.ByteIterator.  window is in bytes.");

/* run_read(readinto, /, *consumers, window=None, engine=None) */
PyObject *pyls_run_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    PyObject *window = NULL, *engine = NULL, *result = NULL;
    runstate rs;
    memset(&rs, 0, sizeof rs);
    if (pyls_run_keywords("run_read", args + nargs, kwnames, &window, &engine) < 0)
        return NULL;
    if (nargs < 1 || !PyCallable_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "run_read() needs a callable readinto first");
        return NULL;
    }
    if (pyls_rs_init(&rs, PyModule_GetState(module), args + 1, (size_t)(nargs - 1), window,
                     engine, 1) < 0)
        goto done;
    rs.readinto = args[0]; /* borrowed: args outlive the run */
    if (pyls_rs_open(&rs) < 0)
        goto done;
    rs.busy = 1;
#if LOCKSTEP_HAVE_GREENLET
    if (rs.engine == ENG_GREENLET)
        pyls_greenlet_pull(&rs, NULL);
    else
#endif
        lockstep__pull_read_with(rs.s, pyls_rs_read, &rs);
    rs.busy = 0;
    result = pyls_rs_close(&rs);
done:
    pyls_rs_clear(&rs);
    return result;
}
