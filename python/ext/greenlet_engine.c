/*
 * greenlet_engine.c: the greenlet engine, what src/engine_fiber.c does with
 * fibers, with greenlets, plugged into the core's one scheduler through
 * lockstep__engine_ops; and run()'s loop on it, in which consumers refill
 * the window themselves.  Consumer greenlets are children of the
 * producer's greenlet (the one current at open), which starts each of
 * them.  A consumer that has taken the window switches straight to the
 * next live consumer of the round (lockstep__round_next), and the last one
 * back to the producer; in run(), the consumer that ends a round refills
 * the window from the source itself and begins the next round
 * (lockstep__round_again), and rounds alternate direction, so with two
 * consumers at window 1 an item costs one switch instead of four.  Every
 * deliberate switch passes the module's marker, and a finished consumer's
 * greenlet returns it: anything else reaching the producer's greenlet came
 * from consumer code switching behind lockstep's back.  In a build without
 * greenlet's headers only pyls_greenlet_load is left, and it says so.
 */
#include "binding.h"

#include <string.h>

#if LOCKSTEP_HAVE_GREENLET
#  include "greenlet.h"

/* greenlet.getcurrent(), for the other files: set by pyls_greenlet_load. */
struct _greenlet *(*pyls_greenlet_getcurrent)(void);

/* Loads greenlet's C API once; returns 0, or -1 with ImportError set. */
int pyls_greenlet_load(void)
{
    if (_PyGreenlet_API != NULL)
        return 0;
    PyGreenlet_Import();
    if (_PyGreenlet_API != NULL) {
        pyls_greenlet_getcurrent = PyGreenlet_GetCurrent;
        return 0;
    }
    PyObject *cause = pyls_fetch_exception();
    PyErr_Format(PyExc_ImportError,
                 "lockstep engine 'greenlet' needs the greenlet package, which could not be "
                 "imported (%S); install it (pip install greenlet, or apt install "
                 "python3-greenlet) or pass engine='thread'",
                 cause);
    PyObject *exc = pyls_fetch_exception();
    PyException_SetCause(exc, cause); /* steals cause */
    pyls_raise_exception(exc);
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
    PyObject *exc = pyls_fetch_exception();
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
    IterObject *io = pyls_iter_make(rs, it);
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
    lockstep_iter *saved = pyls_tls_current;
    rs->running = it;
    PyObject *r = PyGreenlet_Switch((PyGreenlet *)it->engine_data, rs->st->marker_args, NULL);
    pyls_tls_current = saved;
    while (r != marker) {
        PyGreenlet *g = rs->running != NULL ? rs->running->engine_data : NULL;
        int active = g != NULL && PyGreenlet_ACTIVE(g);
        if (rs->refilling && active) {
            pyls_tls_current = NULL;
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
            pyls_tls_current = saved;
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
        pyls_tls_current = rs->running; /* its consumer goes on where it switched */
        r = PyGreenlet_Throw(g, PyExc_RuntimeError, msg, NULL);
        Py_XDECREF(msg);
        pyls_tls_current = saved;
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

/* The core's refill helpers (lockstep__round_again_with here, and
 * lockstep__pull_with in pyls_greenlet_pull) take pyls_rs_source, static
 * inline in binding.h, as a constant: they are always inlined, so the
 * source call is direct.  At the default window the source call is most of
 * the producer's cost per item, and the indirect call cost about 1 ns of 20
 * (sum and max over range(10**6)). */
static lockstep_iter *greenlet_round_again(runstate *rs, lockstep_stream *s)
{
    if (rs->bytes)
        return lockstep__round_again_read_with(s, pyls_rs_read, rs);
    return lockstep__round_again_with(s, pyls_rs_source, rs);
}

/* lockstep__round_again from inside it's greenlet: ends the round, refills
 * the window from the source and begins the next round.  The source and
 * the drop_items hook run as they would in the producer's greenlet: no
 * consumer current (pyls_tls_current), the producer's contextvars context (a
 * generator source may read a ContextVar, decimal's context for one), and
 * no exception being handled (so that a source's exception is not chained
 * to one the consumer is handling).  The source's own exceptions are kept
 * by pyls_rs_source; any other would be a bug, and is recorded, not leaked. */
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
    pyls_tls_current = NULL;
    rs->refilling = 1;
    lockstep_iter *next = greenlet_round_again(rs, s);
    rs->refilling = 0;
    pyls_tls_current = it;
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
    pyls_tls_current = it;
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

const lockstep__engine_ops pyls_greenlet_ops = {
    .name = "greenlet",
    .open = greenlet_open,
    .dispatch = greenlet_dispatch,
    .finish = lockstep__coop_finish,
    .destroy = greenlet_destroy,
    .next_slow = greenlet_next_slow,
    .coop_create = greenlet_create,
    .coop_destroy = greenlet_free,
};


/* run()'s loop on the greenlet engine, lockstep__pull_with: the stream is in
 * pull mode, so that consumers refill the window themselves
 * (greenlet_refill).  Not when this run is itself inside a lockstep
 * consumer: its source may be that consumer's iterator, which works only in
 * the consumer's own greenlet, so the producer refills as before. */
void pyls_greenlet_pull(runstate *rs, PyObject *src)
{
    lockstep_stream *s = rs->s;
    rs->src = src;
    rs->src_next = src != NULL ? Py_TYPE(src)->tp_iternext : NULL;
    if (pyls_tls_current == NULL) {
        /* Copying makes sure the producer has a context object of its own,
         * which greenlet_refill lends to the consumer greenlets. */
        PyObject *copy = PyContext_CopyCurrent();
        if (copy == NULL) {
            pyls_rs_source_failed(rs);
            return;
        }
        Py_DECREF(copy);
        rs->context = Py_NewRef(PyThreadState_Get()->context);
        rs->refill_here = 1;
    }
    if (rs->bytes)
        lockstep__pull_read_with(s, pyls_rs_read, rs);
    else
        lockstep__pull_with(s, pyls_rs_source, rs);
    rs->refill_here = 0;
    rs->src = NULL;
}

#else /* !LOCKSTEP_HAVE_GREENLET */

int pyls_greenlet_load(void)
{
#ifdef PYPY_VERSION
    PyErr_SetString(PyExc_ImportError,
                    "lockstep engine 'greenlet' is unavailable on PyPy, whose greenlet module "
                    "has no C API; pass engine='thread'");
#else
    PyErr_SetString(PyExc_ImportError,
                    "lockstep engine 'greenlet' is unavailable: this build of lockstep was "
                    "compiled without greenlet's C headers (python-greenlet-dev); pass "
                    "engine='thread'");
#endif
    return -1;
}

#endif /* LOCKSTEP_HAVE_GREENLET */
