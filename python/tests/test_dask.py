"""test_dask.py: lockstep inside Dask, on a real LocalCluster of 2 worker processes.

Runs the computation of examples/dask_partitions.py (a dask.bag over log
files, lockstep.run per partition, the partitions' results combined) and
checks that it equals one lockstep.run over all the files concatenated, in
this process: per engine, with one partition per file (streamed) and with
byte-range partitions (more partitions than dask's split_every, so the
combines also run on combined results); and that the split --compare prints
(partitions per worker, from the task stream) counts each partition once.
The cluster is started once for the module; its workers import this
lockstep and the example by name (worker processes start with this
process's sys.path: multiprocessing's spawn hands it over), and closing it
must leave none of their processes behind.

The engine is passed to the workers explicitly: LOCKSTEP_NO_GREENLET blocks
greenlet in this process only, and ENGINES (what this process can run) picks
what the workers run.  Skipped when dask or distributed is missing, except in
CI (CI set in the environment) on Debian's python3, for which
scripts/deps.sh installs them: there that is an error.
"""
import collections
import importlib.util
import os
import statistics
import sys

import pytest

from conftest import ENGINES

# scripts/deps.sh installs dask for Debian's python3 (make test-python), not
# for other interpreters or virtualenvs (such as a Python version matrix's).
DEPS_PYTHON = (sys.prefix == sys.base_prefix
               and os.path.realpath(sys.executable) == os.path.realpath("/usr/bin/python3"))

try:
    import dask.bag  # noqa: F401
    import distributed  # noqa: F401
    import psutil
except ImportError:
    if os.environ.get("CI") and DEPS_PYTHON:
        raise
    pytest.skip("needs dask and distributed (scripts/deps.sh python)", allow_module_level=True)

import lockstep  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = 5
LINES = 3000


EXAMPLES = os.path.join(ROOT, "examples")

# Debian's tornado 6.2 under distributed 2022.12, on every cluster start.
pytestmark = pytest.mark.filterwarnings("ignore:make_current is deprecated:DeprecationWarning")


def load_example():
    """examples/dask_partitions.py, as the module dask_partitions."""
    spec = importlib.util.spec_from_file_location("dask_partitions", os.path.join(EXAMPLES, "dask_partitions.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ex = load_example()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """FILES generated log files of LINES lines each."""
    return ex.make_logs(str(tmp_path_factory.mktemp("logs")), FILES, LINES)


@pytest.fixture(scope="module")
def client():
    """A Client on 2 worker processes that import this lockstep and the
    example; after the module, checks that closing the cluster ended every
    process it started (multiprocessing's resource tracker, shared by the
    whole session, stays until this process exits)."""
    before = children()
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(EXAMPLES)
        with ex.start_cluster(2) as c:
            workers = set(c.run(os.getpid).values())
            assert workers <= children()
            yield c
    left = {p for p in children() - before if not resource_tracker(p)}
    assert not left, f"processes left after closing the cluster: {left}"


def children():
    """The pids of this process's descendants, zombies included."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def resource_tracker(pid):
    """Whether pid is multiprocessing's resource tracker; False for a zombie,
    True for a process gone meanwhile (it was no stray)."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(psutil.Process(pid).cmdline())
    except psutil.ZombieProcess:
        return False
    except psutil.NoSuchProcess:
        return True


def test_two_real_worker_processes(client):
    """Two worker processes, not this one, importing this lockstep."""
    info = client.run(lambda: (os.getpid(), os.path.realpath(__import__("lockstep").__file__)))
    pids = {pid for pid, _ in info.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {f for _, f in info.values()} == {os.path.realpath(lockstep.__file__)}


@pytest.mark.parametrize("engine", ENGINES)
def test_cluster_equals_one_pass(client, logs, engine):
    """One streamed partition per file, every aggregate, each engine."""
    aggs = ex.aggregates(heavy=True)
    combined = ex.compute(client, logs, aggs, engine)
    assert combined == ex.compute_here(logs, aggs, engine)
    r = dict(zip(aggs, combined))
    assert r["lines"] == FILES * LINES
    assert len(r["slowest"]) == ex.TOP


def test_partitions_per_worker_counts_each_partition_once(client, logs):
    """--compare's split, read from the task stream: every partition counted
    once, on one of the 2 workers, whichever ran it."""
    aggs = ex.aggregates()
    with distributed.get_task_stream(client) as stream:
        ex.compute(client, logs, aggs)
    split = ex.partitions_per_worker(stream.data, 2)
    assert len(split) == 2 and sum(split) == FILES, split


def test_byte_range_partitions(client, logs):
    """Partitions cut inside files, more of them than split_every (8)."""
    aggs = ex.aggregates(heavy=True)
    size = sum(os.path.getsize(p) for p in logs)
    blocksize = size // 20
    combined = ex.compute(client, logs, aggs, blocksize=blocksize)
    assert combined == ex.compute_here(logs, aggs)


def test_mean_and_median_from_combinable_parts(client, logs):
    """The mean from a count and a sum, the median from a histogram, equal
    statistics' answers on every latency."""
    aggs = ex.aggregates()
    r = ex.summarize(list(aggs), ex.compute(client, logs, aggs))
    latencies = [ex.latency(line) for p in logs for line in open(p, encoding="utf-8")]
    assert r["latency_mean"] == pytest.approx(statistics.mean(latencies))
    assert r["latency_median"] == statistics.median(latencies)


def test_empty_files(client, tmp_path):
    """Empty partitions give the consumers' results on no lines."""
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"empty-{i}.log"))
        open(paths[-1], "w").close()
    aggs = ex.aggregates(heavy=True)
    assert ex.compute(client, paths, aggs) == ex.compute_here(paths, aggs)


@pytest.mark.parametrize("values", [[5], [1, 3], [4, 1, 4, 2], [7, 7, 7], [2, 9, 9, 1, 5]])
def test_median_of_histogram(values):
    assert ex.median_of_histogram(collections.Counter(values)) == statistics.median(values)
