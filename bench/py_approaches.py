"""Pure-Python ways to run several consumers over one one-shot iterator.

This module holds the hand-written approaches that the Python benchmark
(bench/py_bench.py) compares with the lockstep extension.  Each approach is a
function ``approach(iterable, consumers) -> tuple`` that feeds every item of
``iterable`` to every consumer and returns the consumers' results in order.
A consumer is an ordinary function taking an iterator (like ``sum`` or
``max``), except for the asyncio approaches, whose consumers are coroutine
functions taking an async iterator (see ``async_sum`` and ``async_max``).

The approaches, from the baseline on:

* ``run_buffer``         -- list(it), then each consumer over the list.
* ``run_tee``            -- itertools.tee, then each consumer in turn.
* ``run_threads_simple`` -- one thread per consumer, unbounded SimpleQueue each.
* ``run_threads_barrier``-- one thread per consumer, strict lockstep on a
                            threading.Barrier, O(1) memory.
* ``run_greenlet``       -- one greenlet per consumer, strict lockstep.
* ``run_asyncio``        -- async consumers over asyncio.Queue(maxsize=1).
* ``run_uvloop``         -- the same asyncio code on uvloop's event loop.
"""

import asyncio
import itertools
import queue
import threading

try:
    import greenlet
except ImportError:  # pragma: no cover - reported by the harness
    greenlet = None

try:
    import uvloop
except ImportError:  # pragma: no cover - reported by the harness
    uvloop = None

_END = object()  # end-of-stream sentinel shared by the approaches below


# --------------------------------------------------------------------------
# 1. buffer: the baseline
# --------------------------------------------------------------------------

def run_buffer(iterable, consumers):
    """Read everything into a list, then run each consumer over the list."""
    items = list(iterable)
    return tuple(consume(iter(items)) for consume in consumers)


# --------------------------------------------------------------------------
# 2. itertools.tee
# --------------------------------------------------------------------------

def run_tee(iterable, consumers):
    """Split the iterator with itertools.tee and run the consumers in turn.

    The first consumer drains the source, so tee buffers everything for the
    others: the memory is O(N), like the baseline.
    """
    branches = itertools.tee(iterable, len(consumers))
    return tuple(consume(branch) for consume, branch in zip(consumers, branches))


# --------------------------------------------------------------------------
# 3. threads, simple: unbounded queues
# --------------------------------------------------------------------------

def _queue_reader(q):
    """Yield items from a SimpleQueue until the end sentinel arrives."""
    get = q.get
    while True:
        item = get()
        if item is _END:
            return
        yield item


def _run_in_threads(bodies):
    """Start one thread per body, returning (threads, results, errors)."""
    results = [None] * len(bodies)
    errors = [None] * len(bodies)

    def wrap(index, body):
        """Run one body, keeping its result or its exception."""
        try:
            results[index] = body()
        except BaseException as exc:  # re-raised in the calling thread
            errors[index] = exc

    threads = [threading.Thread(target=wrap, args=(i, body), daemon=True)
               for i, body in enumerate(bodies)]
    for thread in threads:
        thread.start()
    return threads, results, errors


def _raise_first(errors):
    """Re-raise the first exception a consumer thread recorded, if any."""
    for exc in errors:
        if exc is not None:
            raise exc


def run_threads_simple(iterable, consumers):
    """One thread per consumer, each fed by its own unbounded SimpleQueue.

    The producer thread pushes every item to every queue and then the end
    sentinel.  Nothing stops the producer from running ahead, so the queues
    can hold the whole stream: memory is unbounded.
    """
    queues = [queue.SimpleQueue() for _ in consumers]
    bodies = [lambda c=c, q=q: c(_queue_reader(q)) for c, q in zip(consumers, queues)]
    threads, results, errors = _run_in_threads(bodies)

    def produce():
        """Push every item, then the sentinel, to every queue."""
        puts = [q.put for q in queues]
        try:
            for item in iterable:
                for put in puts:
                    put(item)
        finally:
            for put in puts:
                put(_END)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join()
    for thread in threads:
        thread.join()
    _raise_first(errors)
    return tuple(results)


# --------------------------------------------------------------------------
# 4. threads + barrier: strict lockstep, O(1) memory
# --------------------------------------------------------------------------

def run_threads_barrier(iterable, consumers):
    """One thread per consumer; all threads meet at a Barrier for each item.

    The producer (the calling thread) writes item i into slot i % 2 and then
    waits at the barrier with the consumers.  A consumer arrives at the
    barrier only when it asks for its next item, so by the time the producer
    passes the barrier for item i + 1 every consumer has finished reading
    item i; two slots are therefore enough and memory stays O(1).  A consumer
    that returns early keeps meeting the barrier until the end, so the others
    never deadlock.
    """
    parties = len(consumers) + 1
    barrier = threading.Barrier(parties)
    slots = [None, None]

    def reader():
        """Yield the shared item after each barrier, until the sentinel."""
        wait = barrier.wait
        index = 0
        while True:
            wait()
            item = slots[index]
            if item is _END:
                return
            index ^= 1
            yield item

    def body(consume):
        """Run one consumer, then keep the barrier company until the end."""
        feed = reader()
        try:
            return consume(feed)
        finally:
            for _ in feed:  # detach: keep meeting the barrier until _END
                pass

    bodies = [lambda c=c: body(c) for c in consumers]
    threads, results, errors = _run_in_threads(bodies)
    wait = barrier.wait
    index = 0
    try:
        for item in iterable:
            slots[index] = item
            wait()
            index ^= 1
    finally:
        slots[index] = _END
        wait()
    for thread in threads:
        thread.join()
    _raise_first(errors)
    return tuple(results)


# --------------------------------------------------------------------------
# 5. greenlet by hand: strict lockstep
# --------------------------------------------------------------------------

def run_greenlet(iterable, consumers):
    """One greenlet per consumer; the parent hands each item to each of them.

    Inside a consumer's greenlet its iterator is a generator that switches
    back to the parent to get the next item, so every consumer sees item i
    before any sees item i + 1.  Memory is O(1).
    """
    if greenlet is None:
        raise RuntimeError("greenlet is not installed")
    parent = greenlet.getcurrent()
    switch_to_parent = parent.switch

    def feed():
        """Yield what the parent sends, until it sends the sentinel."""
        while True:
            item = switch_to_parent()
            if item is _END:
                return
            yield item

    results = [None] * len(consumers)

    def body(index, consume):
        """Run one consumer over its feed and keep the result."""
        results[index] = consume(feed())

    children = [greenlet.greenlet(body, parent=parent) for _ in consumers]
    for index, (child, consume) in enumerate(zip(children, consumers)):
        child.switch(index, consume)  # runs until the first request for an item
    live = [child for child in children if not child.dead]
    for item in iterable:
        for child in live:
            child.switch(item)
        if any(child.dead for child in live):  # a consumer stopped early
            live = [child for child in live if not child.dead]
    for child in live:
        child.switch(_END)
    return tuple(results)


# --------------------------------------------------------------------------
# 6. asyncio, 7. uvloop: consumers rewritten as coroutines
# --------------------------------------------------------------------------

async def async_sum(aiterable):
    """Async counterpart of sum(): add up the items of an async iterable."""
    total = 0
    async for item in aiterable:
        total += item
    return total


async def async_max(aiterable):
    """Async counterpart of max(): the largest item of an async iterable."""
    best = _END
    async for item in aiterable:
        if best is _END or item > best:
            best = item
    if best is _END:
        raise ValueError("async_max() arg is an empty sequence")
    return best


async def _queue_aiter(q):
    """Async-yield items from an asyncio.Queue until the end sentinel."""
    get = q.get
    while True:
        item = await get()
        if item is _END:
            return
        yield item


async def _fan_out(iterable, async_consumers):
    """Feed every item to one Queue(maxsize=1) per async consumer."""
    queues = [asyncio.Queue(maxsize=1) for _ in async_consumers]
    tasks = [asyncio.ensure_future(c(_queue_aiter(q)))
             for c, q in zip(async_consumers, queues)]
    puts = [q.put for q in queues]
    try:
        for item in iterable:
            for task, put in zip(tasks, puts):
                if not task.done():  # an early finisher no longer reads
                    await put(item)
    finally:
        for task, put in zip(tasks, puts):
            if not task.done():
                await put(_END)
    return tuple(await asyncio.gather(*tasks))


def run_asyncio(iterable, async_consumers):
    """Run async consumers over one iterator on a fresh asyncio event loop."""
    if not hasattr(asyncio, "Runner"):  # before 3.11 (PyPy 3.9): the same, older spelling
        return asyncio.run(_fan_out(iterable, async_consumers))
    with asyncio.Runner() as runner:
        return runner.run(_fan_out(iterable, async_consumers))


def run_uvloop(iterable, async_consumers):
    """Run the asyncio approach on a fresh uvloop event loop."""
    if uvloop is None:
        raise RuntimeError("uvloop is not installed")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_fan_out(iterable, async_consumers))


if __name__ == "__main__":
    N = 10_000
    want = (sum(range(N)), max(range(N)))
    for fn in (run_buffer, run_tee, run_threads_simple, run_threads_barrier, run_greenlet):
        assert fn(iter(range(N)), (sum, max)) == want, fn.__name__
    for fn in (run_asyncio, run_uvloop):
        assert fn(iter(range(N)), (async_sum, async_max)) == want, fn.__name__
    print("all approaches agree:", want)
