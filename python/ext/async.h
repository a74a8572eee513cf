/*
 * async.h: what the two files of lockstep.arun share, and nothing else
 * sees.  async_iter.c holds lockstep.AsyncIterator and the awaitable its
 * __anext__ returns (_AsyncNext): what a consumer reads, once per item.
 * async_driver.c holds the rest: the engine arun plugs into the core, the
 * driver that runs its rounds step by step, ARun (the awaitable arun()
 * returns) and arun() itself.  The iterator never includes greenlet.h: it
 * compares greenlets through pyls_greenlet_current and asks the driver to
 * switch (pyls_async_wait_window), once per window.
 */
#ifndef PYLOCKSTEP_ASYNC_H
#define PYLOCKSTEP_ASYNC_H

#include "binding.h"

/* The buffer engine's first window, in items; it doubles when full. */
#define ARUN_BUFFER_FIRST 512

/* A run that awaits nothing foreign gives the event loop a turn after this
 * many nanoseconds, so that timers and other tasks are not starved: 2 ms
 * is far below what a user would notice, and costs one loop iteration
 * per 2 ms of work (about 5 us under asyncio here: 50 bare turns took
 * 0.25 ms). */
#define ARUN_TURN_NS 2000000

/* The clock is read at every round's end, and every this many items while
 * a window fills (a buffered run has one round). */
#define ARUN_CLOCK_EVERY 1024u

/* The consumer whose coroutine the driver resumes right now, or NULL: only
 * `async for` may read then (defined in async_iter.c).  A synchronous
 * consumer runs with the binding's pyls_tls_current set instead, as
 * lockstep.run's do, so that lockstep.run called inside it knows it runs
 * inside a consumer. */
extern _Thread_local lockstep_iter *pyls_tls_async __attribute__((tls_model("initial-exec")));
#define tls_async pyls_tls_async
#define tls_sync pyls_tls_current

typedef struct ARunObject ARunObject;

typedef struct {
    PyObject_HEAD
    lockstep_iter *it; /* NULL once its consumer has returned */
    ARunObject *run;   /* borrowed; valid while it is not NULL */
    PyObject *greenlet; /* borrowed: a synchronous consumer's greenlet */
    PyObject *next_aw;  /* what __anext__ returns, made once (an AnextObject) */
} AIterObject;

/* What AsyncIterator.__anext__ returns: one per iterator, reused for every
 * item, so that `async for` costs no object per item.  It is its own
 * awaitable (am_send on Python 3.10-3.11; tp_iternext, whose await on
 * 3.12+ uses it, returns an item as StopIteration(item)). */
typedef struct {
    PyObject_HEAD
    AIterObject *owner; /* borrowed; NULL once the iterator is gone */
} AnextObject;

/* Per consumer. */
typedef struct {
    PyObject *consumer;
    PyObject *result;   /* its return value */
    PyObject *exc;      /* its exception, traceback attached */
    AIterObject *iter;  /* the iterator it was given */
    PyObject *coro;     /* the awaitable's iterator the driver sends into */
    PyObject *greenlet; /* a synchronous consumer's greenlet */
    PyObject *context;  /* its own copy of the awaiting task's context */
    ARunObject *run;
    int begun;
} aslot;

/* Where the driver is: starting, filling the window, running a round,
 * giving the loop a turn, closing the stream, or done. */
enum { PH_START, PH_FILL, PH_ROUND, PH_TURN, PH_END, PH_DONE };

/* How the event loop is given a turn: not known yet; a bare yield (asyncio
 * and uvloop); trio.lowlevel.checkpoint(); never (no library runs). */
enum { TURN_UNKNOWN, TURN_YIELD, TURN_TRIO, TURN_NEVER };

struct ARunObject {
    PyObject_HEAD
    modstate *st;
    lockstep_stream *s;
    size_t n;
    aslot *slots;
    size_t window;
    int buffer;          /* engine "buffer": read everything, then one round */
    int use_greenlet;    /* synchronous consumers run on greenlets */
    PyObject *src;       /* the source's iterator or async iterator */
    int src_async;
    PyObject *src_aw;    /* the pending __anext__()'s iterator */
    PyObject *src_exc;
    PyObject *lib_exc;
    PyObject *cancel_exc; /* a cancellation that ends the run, whatever its position */
    PyObject *turn_aw;   /* a pending trio checkpoint */
    PyObject *scheduler; /* the greenlet the driver runs in */
    int phase;
    int final;           /* this round is the last: the stream has ended */
    int turn;
    int busy;            /* re-entrancy guard */
    int closing;         /* close(): no more yields to the loop */
    unsigned ticks;
    uint64_t turn_at;    /* CLOCK_MONOTONIC ns at which the loop gets a turn */
    lockstep_report report;
};

/* Raises StopIteration(value), the way a return ends an await. */
static inline void pyls_set_stop_value(PyObject *value)
{
    PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (e != NULL) {
        PyErr_SetObject(PyExc_StopIteration, e);
        Py_DECREF(e);
    }
}

/* A synchronous consumer's iterator has used up the window: switches its
 * greenlet back to the driver's until the window is refilled (async_driver.c).
 * Returns 0, or -1 with the exception the switch raised.  Only in a build
 * with greenlet. */
int pyls_async_wait_window(AIterObject *self);

#endif /* PYLOCKSTEP_ASYNC_H */
