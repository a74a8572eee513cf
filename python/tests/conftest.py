"""conftest.py: shared setup for lockstep's Python tests.

- Finds the module: $LOCKSTEP_PYTHONPATH (a directory holding lockstep/),
  else python/ when an in-place build (setup.py build_ext --inplace) is
  there, else whatever `import lockstep` finds (an installed copy).
- LOCKSTEP_NO_GREENLET=1 blocks `import greenlet` for the whole session, to
  prove the thread fallback: engine=None must then pick 'thread'.
- ENGINES lists the engines usable here; the `engine` fixture runs a test
  once per engine.
- HAVE_GREENLET: whether `import greenlet` works here; SYNC_OK: whether
  lockstep.arun can run a synchronous consumer (on a greenlet) here.
- A watchdog turns a hung test into a crash with every thread's traceback
  (faulthandler) instead of a silent hang.
- Boom and fail_at: the exception and the failing consumer the tests share.
- PYPY and no_refcounts: the few tests that count references (sys.getrefcount,
  tracemalloc, weakref-less objects) check CPython's memory management, which
  PyPy does not have; they skip there, saying why.
"""
import faulthandler
import glob
import os
import platform
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.dirname(HERE)

if os.environ.get("LOCKSTEP_NO_GREENLET"):
    sys.modules["greenlet"] = None  # makes `import greenlet` raise ImportError

_path = os.environ.get("LOCKSTEP_PYTHONPATH")
if _path:
    sys.path.insert(0, os.path.abspath(_path))
elif glob.glob(os.path.join(PYDIR, "lockstep", "_lockstep*.so")):
    sys.path.insert(0, PYDIR)

import lockstep  # noqa: E402

# Whether `import greenlet` works here (not under LOCKSTEP_NO_GREENLET=1).
try:
    import greenlet  # noqa: F401
    HAVE_GREENLET = True
except ImportError:
    HAVE_GREENLET = False
# Whether arun can run a synchronous consumer here: it needs greenlet's C
# API, which PyPy's own greenlet module lacks (HAVE_GREENLET_ENGINE is 0 there).
SYNC_OK = HAVE_GREENLET and bool(lockstep.HAVE_GREENLET_ENGINE)

ENGINES = [e for e in ("greenlet", "thread", "buffer") if e in lockstep.engines()]
# Engines that keep the pull bound (buffer reads everything first).
BOUNDED = [e for e in ENGINES if e != "buffer"]
WINDOWS = [1, 2, 7, None]
WATCHDOG_S = float(os.environ.get("LOCKSTEP_TEST_WATCHDOG", "120"))


PYPY = platform.python_implementation() == "PyPy"
no_refcounts = pytest.mark.skipif(
    PYPY, reason="PyPy has no reference counts (sys.getrefcount, tracemalloc) to check")


class Boom(Exception):
    """The tests' own exception, so that no library error is mistaken for it."""


def fail_at(p, tag="c"):
    """A consumer that raises Boom(tag, p) after receiving p items."""
    def consumer(it):
        for i, _ in enumerate(it, 1):
            if i == p:
                raise Boom(tag, p)
        return "done"
    return consumer


def lockstep_path():
    """The directory to put on sys.path for a subprocess to import this lockstep."""
    return os.path.dirname(os.path.dirname(os.path.abspath(lockstep.__file__)))


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture(params=BOUNDED)
def bounded_engine(request):
    return request.param


@pytest.fixture(params=WINDOWS, ids=lambda w: f"w{w}")
def window(request):
    return request.param


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
