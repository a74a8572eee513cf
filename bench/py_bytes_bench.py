#!/usr/bin/env python3
"""py_bytes_bench.py: lockstep.run_bytes with two hashlib.file_digest consumers.

Two unmodified consumers, hashlib.file_digest(f, "sha256") and
hashlib.file_digest(f, "sha1") (of similar cost here), over one stream of
--mib MiB (default 256) from a source that copies each chunk out of a
1 MiB block that stays in cache, as a read(2) from the page cache would.
Rows, all from ONE process, each the minimum of --repeat runs:

  sha256 alone     hashing the same bytes from memory (h.update(block))
  sha1 alone       the same for SHA-1
  source alone     reading the stream once into a window-sized buffer
  copies           what a readinto-based consumer such as file_digest adds
                   to hashing: the stream copied into a buffer of its own
  floor            sha256 + sha1 + source: what one pass costs at least
                   without parallelism (issue 13's floor), and the same
                   plus both consumers' copies, which readinto makes
                   unavoidable
  file_digest alone  each consumer run alone over its own copy of the
                   source: what the two unmodified consumers cost without
                   lockstep (the source read twice)
  greenlet         run_bytes(..., engine="greenlet"), and its ratio to floor
                   (issue 13 asks for at most 1.1x)
  thread           run_bytes(..., engine="thread"), and greenlet / thread
                   (issue 13 asks for at least 1.5x: hashlib releases the
                   GIL on large buffers, so the two hashes overlap)
  two threads      both hashes from memory on two plain threads, no
                   lockstep: the most parallelism this machine gives right
                   now, so (sha256 + sha1 alone) / this is the ceiling for
                   greenlet / thread

--rss also runs the greenlet and thread engines in fresh processes at 64 MiB
and 1 GiB and prints each one's peak RSS (ru_maxrss), which must not grow
with the stream's length.  --sweep times the greenlet and thread runs over
windows from 16 KiB to 4 MiB (how DEFAULT_BYTES_WINDOWS were chosen).
--json FILE writes the rows.
"""
import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

MIB = 1 << 20
FLOOR_COPIES = "floor + both consumers' copies"
FD_ALONE = "file_digest sha256 then sha1, each alone over its own source"
BLOCK = 1 << 20  # the cached block the source copies from: fits in L2/L3


class BlockSource:
    """A binary file of `total` bytes, each read copying from one cached block."""

    def __init__(self, block, total):
        self.block, self.total, self.off = block, total, 0
        self.view = memoryview(block)

    def readable(self):
        return True

    def read1(self, n=-1):
        left = self.total - self.off
        n = left if n is None or n < 0 else min(n, left)
        start = self.off % len(self.block)
        n = min(n, len(self.block) - start)
        self.off += n
        return self.block[start:start + n]  # a copy, as read(2) makes

    read = read1

    def readinto(self, b):
        """One copy, straight from the block into b, as read(2) makes."""
        start = self.off % len(self.block)
        n = min(len(b), self.total - self.off, len(self.block) - start)
        b[:n] = self.view[start:start + n]
        self.off += n
        return n


def hash_alone(name, block, total):
    h = hashlib.new(name)
    for _ in range(total // len(block)):
        h.update(block)
    return h.hexdigest()


def two_threads(block, total):
    """sha256 and sha1 of the same bytes from memory, on two plain threads."""
    import threading
    out = {}
    threads = [threading.Thread(target=lambda n=n: out.__setitem__(n, hash_alone(n, block, total)))
               for n in ("sha256", "sha1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out["sha256"], out["sha1"]


def copy_alone(block, total, window):
    """What one readinto-based consumer (file_digest) adds to hashing: the
    stream copied, window by window, into a buffer of its own."""
    buf, view = bytearray(window), memoryview(block)
    for off in range(0, total, window):
        start = off % len(block)
        buf[:] = view[start:start + window]


def source_alone(block, total, window):
    src, buf = BlockSource(block, total), bytearray(window)
    while src.readinto(buf):
        pass


def digest_consumer(name):
    def consumer(f):
        return hashlib.file_digest(f, name).hexdigest()
    consumer.__name__ = f"file_digest_{name}"
    return consumer


def lockstep_run(lockstep, block, total, engine, window=None):
    return lockstep.run_bytes(BlockSource(block, total), digest_consumer("sha256"),
                              digest_consumer("sha1"), engine=engine, window=window)


def interleaved(fns, repeat):
    """Runs every fn of the dict fns once per round, repeat rounds, so that
    the load of the moment falls on every row alike; returns the minimum
    wall time of each, and each one's last result.  interleaved.cpu then
    holds the minimum CPU time of each (all threads of the process)."""
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    results = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    interleaved.cpu = {name: min(cs) for name, cs in cpu.items()}
    return {name: min(ts) for name, ts in times.items()}, results


def table(lockstep, mib, repeat):
    """The rows for one stream of mib MiB; returns them as dicts."""
    block = os.urandom(BLOCK)
    total = mib * MIB
    window = lockstep.DEFAULT_BYTES_WINDOW
    fns = {
        "sha256 alone": lambda: hash_alone("sha256", block, total),
        "sha1 alone": lambda: hash_alone("sha1", block, total),
        "source alone": lambda: source_alone(block, total, window),
        "one consumer's readinto copies alone": lambda: copy_alone(block, total, window),
        "two plain threads, no lockstep": lambda: two_threads(block, total),
        FD_ALONE: lambda: (hashlib.file_digest(BlockSource(block, total), "sha256").hexdigest(),
                           hashlib.file_digest(BlockSource(block, total), "sha1").hexdigest()),
    }
    engines = [e for e in ("greenlet", "thread") if e in lockstep.engines()]
    for engine in engines:
        fns[f"run_bytes {engine}"] = lambda e=engine: lockstep_run(lockstep, block, total, e)
    t, res = interleaved(fns, repeat)
    for engine in engines:
        assert res[f"run_bytes {engine}"] == (res["sha256 alone"], res["sha1 alone"]), \
            "run_bytes disagrees with hashing alone"
    cpu = interleaved.cpu
    floor = t["sha256 alone"] + t["sha1 alone"] + t["source alone"]
    t["floor: sha256 + sha1 + source"] = floor
    cpu["floor: sha256 + sha1 + source"] = cpu_floor = (
        cpu["sha256 alone"] + cpu["sha1 alone"] + cpu["source alone"])
    copies = 2 * t["one consumer's readinto copies alone"]
    t[FLOOR_COPIES] = floor + copies
    cpu[FLOOR_COPIES] = cpu_floor + 2 * cpu["one consumer's readinto copies alone"]
    print(f"## run_bytes: file_digest sha256 + sha1 over {mib} MiB, default windows {lockstep.DEFAULT_BYTES_WINDOWS} "
          f"(min of {repeat}, interleaved; load {os.getloadavg()[0]:.1f})\n")
    print("| row | seconds | MB/s of stream | CPU seconds |")
    print("|---|---:|---:|---:|")
    out = []
    for name, secs in t.items():
        print(f"| {name} | {secs:.3f} | {total / secs / 1e6:.0f} | {cpu[name]:.3f} |")
        out.append({"row": name, "seconds": secs, "cpu_seconds": cpu[name], "mib": mib})
    if "run_bytes greenlet" in t:
        print(f"\ngreenlet / floor = {t['run_bytes greenlet'] / floor:.3f}  (issue 13: <= 1.1); "
              f"in CPU time {cpu['run_bytes greenlet'] / cpu_floor:.3f}")
        print(f"greenlet / (floor + copies) = {t['run_bytes greenlet'] / (floor + copies):.3f}; "
              f"in CPU time {cpu['run_bytes greenlet'] / cpu[FLOOR_COPIES]:.3f}")
        print(f"greenlet / (each file_digest alone) = {t['run_bytes greenlet'] / t[FD_ALONE]:.3f}; "
              f"in CPU time {cpu['run_bytes greenlet'] / cpu[FD_ALONE]:.3f}")
    if len(engines) == 2:
        print(f"greenlet / thread = {t['run_bytes greenlet'] / t['run_bytes thread']:.3f}  "
              "(issue 13: >= 1.5)")
    print(f"ceiling here: (sha256 + sha1 alone) / two plain threads = "
          f"{(t['sha256 alone'] + t['sha1 alone']) / t['two plain threads, no lockstep']:.3f}")
    return out


def chart_rows(rows):
    """The table in bench/py_chart.py's terms: throughput of the stream per
    row, ratio = seconds / the floor's (issue 13's floor is 1)."""
    floor = next(r["seconds"] for r in rows if r["row"].startswith("floor:"))
    return [{"suite": "Python run_bytes: file_digest sha256 + sha1",
             "name": ("lockstep." + r["row"]) if r["row"].startswith("run_bytes") else r["row"],
             "seconds": r["seconds"], "bytes": r["mib"] * MIB,
             "gb_per_s": r["mib"] * MIB / r["seconds"] / 1e9,
             "ratio": r["seconds"] / floor} for r in rows]


def sweep(lockstep, mib, repeat):
    block = os.urandom(BLOCK)
    total = mib * MIB
    windows = (16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20)
    fns = {(w, e): (lambda w=w, e=e: lockstep_run(lockstep, block, total, e, w))
           for w in windows for e in ("greenlet", "thread")}
    t, _ = interleaved(fns, repeat)
    print(f"\n## window sweep: file_digest sha256 + sha1 over {mib} MiB "
          f"(min of {repeat}, interleaved)\n")
    print("| window | greenlet s | thread s |")
    print("|---:|---:|---:|")
    out = []
    for w in windows:
        print(f"| {w >> 10} KiB | {t[w, 'greenlet']:.3f} | {t[w, 'thread']:.3f} |")
        out.append({"window": w, "greenlet": t[w, "greenlet"], "thread": t[w, "thread"]})
    return out


def rss_child(engine, mib):
    """In a fresh process: one run, then print the peak RSS in KiB."""
    import lockstep
    block = os.urandom(BLOCK)
    lockstep_run(lockstep, block, mib * MIB, engine)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss(pythonpath):
    print("\n## peak RSS (fresh process per row, ru_maxrss)\n")
    print("| engine | stream | peak RSS MiB |")
    print("|---|---:|---:|")
    out = []
    for engine in ("greenlet", "thread"):
        for mib in (64, 1024):
            r = subprocess.run([sys.executable, __file__, "--pythonpath", pythonpath,
                                "--rss-child", engine, str(mib)],
                               capture_output=True, text=True, check=True)
            kib = int(r.stdout.split()[-1])
            print(f"| {engine} | {mib} MiB | {kib / 1024:.1f} |")
            out.append({"engine": engine, "mib": mib, "maxrss_kib": kib})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pythonpath", default=None, help="directory holding lockstep/")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rss-child", nargs=2, metavar=("ENGINE", "MIB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pythonpath:
        sys.path.insert(0, os.path.abspath(args.pythonpath))
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]))
        return
    import lockstep
    if not hasattr(hashlib, "file_digest"):
        sys.exit("py_bytes_bench needs Python 3.11+ (hashlib.file_digest)")
    rows = table(lockstep, args.mib, args.repeat)
    result = {"table": rows, "rows": chart_rows(rows)}
    if args.sweep:
        result["sweep"] = sweep(lockstep, max(args.mib // 4, 16), args.repeat)
    if args.rss:
        result["rss"] = rss(args.pythonpath or os.path.dirname(os.path.dirname(lockstep.__file__)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
