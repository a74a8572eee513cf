"""dask_partitions.py: lockstep inside Dask, one pass per partition, results combined.

When the data outgrows one machine it is split into partitions (here: log
files) and a distributed engine runs a task per partition.  Inside each task
lockstep still does its job: one pass over the partition's lines, several
ordinary consumers (a count, max by length, a Counter of a field,
heapq.nlargest), memory bounded by the window.  Dask then combines the
partitions' results.  This file holds:

- the aggregates: each is an unmodified pull-style consumer plus the binary
  function that combines two partitions' results (AGGREGATES, HEAVY);
- perpartition / aggregate / summarize: what dask.bag's reduction runs on the
  workers and what turns the combined tuple into answers (a mean from a count
  and a sum, a median from a histogram);
- make_logs, start_cluster, compute, compute_here: generate the input, start
  a LocalCluster, run the computation on it or on this process alone;
- main: prints the results; --heavy adds CPU-heavy consumers and --compare
  times one process against LocalClusters of 1 and 2 worker processes, and
  prints how many partitions each worker ran in each round.

Run it from the source tree after `make python` (it then uses python/lockstep
and hands that directory to the worker processes), or anywhere lockstep is
installed with pip:

    /usr/bin/python3 examples/dask_partitions.py
    /usr/bin/python3 examples/dask_partitions.py --heavy --compare

On a real cluster, install the same lockstep on every worker (pip, or the
worker image): the workers import it by name, like any other dependency.
"""
import argparse
import collections
import contextlib
import functools
import glob
import heapq
import itertools
import operator
import os
import random
import re
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple


def _use_tree_lockstep():
    """Prefer this source tree's in-place build of lockstep (python/lockstep)
    when there is one, as the tests do, and make worker processes import the
    same one.  LocalCluster spawns them from this process: multiprocessing
    hands them this sys.path, and PYTHONPATH reaches any process they start
    in turn.  Outside a built tree this does nothing, and `import lockstep`
    finds the installed copy."""
    tree = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
    if not glob.glob(os.path.join(tree, "lockstep", "_lockstep*.so")):
        return
    sys.path.insert(0, tree)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    os.environ["PYTHONPATH"] = os.pathsep.join([tree] + [p for p in paths if p and p != tree])


if __name__ == "__main__":
    _use_tree_lockstep()

import lockstep  # noqa: E402

TOP = 5  # how many of the slowest requests to keep

# A line: time, client, method, path, status, latency, size, user agent.
LINE = re.compile(r'(\S+) (\S+) ([A-Z]+) (\S+) (\d{3}) (\d+)ms (\d+)B "([^"]*)"$')
WORD = re.compile(r"[a-z]{2,}")


# --- fields, as cheap splits (the light consumers) and as a full parse (heavy)

def status(line):
    """The HTTP status of a log line, as a string ('200')."""
    return line.split(" ", 5)[4]


def latency(line):
    """The latency of a log line in milliseconds, as an int."""
    return int(line.split(" ", 6)[5][:-2])


def parse(line):
    """Every field of a log line, by regular expression; ValueError if malformed."""
    m = LINE.match(line.rstrip("\n"))
    if m is None:
        raise ValueError(f"not a log line: {line!r}")
    return m.groups()


# --- consumers: each takes one iterator of lines and returns a value

def count(lines):
    """How many lines."""
    return sum(1 for _ in lines)


def over(field, consumer):
    """The consumer applied to one field of every line: over(status, Counter)."""
    def consume(lines):
        """consumer(field of each line)."""
        return consumer(map(field, lines))
    consume.__name__ = f"{getattr(consumer, '__name__', 'consumer')}_of_{field.__name__}"
    return consume


def word_counts(lines):
    """A Counter of the lowercase words in every request path and user agent."""
    words = collections.Counter()
    for line in lines:
        _, _, _, path, _, _, _, agent = parse(line)
        words.update(WORD.findall(path.lower()))
        words.update(WORD.findall(agent.lower()))
    return words


def bytes_by_path(lines):
    """A Counter of response bytes per path prefix (/api/items/7 -> /api/items)."""
    sizes = collections.Counter()
    for line in lines:
        _, _, _, path, _, _, size, _ = parse(line)
        sizes[path.rsplit("/", 1)[0]] += int(size)
    return sizes


def clients(lines):
    """The set of distinct client addresses."""
    return {parse(line)[1] for line in lines}


# --- how two partitions' results combine.  `a` comes from earlier lines than
# `b`: that keeps max's and nlargest's choice among ties the same as one pass.

def nlargest_of_nlargests(a, b):
    """The TOP slowest of two partitions' TOP slowest: the TOP slowest of both."""
    return heapq.nlargest(TOP, a + b, key=latency)


class Aggregate(NamedTuple):
    """A consumer and how to combine two of its results.  combine must be
    associative, and its identity is the consumer's result on no lines."""
    consumer: Callable[[Any], Any]
    combine: Callable[[Any, Any], Any]


AGGREGATES = {
    "lines": Aggregate(count, operator.add),                        # counts add
    "chars": Aggregate(over(len, sum), operator.add),               # sums add
    "longest": Aggregate(functools.partial(max, key=len, default=""),
                         functools.partial(max, key=len)),          # the max of the maxes
    "status": Aggregate(over(status, collections.Counter), operator.add),   # Counters add
    "slowest": Aggregate(functools.partial(heapq.nlargest, TOP, key=latency),
                         nlargest_of_nlargests),
    "latency_sum": Aggregate(over(latency, sum), operator.add),     # mean = sum / count
    "latency_hist": Aggregate(over(latency, collections.Counter), operator.add),  # for the median
}

# CPU-heavy consumers: each parses every line itself with a regular expression,
# as independent consumers do.
HEAVY = {
    "words": Aggregate(word_counts, operator.add),
    "bytes_by_path": Aggregate(bytes_by_path, operator.add),
    "clients": Aggregate(clients, operator.or_),                    # sets unite
}


def aggregates(heavy=False):
    """The aggregates to compute, in order: AGGREGATES, then HEAVY if heavy."""
    return {**AGGREGATES, **HEAVY} if heavy else dict(AGGREGATES)


# --- what runs on the workers, and the finishing step

def perpartition(lines, consumers, engine=None):
    """One partition's results: every consumer over its lines in one pass."""
    return lockstep.run(lines, *consumers, engine=engine)


def aggregate(results, combines, empty):
    """Combine partitions' result tuples, given in partition order, column by
    column; `empty` (the results of no lines) when there is none."""
    def pair(a, b):
        """Two result tuples combined; a's lines come before b's."""
        return tuple(c(x, y) for c, x, y in zip(combines, a, b))
    return functools.reduce(pair, results, empty)


def median_of_histogram(hist):
    """The median of the values a Counter counts (the mean of the two middle
    ones for an even total), as statistics.median gives on the values."""
    total = sum(hist.values())
    if total == 0:
        raise statistics.StatisticsError("no values")
    values = sorted(hist)
    cumulative = list(itertools.accumulate(hist[v] for v in values))

    def nth(k):  # the k-th smallest value, 0-based
        return values[next(i for i, c in enumerate(cumulative) if c > k)]
    lo, hi = nth((total - 1) // 2), nth(total // 2)
    return lo if lo == hi else (lo + hi) / 2


def summarize(names, combined):
    """The answers from the combined tuple: every aggregate by name, plus the
    mean latency (from the count and the sum) and the median (from the
    histogram; a median itself does not combine)."""
    r = dict(zip(names, combined))
    if r["lines"]:
        r["latency_mean"] = r["latency_sum"] / r["lines"]
        r["latency_median"] = median_of_histogram(r["latency_hist"])
    return r


# --- input, cluster, and the two ways of computing

def make_logs(directory, files, lines, seed=15):
    """Write `files` log files of `lines` lines each into directory, the same
    for the same seed; return their paths in order."""
    rng = random.Random(seed)
    methods = ["GET"] * 8 + ["POST", "PUT", "DELETE"]
    statuses = ["200"] * 40 + ["201", "204", "301", "304", "400", "403", "404", "404", "500", "503"]
    paths = ["/api/items", "/api/users", "/api/orders", "/static/js", "/static/css", "/login", "/search"]
    agents = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/115.0", "curl/7.88.1",
              "python-requests/2.28.1", "Mozilla/5.0 (Macintosh; Intel Mac OS X) Safari/605.1.15"]
    out = []
    for f in range(files):
        path = os.path.join(directory, f"access-{f:03d}.log")
        with open(path, "w", encoding="utf-8") as fh:
            for i in range(lines):
                ms = int(rng.lognormvariate(3.5, 1.0))
                fh.write(f"2024-05-{f % 28 + 1:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z "
                         f"10.0.{rng.randrange(16)}.{rng.randrange(256)} {rng.choice(methods)} "
                         f"{rng.choice(paths)}/{rng.randrange(1000)} {rng.choice(statuses)} {ms}ms "
                         f"{rng.randrange(100, 50_000)}B \"{rng.choice(agents)}\"\n")
        out.append(path)
    return out


@contextlib.contextmanager
def start_cluster(n_workers):
    """A Client on a LocalCluster of n_workers single-threaded worker
    processes, on 127.0.0.1 with the dashboard off.  Leaving the block closes
    the client, then the cluster, which joins the worker processes.  Raises
    RuntimeError if a worker imports another lockstep than this process."""
    from distributed import Client, LocalCluster

    # dashboard_address=None turns the dashboard off; the scheduler still
    # serves health checks over HTTP, on a free loopback port rather than 8787,
    # which another cluster on this machine may hold.
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            Client(cluster) as client:
        here = os.path.realpath(lockstep.__file__)
        there = client.run(lambda: os.path.realpath(__import__("lockstep").__file__))
        if set(there.values()) != {here}:
            raise RuntimeError(f"workers import another lockstep than {here}: {there}")
        yield client


def compute(client, paths, aggs, engine=None, blocksize=None):
    """The combined results (a tuple, in aggs' order) of every aggregate over
    every line of paths, on the cluster behind client: a dask.bag with one
    partition per file (or per blocksize bytes), lockstep.run per partition,
    and the combines over the partitions' results."""
    import dask.bag as db

    consumers = [a.consumer for a in aggs.values()]
    combines = [a.combine for a in aggs.values()]
    # files_per_partition=1 streams each file's lines into its task; the
    # default (blocksize=None without it) would first make each a list.
    if blocksize is None:
        bag = db.read_text(paths, files_per_partition=1, encoding="utf-8")
    else:
        bag = db.read_text(paths, blocksize=blocksize, encoding="utf-8")
    empty = perpartition(iter(()), consumers, engine)
    total = bag.reduction(functools.partial(perpartition, consumers=consumers, engine=engine),
                          functools.partial(aggregate, combines=combines, empty=empty),
                          name="lockstep")
    return client.compute(total).result()


def compute_here(paths, aggs, engine=None):
    """The same tuple as compute(), from one lockstep.run over all the files
    concatenated, in this process."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(p, encoding="utf-8")) for p in paths]
        return lockstep.run(itertools.chain.from_iterable(files),
                            *(a.consumer for a in aggs.values()), engine=engine)


# --- the command

def show(r):
    """Print the answers of summarize()."""
    print(f"lines {r['lines']:,}, characters {r['chars']:,}")
    print(f"longest line ({len(r['longest'])} chars): {r['longest'].rstrip()}")
    print("status:", ", ".join(f"{s} x{n}" for s, n in sorted(r["status"].items())))
    print(f"latency: mean {r.get('latency_mean', 0):.1f} ms, median {r.get('latency_median', 0)} ms")
    print(f"{TOP} slowest:")
    for line in r["slowest"]:
        print("   ", line.rstrip())
    if "words" in r:
        print("top words:", ", ".join(f"{w} x{n}" for w, n in r["words"].most_common(5)))
        print("bytes by path:", ", ".join(f"{p} {n:,}" for p, n in r["bytes_by_path"].most_common(3)))
        print(f"distinct clients: {len(r['clients'])}")


def cpu_seconds(client=None):
    """The CPU time (user + system, in s) used so far by this process, or
    with a client by each of its workers' processes, as a list."""
    if client is None:
        return [sum(os.times()[:2])]
    return list(client.run(lambda: sum(os.times()[:2])).values())


def partitions_per_worker(task_stream, workers):
    """How many partitions each of `workers` workers ran, from the records of
    distributed.get_task_stream, as a list from the most to the fewest (0 for
    a worker that ran none).  A
    partition's tasks are named after the reduction's per-partition step
    ('lockstep-part'): the reading fused with lockstep.run, and a trivial
    alias of its result, which may run elsewhere; the partition counts for
    the worker that spent the longest computing one of them."""
    import ast
    longest = {}  # partition number -> (seconds computing, worker)
    for task in task_stream:
        key = ast.literal_eval(task["key"]) if task["key"].startswith("(") else task["key"]
        if isinstance(key, tuple) and "lockstep-part" in key[0]:
            seconds = sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
            longest[key[1]] = max(longest.get(key[1], (-1, None)), (seconds, task["worker"]))
    ran = sorted(collections.Counter(worker for _, worker in longest.values()).values(), reverse=True)
    return ran + [0] * (workers - len(ran))


def compare(paths, aggs, engine, repeat):
    """Time one process against LocalClusters of 1 and 2 worker processes on
    the same files, and check that all three give the same tuple.  Both
    clusters run for the whole comparison, and every round times the three
    ways one after the other, so that a change of load on a shared machine
    hits them alike; the speed-ups are medians of each round's ratios.

    The CPU time of the computing processes (this one, or the workers)
    depends less on the load than wall time does: the busiest one's bounds
    the wall time on an idle machine, so one process's CPU over it bounds the
    speed-up.  Less, not nothing: on a shared machine one partition's CPU time
    varied 0.16-0.33 s between equal partitions in one round, so a 4+4 split
    of equal partitions still showed the busiest worker at 50-58% of the CPU.
    The other cause of an uneven split is the scheduler: it hands the next
    partition to whichever worker is free, and a worker the machine's other
    load holds back ends a round with fewer of them (5+3, 6+2 of 8 seen).
    That is why each round's split is printed."""
    from distributed import get_task_stream

    t0 = time.perf_counter()
    with start_cluster(1) as one, start_cluster(2) as two:
        started = time.perf_counter() - t0
        ways = [("one process, lockstep.run over all files", None,
                 lambda: compute_here(paths, aggs, engine))]
        for name, client in (("LocalCluster, 1 worker process", one), ("LocalCluster, 2 worker processes", two)):
            ways.append((name, client, functools.partial(compute, client, paths, aggs, engine)))
        print(f"\n{len(paths)} files, {repeat} rounds (the two clusters started in {started:.1f} s), "
              f"load average {os.getloadavg()[0]:.1f}:")
        wall, cpu, busiest, splits = ([[] for _ in ways] for _ in range(4))
        for _ in range(repeat):
            results = []
            for (_, client, fn), w, c, b, sp in zip(ways, wall, cpu, busiest, splits):
                # The task stream records which worker ran each task; it is
                # collected on the scheduler, outside the workers' CPU time.
                stream = get_task_stream(client) if client else contextlib.nullcontext()
                c0, t0 = cpu_seconds(client), time.perf_counter()
                with stream:
                    results.append(fn())
                w.append(time.perf_counter() - t0)
                used = [after - before for before, after in zip(c0, cpu_seconds(client))]
                c.append(sum(used))
                b.append(max(used))
                if client:
                    sp.append(partitions_per_worker(stream.data, len(used)))
            if any(r != results[0] for r in results):
                raise AssertionError("the clusters disagree with one process")
    one_cpu = statistics.median(cpu[0])
    for (name, _, _), w, c, b, sp in zip(ways, wall, cpu, busiest, splits):
        speedup = statistics.median(a / z for a, z in zip(wall[0], w))
        print(f"  {name:42} wall median {statistics.median(w):6.2f} s [{min(w):.2f}-{max(w):.2f}]"
              f"  speed-up {speedup:4.2f}x")
        print(f"  {'':42} CPU {statistics.median(c):5.2f} s, busiest process "
              f"{statistics.median(b):5.2f} s: speed-up at most {one_cpu / statistics.median(b):4.2f}x")
        if sp:  # a cluster
            shares = [x / y for x, y in zip(b, c)]
            share = (f"; busiest's share of the CPU {min(shares):.0%}-{max(shares):.0%}"
                     if min(shares) < 1 else "")  # one worker: always all of it
            print(f"  {'':42} partitions per worker by round: "
                  f"{', '.join('+'.join(map(str, s)) for s in sp)}{share}")
    print(f"  load average afterwards {os.getloadavg()[0]:.1f}")


def main(argv=None):
    """The command: see --help."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--files", type=int, default=8, help="log files, one partition each (default 8)")
    ap.add_argument("--lines", type=int, default=20_000, help="lines per file (default 20000)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--heavy", action="store_true", help="add CPU-heavy consumers (regex parsing)")
    ap.add_argument("--engine", choices=lockstep.engines(), help="lockstep engine (default: the best)")
    ap.add_argument("--compare", action="store_true",
                    help="also time one process against 1 and 2 worker processes")
    ap.add_argument("--repeat", type=int, default=3, help="rounds with --compare (default 3)")
    args = ap.parse_args(argv)

    aggs = aggregates(args.heavy)
    with tempfile.TemporaryDirectory(prefix="lockstep-dask-") as tmp:
        paths = make_logs(tmp, args.files, args.lines)
        with start_cluster(args.workers) as client:
            combined = compute(client, paths, aggs, args.engine)
        print(f"lockstep {lockstep.__version__} from {os.path.dirname(lockstep.__file__)}, "
              f"{args.files} files on {args.workers} worker processes:\n")
        show(summarize(list(aggs), combined))
        if args.compare:
            compare(paths, aggs, args.engine, args.repeat)


if __name__ == "__main__":
    main()
