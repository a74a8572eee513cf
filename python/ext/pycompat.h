/*
 * pycompat.h: the few CPython 3.10 C-API names the binding uses, defined for
 * the older C APIs lockstep also builds against: CPython 3.9 and PyPy's
 * cpyext (PyPy 7.3, Python 3.9 level).  Each definition behaves exactly as
 * the 3.10 one does; on 3.10 and later this header defines nothing of
 * them.  It also holds pyls_fetch_stop_value, defined on every version:
 * its PyIter_Send needs it, as async_driver.c does, and binding.h
 * includes this header before anything else.
 */
#ifndef LOCKSTEP_PYCOMPAT_H
#define LOCKSTEP_PYCOMPAT_H

#include <Python.h>

/* Py_NewRef (3.10): a new reference to o, which is returned. */
#if PY_VERSION_HEX < 0x030A0000 && !defined(Py_NewRef)
static inline PyObject *lockstep__py_newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#  define Py_NewRef(o) lockstep__py_newref((PyObject *)(o))
#endif

/* Type flags new in 3.10.  Before 3.10 a heap type made from a spec is
 * mutable and inherits object's tp_new whatever the flags say; 0 keeps the
 * specs valid there.  iterator.c then gives lockstep.Iterator a tp_new that
 * raises TypeError, as the flag does.  Nothing in lockstep mutates its
 * types. */
#ifndef Py_TPFLAGS_IMMUTABLETYPE
#  define Py_TPFLAGS_IMMUTABLETYPE 0
#endif
#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
#  define Py_TPFLAGS_DISALLOW_INSTANTIATION 0
#endif

/* PyModule_AddObjectRef (3.10): adds value to m as name without stealing
 * the reference; returns 0 or -1 with an exception set. */
#if PY_VERSION_HEX < 0x030A0000
static inline int lockstep__py_add_object_ref(PyObject *m, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(m, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#  define PyModule_AddObjectRef lockstep__py_add_object_ref
#endif

/* Takes a pending StopIteration's value (a new reference; None when it
 * carries none) into *out and returns 0.  With any other exception
 * pending, or when the value cannot be had, returns -1 with *out NULL and
 * an exception set.  It unpacks the result of an awaitable or generator
 * that returned: pre-3.10 PyIter_Send below, and async_driver.c's throw()
 * and PyPy paths. */
static inline int pyls_fetch_stop_value(PyObject **out)
{
    *out = NULL;
    if (!PyErr_ExceptionMatches(PyExc_StopIteration))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && !PyObject_TypeCheck(value, (PyTypeObject *)PyExc_StopIteration)) {
        PyErr_Restore(type, value, tb); /* normalizing failed: its own exception */
        return -1;
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL) { /* not normalized to an instance: no value */
        *out = Py_NewRef(Py_None);
        return 0;
    }
#ifdef PYPY_VERSION
    /* PyPy's C-API layer is not relied on to fill PyStopIterationObject's
     * value field: the attribute is. */
    *out = PyObject_GetAttrString(value, "value");
#else
    PyObject *v = ((PyStopIterationObject *)value)->value;
    *out = Py_NewRef(v != NULL ? v : Py_None);
#endif
    Py_DECREF(value);
    return *out != NULL ? 0 : -1;
}

/* PySendResult and PyIter_Send (3.10): sends arg into iter (None: next()),
 * returning PYGEN_NEXT with the yielded value, PYGEN_RETURN with the
 * return value (StopIteration's), or PYGEN_ERROR with *presult NULL and an
 * exception set.  Before 3.10 the types lack am_send (async_iter.c and async_driver.c leave that
 * slot out), so this goes through tp_iternext or the send method. */
#if PY_VERSION_HEX < 0x030A0000
typedef enum { PYGEN_RETURN = 0, PYGEN_ERROR = -1, PYGEN_NEXT = 1 } PySendResult;

static inline PySendResult lockstep__py_iter_send(PyObject *iter, PyObject *arg,
                                                  PyObject **presult)
{
#ifdef PYPY_VERSION
    /* Its C-API layer's tp_iternext drops a StopIteration's value (an
     * awaitable's result): send, whenever there is a send. */
    int fast = arg == Py_None && PyIter_Check(iter) && !PyObject_HasAttrString(iter, "send");
#else
    int fast = arg == Py_None && PyIter_Check(iter);
#endif
    PyObject *r = fast ? Py_TYPE(iter)->tp_iternext(iter)
                       : PyObject_CallMethod(iter, "send", "O", arg);
    *presult = r;
    if (r != NULL)
        return PYGEN_NEXT;
    if (!PyErr_Occurred()) {
        *presult = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    return pyls_fetch_stop_value(presult) == 0 ? PYGEN_RETURN : PYGEN_ERROR;
}
#  define PyIter_Send lockstep__py_iter_send
#endif

/* PyContext_CopyCurrent: PyPy's C-API layer has no contextvars C API, so
 * the copy comes from the contextvars module (pyls_call_in_context, in
 * run.c, enters it with Context.run there).  A new reference, or NULL
 * with an exception set. */
#ifdef PYPY_VERSION
static inline PyObject *lockstep__context_copy_current(void)
{
    PyObject *mod = PyImport_ImportModule("contextvars");
    if (mod == NULL)
        return NULL;
    PyObject *copy = PyObject_CallMethod(mod, "copy_context", NULL);
    Py_DECREF(mod);
    return copy;
}
#  define PyContext_CopyCurrent lockstep__context_copy_current
#endif

/* What async_driver.c uses that PyPy's C-API layer (7.3, Python 3.9)
 * leaves out: the async generator flag and check, and the attribute
 * look-up that tells "missing" from "failed" (1 and *out, 0 and NULL, or
 * -1 with an exception). */
#ifdef PYPY_VERSION
#  ifndef CO_ASYNC_GENERATOR
#    define CO_ASYNC_GENERATOR 0x0200 /* the value CPython and PyPy's compiler set */
#  endif
static inline int lockstep__asyncgen_check_exact(PyObject *ob)
{
    return strcmp(Py_TYPE(ob)->tp_name, "async_generator") == 0;
}
#  define PyAsyncGen_CheckExact(ob) lockstep__asyncgen_check_exact((PyObject *)(ob))
static inline int lockstep__lookup_attr(PyObject *ob, PyObject *name, PyObject **out)
{
    *out = PyObject_GetAttr(ob, name);
    if (*out != NULL)
        return 1;
    if (!PyErr_ExceptionMatches(PyExc_AttributeError))
        return -1;
    PyErr_Clear();
    return 0;
}
#  define _PyObject_LookupAttr lockstep__lookup_attr
#endif

#endif /* LOCKSTEP_PYCOMPAT_H */
