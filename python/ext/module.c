/*
 * module.c: the module lockstep._lockstep itself: its definition and
 * state (the Iterator, Stream and AsyncIterator types, the greenlet
 * marker), engines(), arun() (defined in async_driver.c), the constants
 * (DEFAULT_WINDOW, DEFAULT_WINDOWS, DEFAULT_BYTES_WINDOW,
 * DEFAULT_BYTES_WINDOWS, MAX_WINDOW, core_version, HAVE_GREENLET_ENGINE)
 * and PyInit__lockstep, the one exported symbol.  run() lives in run.c, the types in iterator.c and
 * stream.c.
 */
#include "binding.h"

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
        int ok = e == ENG_GREENLET ? pyls_greenlet_load() == 0
                 : e == ENG_THREAD ? pyls_thread_available()
                                   : 1;
        if (e == ENG_GREENLET)
            PyErr_Clear();
        if (!ok)
            continue;
        PyObject *name = PyUnicode_FromString(pyls_engine_names[e]);
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

/* _fault_arm(kind, nth): the core's fault-injection hook, for the tests
 * alone (python/tests/test_faults.py): the nth next core allocation of
 * kind (0 malloc, 1 mmap, 2 thread) fails, 0 disarms.  Returns how many
 * acquisitions of kind were counted since the previous call.  Private:
 * not in __init__.py, the stubs or the docs. */
static PyObject *py_fault_arm(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    (void)m;
    long kind, nth;
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_fault_arm expected 2 arguments, got %zd", nargs);
    if ((kind = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred())
        return NULL;
    if ((nth = PyLong_AsLong(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    long seen = kind < 0 || kind >= LOCKSTEP__FAULT_KINDS ? -1 : lockstep__fault_arm((int)kind, nth);
    if (seen < 0)
        return PyErr_Format(PyExc_ValueError, "_fault_arm: no fault kind %ld", kind);
    return PyLong_FromLong(seen);
}

static PyMethodDef module_methods[] = {
    {"run", (PyCFunction)(void (*)(void))pyls_run, METH_FASTCALL | METH_KEYWORDS, pyls_run_doc},
    {"engines", py_engines, METH_NOARGS, engines_doc},
    {"arun", (PyCFunction)(void (*)(void))pyls_arun, METH_FASTCALL | METH_KEYWORDS, pyls_arun_doc},
    {"run_read", (PyCFunction)(void (*)(void))pyls_run_read, METH_FASTCALL | METH_KEYWORDS,
     pyls_run_read_doc},
    {"_fault_arm", (PyCFunction)(void (*)(void))py_fault_arm, METH_FASTCALL, NULL},
    {NULL},
};

#ifdef PYPY_VERSION
/* What PyPy's C-API layer needs before a run: its GIL made, which CPython
 * does at startup and PyPy only when a thread is first started (the thread
 * engine's consumer threads take it with PyGILState_Ensure), and the no-op
 * pyls_rs_tick calls to let PyPy run signal handlers.  Returns 0 or -1. */
static int pypy_prepare(modstate *st)
{
    PyEval_InitThreads();
    PyObject *globals = Py_BuildValue("{sO}", "__builtins__", PyEval_GetBuiltins());
    if (globals == NULL)
        return -1;
    st->pypy_tick = PyRun_String("lambda: None", Py_eval_input, globals, globals);
    Py_DECREF(globals);
    return st->pypy_tick != NULL ? 0 : -1;
}
#endif

/* Adds dict_name, {engine name: window} from windows (indexed by
 * pyengine), and one_name, the greenlet engine's window (the first engine
 * when greenlet is there).  Returns 0, or -1 with an exception set. */
static int add_windows(PyObject *m, const char *dict_name, const char *one_name,
                       const size_t windows[ENG_COUNT_])
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return -1;
    for (int e = 0; e < ENG_COUNT_; e++) {
        PyObject *w = PyLong_FromSize_t(windows[e]);
        int rc = w == NULL ? -1 : PyDict_SetItemString(d, pyls_engine_names[e], w);
        Py_XDECREF(w);
        if (rc < 0) {
            Py_DECREF(d);
            return -1;
        }
    }
    int rc = PyModule_AddObjectRef(m, dict_name, d);
    Py_DECREF(d);
    if (rc < 0)
        return -1;
    return PyModule_AddIntConstant(m, one_name, (long)windows[ENG_GREENLET]);
}

static int module_exec(PyObject *m)
{
    modstate *st = PyModule_GetState(m);
#ifdef PYPY_VERSION
    if (pypy_prepare(st) < 0)
        return -1;
#endif
    st->iter_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &pyls_iter_spec, NULL);
    if (st->iter_type == NULL || PyModule_AddType(m, st->iter_type) < 0)
        return -1;
    st->stream_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &pyls_stream_spec, NULL);
    if (st->stream_type == NULL || PyModule_AddType(m, st->stream_type) < 0)
        return -1;
    st->aiter_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &pyls_aiter_spec, NULL);
    if (st->aiter_type == NULL || PyModule_AddType(m, st->aiter_type) < 0)
        return -1;
    st->arun_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &pyls_arun_spec, NULL);
    if (st->arun_type == NULL || PyModule_AddType(m, st->arun_type) < 0)
        return -1;
    st->anext_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &pyls_anext_spec, NULL);
    if (st->anext_type == NULL)
        return -1;
    st->bytes_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &pyls_bytes_spec, NULL);
    if (st->bytes_type == NULL || PyModule_AddType(m, st->bytes_type) < 0)
        return -1;
    st->marker = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (st->marker == NULL)
        return -1;
    st->marker_args = PyTuple_Pack(1, st->marker);
    if (st->marker_args == NULL)
        return -1;
    if (add_windows(m, "DEFAULT_WINDOWS", "DEFAULT_WINDOW", pyls_default_windows[0]) < 0 ||
        add_windows(m, "DEFAULT_BYTES_WINDOWS", "DEFAULT_BYTES_WINDOW", pyls_default_windows[1]) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "MAX_WINDOW", (long)LOCKSTEP_MAX_WINDOW) < 0 ||
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
    Py_VISIT(st->bytes_type);
    Py_VISIT(st->marker);
    Py_VISIT(st->marker_args);
    Py_VISIT(st->aiter_type);
    Py_VISIT(st->arun_type);
    Py_VISIT(st->anext_type);
#ifdef PYPY_VERSION
    Py_VISIT(st->pypy_tick);
#endif
    return 0;
}

static int module_clear(PyObject *m)
{
    modstate *st = PyModule_GetState(m);
    Py_CLEAR(st->iter_type);
    Py_CLEAR(st->stream_type);
    Py_CLEAR(st->bytes_type);
    Py_CLEAR(st->marker);
    Py_CLEAR(st->marker_args);
    Py_CLEAR(st->aiter_type);
    Py_CLEAR(st->arun_type);
    Py_CLEAR(st->anext_type);
#ifdef PYPY_VERSION
    Py_CLEAR(st->pypy_tick);
#endif
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
