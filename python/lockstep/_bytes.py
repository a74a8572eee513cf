"""_bytes.py: lockstep.run_bytes, several binary-file readers over one byte stream.

run_bytes is the file-object face of the binding's byte runs
(python/ext/bytes.c, _lockstep.run_read): the core's window holds bytes,
the source's readinto writes straight into it (lockstep_run_read's bulk
path), and each consumer's lockstep.ByteIterator takes spans of it with
lockstep_take, copying them into new bytes or the caller's buffer.  This
module adds what is policy rather than mechanism:

  - Reader, the io.BufferedIOBase each consumer receives, whose read,
    read1, readinto, readline, peek... are loops over the ByteIterator's
    take, readinto1, readline1 and peek;
  - turning a source into one readinto callable: a binary file's own
    readinto1 or readinto, an adapter over read1/read, or an adapter over
    an iterable of bytes-like chunks; and rejecting text before anything
    is read.

Everything else (the window, early exit, which failure wins, by byte, and
cancellation) is the core's, as for lockstep.run.
"""
import io

from . import _lockstep

__all__ = ["run_bytes", "Reader", "DEFAULT_BYTES_WINDOW", "DEFAULT_BYTES_WINDOWS"]

# Bytes the window holds when window=None, per engine (the binding's
# table, python/ext/binding.h, which says how they were chosen): greenlet
# and buffer 64 KiB, thread 1 MiB.
DEFAULT_BYTES_WINDOWS = _lockstep.DEFAULT_BYTES_WINDOWS
DEFAULT_BYTES_WINDOW = _lockstep.DEFAULT_BYTES_WINDOW

_NO_LIMIT = -1


class Reader(io.BufferedIOBase):
    """The binary file object lockstep.run_bytes hands each consumer.

    Read-only and not seekable: read, read1, readinto, readinto1, readline,
    readlines, iteration over lines, peek.  It works only inside the
    consumer it was given to (elsewhere: RuntimeError).  Closing it, or
    returning, detaches the consumer: the other consumers and the source
    stop waiting for it at once, even while it goes on computing.  It ends at the end
    of the stream, or early when the run is cancelled because another
    consumer or the source failed.
    """

    mode = "rb"

    def __init__(self, handle):
        super().__init__()
        self._h = handle  # lockstep.ByteIterator

    def _check(self):
        """Raises RuntimeError outside the reader's own running consumer,
        ValueError when it is closed."""
        self._h.position  # raises RuntimeError outside its own consumer
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def _check_open(self):
        """_check before a read: the read's own ByteIterator call checks
        the consumer, so an open reader need not check it twice."""
        if self.closed:
            self._check()

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
        self._check_open()
        take = self._h.take
        if size is None or size < 0:
            parts = []
            while part := take(_NO_LIMIT):
                parts.append(part)
            return b"".join(parts)
        first = take(size)
        if len(first) == size or not first:
            return first
        parts, want = [first], size - len(first)
        while want and (part := take(want)):
            parts.append(part)
            want -= len(part)
        return b"".join(parts)

    def read1(self, size=-1):
        """Up to size bytes, from what the window holds (waits only when
        it holds nothing for this consumer)."""
        self._check_open()
        return self._h.take(_NO_LIMIT if size is None or size < 0 else size)

    def readinto(self, b):
        """Fills b (fewer bytes only at the end); returns how many."""
        self._check_open()
        readinto1 = self._h.readinto1
        with memoryview(b) as view, view.cast("B") as dst:
            done, want = readinto1(dst), len(dst)  # the first call also checks the consumer
            while 0 < done < want:
                n = readinto1(dst[done:])
                if not n:
                    break
                done += n
            return done

    def readinto1(self, b):
        """Copies into b up to len(b) bytes of what the window holds."""
        self._check_open()
        with memoryview(b) as view, view.cast("B") as dst:
            return self._h.readinto1(dst)

    def readline(self, size=-1):
        """One line, up to and including b'\\n', or up to size bytes."""
        self._check_open()
        readline1 = self._h.readline1
        if size is None or size < 0:
            size = _NO_LIMIT
        line = readline1(size)
        if not line or line[-1:] == b"\n" or len(line) == size:
            return line
        parts = [line]
        left = size - len(line) if size > 0 else _NO_LIMIT
        while part := readline1(left):
            parts.append(part)
            if part[-1:] == b"\n":
                break
            if left > 0:
                left -= len(part)
                if not left:
                    break
        return b"".join(parts)

    def peek(self, size=0):
        """The bytes in hand (at least one unless at the end), not consumed."""
        self._check_open()
        return self._h.peek()

    def close(self):
        """Detaches the consumer (inside it; elsewhere only marks the
        reader closed), then closes the reader."""
        if not self.closed:
            self._h.detach()
        super().close()

    def detach(self):
        raise io.UnsupportedOperation("lockstep reader has no raw stream to detach")

    def __repr__(self):
        return f"<lockstep.Reader {'closed' if self.closed else 'open'}>"


def _readinto_of(source):
    """The readinto callable the binding fills the window with, for source;
    TypeError (before anything is read) for a text file, a str, a single
    bytes-like object, or something that is neither a file nor iterable."""
    if isinstance(source, (str, io.TextIOBase)):
        raise TypeError("lockstep.run_bytes needs a binary file or an iterable of bytes, "
                        f"not {type(source).__name__}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        raise TypeError("lockstep.run_bytes needs a file or an iterable of chunks; "
                        "wrap a single bytes object in a list")
    # readinto1 and read1 first: a pipe then yields what has arrived
    # instead of waiting for the window to fill.
    for name in ("readinto1", "readinto"):
        method = getattr(source, name, None)
        if method is not None:
            return method
    for name in ("read1", "read"):
        method = getattr(source, name, None)
        if method is not None:
            return _reading_into(method)
    return _chunks_into(iter(source))


def _reading_into(read):
    """A readinto over a read(n) method that returns bytes."""
    def readinto(view):
        data = read(len(view))
        if data is None:
            return None  # a non-blocking source with nothing: BlockingIOError
        if isinstance(data, str):
            raise TypeError("lockstep.run_bytes needs a binary file, not a text file")
        n = len(data)
        view[:n] = data
        return n
    return readinto


def _chunks_into(chunks):
    """A readinto over an iterator of bytes-like chunks; a str chunk or a
    non-buffer raises TypeError (the source's failure at its position)."""
    pending = memoryview(b"")
    offset = 0

    def readinto(view):
        nonlocal pending, offset
        while offset >= len(pending):
            pending.release()  # before next(): the producer may resize its bytearray
            pending, offset = memoryview(b""), 0
            chunk = next(chunks, None)
            if chunk is None:
                return 0
            if isinstance(chunk, str):
                raise TypeError("lockstep.run_bytes needs bytes-like chunks, not str")
            pending = memoryview(chunk)  # TypeError for non-buffers
            if not pending.c_contiguous or pending.ndim != 1 or pending.format != "B":
                pending = memoryview(pending.tobytes())
        n = min(len(view), len(pending) - offset)
        view[:n] = pending[offset:offset + n]
        offset += n
        return n
    return readinto


def _consumer(fn):
    """Wraps fn for run_read: hands it a Reader, closed when fn returns."""
    def consumer(handle):
        reader = Reader(handle)
        try:
            return fn(reader)
        finally:
            reader.close()
    return consumer


def run_bytes(source, /, *consumers, window=None, engine=None):
    """Run every consumer over one pass of a byte stream; return their results.

    source: a binary file object (a pipe, a socket's makefile('rb'), open(...,
      'rb'), sys.stdin.buffer), whose readinto writes straight into the
      window, or any iterable of bytes-like chunks (bytes, bytearray,
      memoryview).  A text file, a str or str chunks raise TypeError.
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

    window: the window in bytes (None: DEFAULT_BYTES_WINDOWS[engine], 64 KiB
      on greenlet, 1 MiB on threads): the
      source is read at most that far ahead of the slowest consumer, and
      memory stays bounded by it whatever the stream's length.
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
    readinto = _readinto_of(source)
    for i, fn in enumerate(consumers):
        if not callable(fn):
            raise TypeError(f"lockstep consumer {i} is not callable: {type(fn).__name__} object")
    return _lockstep.run_read(readinto, *map(_consumer, consumers), window=window, engine=engine)
