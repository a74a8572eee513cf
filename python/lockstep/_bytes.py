"""_bytes.py: lockstep.run_bytes, several binary-file readers over one byte stream.

This is the pure-Python implementation of run_bytes, built on lockstep.run
and therefore on the C core's one scheduler and its engines: the stream is
cut into chunks of at most `window` bytes, run() hands them over one chunk
per window (so at most `window` source bytes are held at a time), and each
consumer receives a Reader, a read-only io.BufferedIOBase over its own
iterator of chunks.

What the chunking would otherwise change, and how it is put back:
  - the failure that wins.  The core ranks failures by chunk; two consumers
    failing inside the same chunk would be ranked by consumer index, not by
    the byte where each failed.  Each Reader therefore counts the bytes it
    handed out, and run_bytes re-ranks the consumer failures the core
    reported by (byte position, rank) with the core's own rules: every
    consumer failure at a byte inside the chunks the core delivered is
    always reached, so the re-ranking is deterministic (see _pick_failure).
  - early exit: run() holds one chunk, so once every consumer has returned,
    at most window - 1 bytes past the last one's stop have been read.

The planned C implementation (issue 13) replaces the chunk items with the
core's byte window and lockstep_take / lockstep_run_read; the Python
contract (tests in python/tests/test_bytes.py) stays the same.
"""
import io
import sys

from . import _lockstep

__all__ = ["run_bytes", "Reader", "DEFAULT_BYTES_WINDOW"]

# Bytes held at a time when window=None: 256 KiB, the buffer
# hashlib.file_digest reads into (so each of its readinto calls is served
# by one chunk), and far above the 2 KiB beyond which hashlib and zlib
# release the GIL (so the thread engine hashes in parallel).  The sweep in
# bench/py_bytes_bench.py --sweep shows the plateau; python/README.md.
DEFAULT_BYTES_WINDOW = 256 * 1024

# The thread engine's ring slots (RING_SEGMENTS in src/engine_thread.c), and
# the smallest chunk worth a slot: above the 2 KiB (HASHLIB_GIL_MINSIZE)
# beyond which hashlib releases the GIL, with room to spare.
_RING_SEGMENTS = 4
_MIN_RING_CHUNK = 16 * 1024


# Failure ranks, as the core's (src/internal.h LOCKSTEP__RANK_*): consumers
# that fail without asking for more come before a consumer that fails after
# it saw the end of the stream.
_RANK_AFTER_END = 1 << 62

_EMPTY = b""
_EMPTY_VIEW = memoryview(_EMPTY)


class Reader(io.BufferedIOBase):
    """The binary file object lockstep.run_bytes hands each consumer.

    Read-only and not seekable: read, read1, readinto, readinto1, readline,
    readlines, iteration over lines, peek.  It works only inside the
    consumer it was given to (elsewhere: RuntimeError).  Closing it stops
    the reads; the consumer detaches when it returns.  It ends at the end
    of the stream, or early when the run is cancelled because another
    consumer or the source failed.
    """

    mode = "rb"

    def __init__(self, it):
        super().__init__()
        self._it = it          # lockstep.Iterator over chunks
        self._obj = _EMPTY     # the chunk in hand: bytes or a pooled bytearray
        self._view = _EMPTY_VIEW  # memoryview of its valid bytes
        self._off = 0          # bytes of it already handed out
        self._pos = 0          # bytes handed out in all
        self._eof = False      # the iterator ended

    # --- internals ------------------------------------------------------

    def _check(self):
        """Raises RuntimeError outside the reader's own running consumer,
        ValueError when it is closed."""
        self._it.position  # raises RuntimeError outside its own consumer
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def _drop(self):
        """Lets go of the chunk in hand, so that its pooled buffer can be
        refilled as soon as the core drops it too."""
        self._obj, self._view, self._off = _EMPTY, _EMPTY_VIEW, 0

    def _fill(self):
        """Makes the chunk in hand non-empty; returns False at the end."""
        if self._off < len(self._view):
            return True
        if self._eof:
            return False
        self._drop()
        chunk = next(self._it, None)
        if chunk is None:
            self._eof = True
            return False
        if type(chunk) is memoryview:  # a pooled buffer, see _file_chunks
            self._obj, self._view = chunk.obj, chunk
        else:
            self._obj, self._view = chunk, memoryview(chunk)
        return True

    def _take(self, n):
        """Up to n (n >= 0) bytes of the chunk in hand, consumed, as a
        memoryview (one call to _fill when it is empty); a whole bytes
        chunk comes as itself, so that read() returns it without a copy."""
        if not self._fill():
            return _EMPTY
        view, off = self._view, self._off
        end = min(len(view), off + n)
        self._off = end
        self._pos += end - off
        if off == 0 and end == len(view) and type(self._obj) is bytes:
            return self._obj
        return view[off:end]

    # --- io.BufferedIOBase ----------------------------------------------

    def readable(self):
        self._check()
        return True

    def seekable(self):
        self._check()
        return False

    def writable(self):
        self._check()
        return False

    def read(self, size=-1):
        """Up to size bytes (fewer only at the end); everything left when
        size is None or negative, which buffers the rest of the stream."""
        self._check()
        if size is None or size < 0:
            parts = []
            while self._fill():
                parts.append(self._take(len(self._view)))
            return b"".join(parts)
        first = self._take(size)
        if len(first) == size or not first:
            return first if type(first) is bytes else bytes(first)
        parts = [first]
        want = size - len(first)
        while want:
            part = self._take(want)
            if not part:
                break
            parts.append(part)
            want -= len(part)
        return b"".join(parts)

    def read1(self, size=-1):
        """Up to size bytes from the chunk in hand (reads one if none is)."""
        self._check()
        if size is None or size < 0:
            size = 1 << 62
        part = self._take(size)
        return part if type(part) is bytes else bytes(part)

    def readinto(self, b):
        """Fills b (fewer bytes only at the end); returns how many."""
        self._check()
        with memoryview(b) as view, view.cast("B") as dst:
            done, want = 0, len(dst)
            while done < want:
                part = self._take(want - done)
                if not part:
                    break
                dst[done:done + len(part)] = part
                done += len(part)
            return done

    def readinto1(self, b):
        """Copies into b up to len(b) bytes from the chunk in hand."""
        self._check()
        with memoryview(b) as view, view.cast("B") as dst:
            part = self._take(len(dst))
            dst[:len(part)] = part
            return len(part)

    def readline(self, size=-1):
        """One line, up to and including b'\\n', or up to size bytes."""
        self._check()
        if size is None or size < 0:
            size = 1 << 62
        parts = []
        while size > 0 and self._fill():
            nl = self._obj.find(b"\n", self._off, min(len(self._view), self._off + size))
            n = nl + 1 - self._off if nl >= 0 else size
            part = self._take(n)
            parts.append(part)
            size -= len(part)
            if nl >= 0:
                break
        return b"".join(parts)

    def peek(self, size=0):
        """The bytes in hand (at least one unless at the end), not consumed."""
        self._check()
        self._fill()
        return bytes(self._view[self._off:])

    def detach(self):
        raise io.UnsupportedOperation("lockstep reader has no raw stream to detach")

    def close(self):
        """Stops reading: drops the chunk in hand; later reads raise ValueError."""
        self._drop()
        super().close()

    def __repr__(self):
        state = "closed" if self.closed else f"position={self._pos}"
        return f"<lockstep.Reader {state}>"


def _parse_window(window):
    """The window in bytes: DEFAULT_BYTES_WINDOW for None, else 1..MAX_WINDOW."""
    if window is None:
        return DEFAULT_BYTES_WINDOW
    try:
        w = int(window.__index__())
    except AttributeError:
        raise TypeError(f"window must be an integer or None, not {type(window).__name__}") from None
    if not 1 <= w <= _lockstep.MAX_WINDOW:
        raise ValueError(f"window must be between 1 and {_lockstep.MAX_WINDOW}, not {window!r}")
    return w


def _plan(window, engine):
    """How a window of `window` bytes is handed over: (chunk size, chunks
    per run() window).  The thread engine splits its window into a ring of
    RING_SEGMENTS slots (src/engine_thread.c) so that the producer reads
    ahead while consumers work: it gets that many chunks, as long as each
    stays above _MIN_RING_CHUNK.  The cooperative engines get one chunk:
    fewer, larger hand-offs."""
    if engine is None and _lockstep.engines():
        engine = _lockstep.engines()[0]
    if engine == "thread" and window >= _RING_SEGMENTS * _MIN_RING_CHUNK:
        return window // _RING_SEGMENTS, _RING_SEGMENTS
    return window, 1


def _file_chunks(f, chunk):
    """Chunks of at most `chunk` bytes from binary file f.  With readinto1
    or readinto, each is read straight into a buffer of a pool and handed
    over as a memoryview of it (see _pooled_chunks); else read1, else read,
    each chunk a new bytes object.  read1 and readinto1 come first: a pipe
    then yields what has arrived instead of waiting for a full chunk."""
    readinto = getattr(f, "readinto1", None) or getattr(f, "readinto", None)
    if readinto is not None:
        return _pooled_chunks(readinto, chunk)
    return _read_chunks(getattr(f, "read1", None) or f.read, chunk)


def _pooled_chunks(readinto, chunk):
    """readinto into buffers that are reused once nobody holds them: the
    pool's list and getrefcount's argument are then their only references
    (a reader lets go of a chunk before it asks for the next one, and the
    core drops it from the window when the window moves on).  The pool
    grows to the chunks in flight: the thread engine's ring plus one per
    consumer, at most; one buffer on the greenlet engine.  Buffers a
    consumer keeps for longer leave the pool once it holds _POOL_MAX.
    Buffers start at _FIRST_BUFFER bytes and double, up to chunk, each time
    a read fills one, so that a short stream does not pay for a big window."""
    pool = []
    size = min(chunk, _FIRST_BUFFER)
    while True:
        buf = _free_buffer(pool, size)
        if buf is None:
            if len(pool) == _POOL_MAX:
                del pool[0]  # a consumer keeps views (read() with no size)
            buf = bytearray(size)
            pool.append(buf)
        n = readinto(buf)
        if n is None:
            raise BlockingIOError("lockstep.run_bytes needs a blocking source")
        if not n:
            return
        if n == size:
            size = min(chunk, 2 * size)
        with memoryview(buf) as view:
            yield view[:n]


def _refcounts(pool):
    """The reference counts of pool's buffers, as seen from here."""
    return [_getrefcount(buf) for buf in pool]


def _free_buffer(pool, size):
    """A buffer of `size` bytes of pool that nobody but the pool refers to,
    or None; free buffers of another (an outgrown) size leave the pool."""
    counts = _refcounts(pool)  # first: the loop below holds references too
    found = None
    for i in reversed(range(len(pool))):
        if counts[i] != _FREE_REFS:
            continue
        if len(pool[i]) != size:
            del pool[i]
        elif found is None:
            found = pool[i]
    return found


# A pooled buffer is free when its count, seen through _refcounts, is that
# of a buffer only a pool holds: measured once here, rather than assumed,
# since what getrefcount counts varies between CPython versions.  Without
# reference counts (PyPy) nothing is reused.
_getrefcount = getattr(sys, "getrefcount", lambda obj: -1)
_FREE_REFS = _refcounts([bytearray(1)])[0] if hasattr(sys, "getrefcount") else -2
# Buffers a pool keeps at most: the thread engine's ring (4) plus one per
# consumer for a dozen consumers; a buffer still in use beyond that is left
# to its holders.
_POOL_MAX = 16
# A source's first buffer: io.DEFAULT_BUFFER_SIZE, what a BufferedReader
# would have used.
_FIRST_BUFFER = io.DEFAULT_BUFFER_SIZE


def _read_chunks(read, chunk):
    """read(chunk) until it returns nothing, as bytes of at most chunk bytes."""
    while True:
        data = read(chunk)
        if data is None:
            raise BlockingIOError("lockstep.run_bytes needs a blocking source")
        if not data:
            return
        if isinstance(data, str):
            raise TypeError("lockstep.run_bytes needs a binary file, not a text file")
        if type(data) is not bytes:
            data = bytes(data)
        yield from _split(data, chunk)


def _split(chunk, window):
    """chunk (bytes) cut into pieces of at most window bytes."""
    if len(chunk) <= window:
        yield chunk
        return
    with memoryview(chunk) as view:
        for start in range(0, len(chunk), window):
            yield bytes(view[start:start + window])


def _iter_chunks(chunks, window):
    """The bytes-like chunks of an iterable, as bytes of at most window bytes;
    str and other non-buffers raise TypeError."""
    for chunk in chunks:
        if isinstance(chunk, str):
            raise TypeError("lockstep.run_bytes needs bytes-like chunks, not str")
        if type(chunk) is not bytes:
            with memoryview(chunk) as view:  # TypeError for non-buffers
                chunk = view.tobytes()
        if chunk:
            yield from _split(chunk, window)


def _source(source, window):
    """The iterator of chunks for source; TypeError (before anything is read)
    for a text file, a str, or something that is neither a file nor iterable."""
    if isinstance(source, (str, io.TextIOBase)):
        raise TypeError("lockstep.run_bytes needs a binary file or an iterable of bytes, "
                        f"not {type(source).__name__}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        raise TypeError("lockstep.run_bytes needs a file or an iterable of chunks; "
                        "wrap a single bytes object in a list")
    if hasattr(source, "read") or hasattr(source, "readinto"):
        return _file_chunks(source, window)
    return _iter_chunks(iter(source), window)


class _Failure:
    """What a consumer raised, where: its byte position and its rank."""

    __slots__ = ("exc", "pos", "rank")

    def __init__(self, exc, pos, rank):
        self.exc, self.pos, self.rank = exc, pos, rank


def _consumer(fn, index, failures):
    """Wraps fn for run(): hands it a Reader, closes it when fn returns, and
    records in failures what fn raised and at which byte."""
    def consumer(it):
        reader = Reader(it)
        try:
            return fn(reader)
        except BaseException as exc:
            rank = _RANK_AFTER_END + index if reader._eof else index
            failures.append(_Failure(exc, reader._pos, rank))
            raise
        finally:
            reader.close()
    return consumer


def _pick_failure(raised, failures):
    """The exception run_bytes raises when run() raised `raised`.

    run() picked the earliest failure by chunk.  When it is a consumer's,
    every consumer failure inside the same chunk was reached too (each such
    consumer already held that chunk, and the core cancels only requests
    for later ones), so the earliest by (byte, rank) among the recorded
    ones is the byte-exact winner.  A source failure or a library error is
    raised as it is."""
    if not any(f.exc is raised for f in failures):
        return raised
    return min(failures, key=lambda f: (f.pos, f.rank)).exc


def run_bytes(source, /, *consumers, window=None, engine=None):
    """Run every consumer over one pass of a byte stream; return their results.

    source: a binary file object (a pipe, a socket's makefile('rb'), open(...,
      'rb'), sys.stdin.buffer), read in chunks of at most `window` bytes, or
      any iterable of bytes-like chunks (bytes, bytearray, memoryview).
      A text file, a str or str chunks raise TypeError.
    consumers: callables taking one binary file object (a lockstep.Reader:
      read, read1, readinto, readline, peek, iteration over lines; not
      seekable), e.g. hashlib.file_digest, tarfile.open(fileobj=f,
      mode='r|gz'), pickle.load, or csv over io.TextIOWrapper(f).  Returns
      a tuple with one result per consumer, in consumer order:

          >>> import hashlib, io, lockstep
          >>> pipe = io.BytesIO(b"one\\ntwo\\nthree\\n")      # or p.stdout, a socket...
          >>> lockstep.run_bytes(pipe,
          ...     lambda f: hashlib.file_digest(f, "sha256").hexdigest()[:12],
          ...     lambda f: sum(1 for line in f))
          ('b6285c57e879', 3)

    window: how far, in bytes, the source may be read ahead of the slowest
      consumer (None: DEFAULT_BYTES_WINDOW, 256 KiB); memory stays bounded
      by about window plus one chunk per consumer, whatever the length.
    engine: as in lockstep.run: 'greenlet', 'thread' (hashlib and zlib
      release the GIL on large buffers, so two hashes run in parallel) or
      'buffer' (reads everything first).

    Every rule of lockstep.run holds: a consumer that returns early
    detaches and the others go on (once all have returned, at most
    window - 1 further bytes have been read); the exception earliest in the
    stream (by byte) propagates and the other consumers are cancelled:
    their reader simply ends, so their finally blocks run.  A consumer that
    calls read() with no size (json.load does) buffers the rest of the
    stream itself.
    """
    w = _parse_window(window)
    chunk, items = _plan(w, engine)
    chunks = _source(source, chunk)
    failures = []
    wrapped = []
    for i, fn in enumerate(consumers):
        if not callable(fn):
            raise TypeError(f"consumer {i} is not callable: {fn!r}")
        wrapped.append(_consumer(fn, i, failures))
    try:
        return _lockstep.run(chunks, *wrapped, window=items, engine=engine)
    except BaseException as raised:
        exc = _pick_failure(raised, failures)
        if exc is raised:
            raise
    finally:
        failures.clear()  # the losers' exceptions hold their frames
    # Outside the except block, so that exc does not get raised as context.
    raise exc
