"""test_bytes.py: lockstep.run_bytes, unmodified binary-file readers over one byte stream.

Real readers from the standard library (hashlib.file_digest, tarfile in
stream mode over a gzip'd tar, gzip.GzipFile then csv over
io.TextIOWrapper, pickle.load, a zlib decompressobj loop, json.load), a
consumer that reads one byte at a time and one that stops after the first
line, over three kinds of source (a list of chunks, a file, a real
subprocess pipe), on every engine and windows of 1, 7, 4096 bytes and the
default: each result equals the same reader run alone over the whole
stream.  Then the reader object's file API, the failure that wins (by
byte), cancellation, early exit (the bytes read past the last stop), bad
input rejected before anything is read, misuse (RuntimeError), and 10**4
runs that leak nothing.
"""
import csv
import ctypes
import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading
import time
import zlib

import pytest

import lockstep
from conftest import BOUNDED, ENGINES, PYPY, Boom
from test_leaks import RESULT, assert_flat

BYTE_WINDOWS = [1, 7, 4096, None]


# --- streams built in the test ------------------------------------------

def make_targz():
    """A gzip'd tar of a few members, some larger than a tar block."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for i, size in enumerate([0, 1, 511, 512, 3000, 700]):
            info = tarfile.TarInfo(f"dir/member{i}.txt")
            body = (f"line {i}\n" * (size // 7 + 1)).encode()[:size]
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return raw.getvalue()


def make_csvgz():
    rows = [["id", "name", "value"]] + [[str(i), f"n\u00e9{i}", str(i * i)] for i in range(150)]
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return gzip.compress(text.getvalue().encode("utf-8"), mtime=0)


def make_pickle():
    return pickle.dumps({"a": list(range(300)), "b": b"x" * 2000, "c": ("t", 1.5)}, protocol=5)


TARGZ, CSVGZ, PICKLED = make_targz(), make_csvgz(), make_pickle()


# --- consumers: unmodified readers ---------------------------------------

def digest(f, name):
    """hashlib.file_digest (3.11+), or the loop it runs on older Pythons."""
    if hasattr(hashlib, "file_digest"):
        return hashlib.file_digest(f, name).hexdigest()
    h, buf = hashlib.new(name), bytearray(1 << 16)
    while True:
        n = f.readinto(buf)
        if not n:
            return h.hexdigest()
        h.update(memoryview(buf)[:n])


def sha256(f):
    return digest(f, "sha256")


def sha1(f):
    return digest(f, "sha1")


def tar_names(f):
    with tarfile.open(fileobj=f, mode="r|gz") as tar:
        return [(m.name, m.size, tar.extractfile(m).read() if m.isfile() else None) for m in tar]


def csv_rows(f):
    with gzip.GzipFile(fileobj=f, mode="rb") as gz:
        return list(csv.reader(io.TextIOWrapper(gz, encoding="utf-8", newline="")))


def unpickle(f):
    return pickle.load(f)


def inflate(f):
    """A zlib decompressobj loop over a gzip stream: length and CRC-32."""
    d = zlib.decompressobj(wbits=31)
    n = crc = 0
    while not d.eof:
        block = f.read(1000)
        if not block:
            break
        out = d.decompress(block)
        n, crc = n + len(out), zlib.crc32(out, crc)
    return n, crc


def one_byte_at_a_time(f):
    n = total = 0
    while True:
        b = f.read(1)
        if not b:
            return n, total
        n, total = n + 1, (total * 31 + b[0]) % 1000003


def first_line(f):
    return f.readline()


STREAMS = {
    "targz": (TARGZ, [sha256, tar_names, inflate, one_byte_at_a_time, first_line]),
    "csvgz": (CSVGZ, [csv_rows, sha1, inflate, first_line]),
    "pickle": (PICKLED, [unpickle, sha256, one_byte_at_a_time, first_line]),
}


def chunked(data, sizes=(1, 5, 100, 4097, 3)):
    """data as a list of chunks of varied sizes and types."""
    out, i, k = [], 0, 0
    kinds = (bytes, bytearray, memoryview)
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(kinds[k % 3](data[i:i + n]))
        i, k = i + n, k + 1
    return out


def run_from(kind, data, tmp_path, consumers, **kw):
    """run_bytes over data from a list of chunks, a file or a subprocess pipe."""
    if kind == "chunks":
        return lockstep.run_bytes(chunked(data), *consumers, **kw)
    path = tmp_path / "stream.bin"
    path.write_bytes(data)
    if kind == "file":
        with open(path, "rb") as f:
            return lockstep.run_bytes(f, *consumers, **kw)
    with subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) as p:
        try:
            return lockstep.run_bytes(p.stdout, *consumers, **kw)
        finally:
            p.stdout.close()


@pytest.mark.parametrize("window", BYTE_WINDOWS, ids=lambda w: f"w{w}")
@pytest.mark.parametrize("source", ["chunks", "file", "pipe"])
@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_readers_agree_with_running_alone(stream, source, window, engine, tmp_path):
    data, consumers = STREAMS[stream]
    alone = tuple(fn(io.BytesIO(data)) for fn in consumers)
    assert run_from(source, data, tmp_path, consumers, window=window, engine=engine) == alone


def test_json_load_buffers_its_own_input(engine):
    doc = {"k": list(range(1000)), "s": "caf\u00e9"}
    data = json.dumps(doc).encode()
    assert lockstep.run_bytes(chunked(data), json.load, sha256, window=64, engine=engine) == (
        doc, hashlib.sha256(data).hexdigest())


def test_empty_stream(engine):
    assert lockstep.run_bytes([], sha256, lambda f: f.read(), engine=engine) == (
        hashlib.sha256(b"").hexdigest(), b"")
    assert lockstep.run_bytes(io.BytesIO(b""), lambda f: list(f), engine=engine) == ([],)


# --- the reader's file API ----------------------------------------------

TEXT = b"alpha\nbeta\n\ngamma\ndelta without newline"


def file_api(f):
    """The reader's file object properties; then exercise(f)."""
    assert isinstance(f, io.BufferedIOBase) and isinstance(f, io.IOBase)
    assert f.readable() and not f.seekable() and not f.writable()
    assert not f.closed and f.mode == "rb"
    with pytest.raises(io.UnsupportedOperation):
        f.seek(0)
    with pytest.raises((io.UnsupportedOperation, OSError)):
        f.write(b"x")
    with pytest.raises(io.UnsupportedOperation):
        f.fileno()
    return exercise(f)


def exercise(f):
    """Every read method in turn, with what each returned."""
    out = []
    out.append(f.peek()[:1])          # b"a", not consumed
    out.append(f.read(3))             # b"alp"
    out.append(f.readline())          # b"ha\n"
    buf = bytearray(3)
    out.append((f.readinto(buf), bytes(buf)))
    out.append(f.readline(2))         # b"a\n"
    r1 = f.read1(3)
    assert 1 <= len(r1) <= 3
    out.append(r1 + f.read(len(b"\ngamma\n") - len(r1)))
    small = bytearray(4)
    n = f.readinto1(small)
    assert 1 <= n <= 4
    out.append(bytes(small[:n]) + f.read(4 - n))
    out.append(f.readlines())
    out.append((f.read(), f.read(5), f.read1(), f.readline(), f.peek(), f.readinto(bytearray(2))))
    return out


def test_reader_file_api(engine, window):
    expected = exercise(io.BufferedReader(io.BytesIO(TEXT)))
    got = lockstep.run_bytes(chunked(TEXT, (3, 1, 8)), file_api, window=window, engine=engine)
    assert got == (expected,)


def test_reader_lines_and_text_wrapper(engine):
    def lines(f):
        return list(f)

    def text(f):
        return io.TextIOWrapper(f, encoding="ascii").read().splitlines()

    def with_block(f):
        with f as g:
            first = next(iter(g))
        assert f.closed
        with pytest.raises(ValueError):
            f.read(1)
        return first

    assert lockstep.run_bytes([TEXT], lines, text, with_block, window=5, engine=engine) == (
        TEXT.splitlines(keepends=True), TEXT.decode().splitlines(), b"alpha\n")


def test_closing_detaches_and_others_go_on(engine, window):
    data = bytes(range(256)) * 64

    def close_early(f):
        f.read(10)
        f.close()
        return "closed"

    assert lockstep.run_bytes(chunked(data), close_early, sha256, lambda f: None,
                              window=window, engine=engine) == (
        "closed", hashlib.sha256(data).hexdigest(), None)


def test_returned_bytes_stay_valid(engine, tmp_path):
    """What read, read1 and peek returned never changes when the source's
    buffers are reused for later chunks."""
    data = os.urandom(200_000)
    path = tmp_path / "r.bin"
    path.write_bytes(data)

    def keep(method):
        def consumer(f):
            parts = []
            while True:
                part = method(f)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        return consumer

    with open(path, "rb") as f:
        got = lockstep.run_bytes(f, keep(lambda f: f.read1()), keep(lambda f: f.read(999)),
                                 keep(lambda f: f.read(len(f.peek()) or 1)),
                                 window=4096, engine=engine)
    assert got == (data, data, data)


# --- failures, cancellation, early exit -----------------------------------

def fail_after(n, tag):
    """A consumer that raises Boom(tag) after reading n bytes, one read(n)."""
    def consumer(f):
        got = f.read(n)
        if len(got) == n:
            raise Boom(tag)
        return len(got)
    return consumer


@pytest.mark.parametrize("window", BYTE_WINDOWS, ids=lambda w: f"w{w}")
def test_earliest_failure_by_byte_wins(engine, window):
    data = b"x" * 10_000
    with pytest.raises(Boom) as e:
        lockstep.run_bytes(chunked(data), fail_after(100, "a"), fail_after(50, "b"), sha256,
                           window=window, engine=engine)
    assert e.value.args == ("b",)
    with pytest.raises(Boom) as e:  # a tie at one byte: the lower index
        lockstep.run_bytes(chunked(data), fail_after(70, "a"), fail_after(70, "b"),
                           window=window, engine=engine)
    assert e.value.args == ("a",)


def failing_chunks(good, exc):
    """good as chunks, then the source raises exc."""
    yield from chunked(good)
    raise exc


@pytest.mark.parametrize("window", BYTE_WINDOWS, ids=lambda w: f"w{w}")
def test_source_failure_and_consumers_before_it(engine, window):
    good = b"y" * 3000
    with pytest.raises(Boom, match="src"):
        lockstep.run_bytes(failing_chunks(good, Boom("src")), sha256, engine=engine, window=window)
    with pytest.raises(Boom, match="early"):  # a consumer failing before the source's byte
        lockstep.run_bytes(failing_chunks(good, Boom("src")), sha256, fail_after(2999, "early"),
                           engine=engine, window=window)
    # Nobody needed a byte at or after the failure: no error.
    assert lockstep.run_bytes(failing_chunks(good, Boom("src")), lambda f: f.read(100),
                              engine=engine, window=window) == (good[:100],)


def test_cancellation_runs_finally(engine, window):
    data = b"z" * 20_000
    cleaned = []

    def hashing(f):
        try:
            return sha256(f)
        finally:
            cleaned.append("hash")

    def lines(f):
        try:
            return sum(1 for _ in f)
        finally:
            cleaned.append("lines")

    with pytest.raises(Boom):
        lockstep.run_bytes(chunked(data), hashing, fail_after(5000, "x"), lines,
                           window=window, engine=engine)
    assert sorted(cleaned) == ["hash", "lines"]


class CountingFile(io.RawIOBase):
    """An endless binary file that counts the bytes read from it."""

    def __init__(self):
        self.served = 0
        self.calls = 0

    def readable(self):
        return True

    def readinto(self, b):
        self.calls += 1
        n = len(b)
        pattern = b"\nk" if self.served % 2 else b"k\n"  # the stream is k\nk\n...
        b[:n] = pattern * (n // 2) + pattern[:n % 2]
        self.served += n
        return n


@pytest.mark.parametrize("window", [1, 7, 4096, None], ids=lambda w: f"w{w}")
def test_early_exit_reads_at_most_a_window_past_the_last_stop(bounded_engine, window):
    src = CountingFile()
    got = lockstep.run_bytes(src, first_line, lambda f: f.read(1000), lambda f: None,
                             window=window, engine=bounded_engine)
    assert got == (b"k\n", b"k\n" * 500, None)
    w = window or lockstep.DEFAULT_BYTES_WINDOWS[bounded_engine]
    assert 1000 <= src.served <= 1000 + w - 1 or (w > 1000 and src.served <= w)


def test_stopping_consumer_never_blocks_the_others(engine):
    """The Go io.Pipe deadlock: one reader stops and the writer waits forever.
    Here the consumer detaches; the others read the whole stream."""
    data = os.urandom(300_000)
    got = lockstep.run_bytes(chunked(data, (65536, 17)), first_line, lambda f: f.read(3), sha256,
                             sha1, window=4096, engine=engine)
    assert got[2:] == (hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest())


# --- bad input and misuse -------------------------------------------------

class WatchedFile(io.RawIOBase):
    def __init__(self):
        self.reads = 0

    def readable(self):
        return True

    def readinto(self, b):
        self.reads += 1
        return 0


@pytest.mark.parametrize("kwargs, exc", [
    (dict(consumers=(sha256, 3)), TypeError),
    (dict(window=0), ValueError),
    (dict(window=-1), ValueError),
    (dict(window=1 << 40), ValueError),
    (dict(window=2.5), TypeError),
    (dict(engine="fiber"), ValueError),
    (dict(engine=3), TypeError),
])
def test_bad_input_before_any_read(kwargs, exc):
    src = WatchedFile()
    consumers = kwargs.pop("consumers", (sha256,))
    with pytest.raises(exc):
        lockstep.run_bytes(src, *consumers, **kwargs)
    assert src.reads == 0


@pytest.mark.parametrize("source", [
    io.StringIO("text"), "a str", b"bytes itself", 42,
], ids=["textfile", "str", "bytes", "int"])
def test_bad_sources(source, engine):
    with pytest.raises(TypeError):
        lockstep.run_bytes(source, sha256, engine=engine)


def test_text_file_rejected(tmp_path, engine):
    path = tmp_path / "t.txt"
    path.write_text("hello\n")
    with open(path) as f:
        with pytest.raises(TypeError):
            lockstep.run_bytes(f, sha256, engine=engine)
        assert f.tell() == 0


class KeepingFile(io.RawIOBase):
    """A source that keeps (or slices) the buffer readinto was given."""

    def __init__(self, slice_it):
        self.slice_it, self.kept, self.pos = slice_it, None, 0

    def readable(self):
        return True

    def readinto(self, b):
        n = min(3, len(b), 30 - self.pos)  # the stream is abcabc..., 30 bytes
        b[:n] = bytes(b"abc"[(self.pos + i) % 3] for i in range(n))
        self.pos += n
        if n:
            self.kept = b[:n] if self.slice_it else b
        return n


@pytest.mark.skipif(PYPY, reason="on PyPy the source fills a bytearray of its own, copied into "
                    "the window: nothing it keeps can reach the window")
def test_source_cannot_keep_the_window(engine):
    src = KeepingFile(False)
    assert lockstep.run_bytes(src, lambda f: f.read(7), window=5, engine=engine) == (b"abcabca",)
    with pytest.raises(ValueError):  # released: the window is out of its reach
        src.kept[0]


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's managed buffers")
@pytest.mark.parametrize("keep", ["slice", "export", "slice_export"])
def test_source_keeping_a_slice_or_export_is_refused(engine, keep):
    """A slice may carry a raw-pointer export (ctypes, numpy) that no mark
    reaches, and so may the view itself: the run fails with BufferError."""
    class Keeper(KeepingFile):
        def readinto(self, b):
            n = super().readinto(b)
            if n and keep == "slice":
                self.kept = b[:n]
            elif n and keep == "export":
                self.kept = (ctypes.c_char * n).from_buffer(b)
            elif n:
                self.kept = (ctypes.c_char * n).from_buffer(b[:n])
            return n
    with pytest.raises(BufferError, match="kept a slice"):
        lockstep.run_bytes(Keeper(False), lambda f: f.read(7), window=5, engine=engine)


class OverReporting(io.RawIOBase):
    def readable(self):
        return True

    def readinto(self, b):
        return len(b) + 1


def test_source_reporting_too_many_bytes(engine):
    with pytest.raises(ValueError, match="readinto returned"):
        lockstep.run_bytes(OverReporting(), sha256, engine=engine)


def test_str_chunks_rejected(engine):
    with pytest.raises(TypeError):
        lockstep.run_bytes(["text"], sha256, engine=engine)
    with pytest.raises(TypeError):
        lockstep.run_bytes([b"ok", object()], sha256, engine=engine)


def test_reader_after_its_consumer_returned_raises(engine):
    (f,) = lockstep.run_bytes([b"abc\n", b"def"], lambda f: (f.read(1), f)[1], engine=engine)
    with pytest.raises(RuntimeError):
        f.read()
    with pytest.raises(RuntimeError):
        f.readline()
    for misuse in (lambda: f.readinto(bytearray()), lambda: f.read(0),
                   lambda: f.readinto1(bytearray()), lambda: f.peek(), lambda: f.read1(0),
                   lambda: f.readable()):
        with pytest.raises(RuntimeError):
            misuse()


def test_reader_misuse_of_an_open_reader_raises_even_for_empty_reads(engine):
    """An open reader handed out of its consumer: even a read that copies
    nothing (an empty buffer, size 0) is refused."""
    box = {}

    def leak(f):
        box["f"] = f
        return f.read(1) + f.read(1)  # still running when the other uses f, bar buffer

    def use_other(f):
        first = f.read(1)  # after leak asked for it (any engine), so box is set
        other = box["f"]
        outcomes = []
        for read in (lambda: other.readinto(bytearray()), lambda: other.read(0),
                     lambda: other.read1(0), lambda: other.readinto(bytearray(4))):
            try:
                read()
                outcomes.append("no error")
            except RuntimeError:
                outcomes.append("RuntimeError")
        return outcomes, first

    got = lockstep.run_bytes([b"abc"], leak, use_other, window=1, engine=engine)
    assert got == (b"ab", (["RuntimeError"] * 4, b"a"))


def test_default_window_is_the_engines_own(bounded_engine):
    """window=None: DEFAULT_BYTES_WINDOWS[engine], from the binding's table;
    no read asks for more, and one-byte readers over an endless source
    leave at most that much read (not on the buffer engine, which reads
    everything first)."""
    engine = bounded_engine
    w = lockstep.DEFAULT_BYTES_WINDOWS[engine]
    assert lockstep.DEFAULT_BYTES_WINDOW == lockstep.DEFAULT_BYTES_WINDOWS["greenlet"]
    src = CountingFile()
    asked = []
    readinto = src.readinto
    src.readinto = lambda b: (asked.append(len(b)), readinto(b))[1]
    got = lockstep.run_bytes(src, lambda f: f.read(1), lambda f: f.read(2), engine=engine)
    assert got == (b"k", b"k\n")
    assert asked and max(asked) <= w
    assert 2 <= src.served <= w


def test_reader_from_another_thread_raises(engine):
    errors = []

    def consumer(f):
        f.read(1)

        def other():
            try:
                f.read(1)
            except RuntimeError as e:
                errors.append(e)
        t = threading.Thread(target=other)
        t.start()
        t.join()
        return f.read()

    assert lockstep.run_bytes([b"abc", b"def"], consumer, engine=engine) == (b"bcdef",)
    assert len(errors) == 1


def test_reader_of_another_consumer_raises(engine):
    box = {}

    def a(f):
        box["a"] = f
        return f.read()

    def b(f):
        while "a" not in box:  # thread engine: a runs concurrently
            time.sleep(0.001)
        try:
            box["a"].read(1)
        except RuntimeError as e:
            box["error"] = e
        return f.read()

    assert lockstep.run_bytes([b"x" * 100], a, b, window=10, engine=engine) == (b"x" * 100,) * 2
    assert isinstance(box["error"], RuntimeError)


# --- no leaks ---------------------------------------------------------------

PAYLOAD = [b"abc\n" * 10, bytearray(b"def\n" * 5), memoryview(b"ghi" * 7)]


def bytes_round(engine, k):
    """One run_bytes of a kind picked by k; swallows Boom."""
    kind = k % 4
    try:
        if kind == 0:
            lockstep.run_bytes(PAYLOAD, lambda f: f.read(), lambda f: RESULT, window=7,
                               engine=engine)
        elif kind == 1:
            lockstep.run_bytes(PAYLOAD, list, fail_after(30, "x"), window=1, engine=engine)
        elif kind == 2:
            lockstep.run_bytes(failing_chunks(b"q" * 50, Boom("s")), sha256, window=16,
                               engine=engine)
        else:
            lockstep.run_bytes(io.BytesIO(b"r\n" * 40), first_line, io.BufferedIOBase.readlines,
                               engine=engine)
    except Boom:
        pass


def test_no_leaks(engine):
    runs = 10_000 if engine != "thread" else 2_000  # threads cost ~100 us each
    assert_flat(bytes_round, engine, 200, runs)


def test_engines_listed():
    assert set(ENGINES) <= set(lockstep.engines()) and set(BOUNDED) <= set(ENGINES)
