"""lockstep: run several consumers over one iterator, in one pass, with bounded memory.

This package is the Python face of the lockstep C library: everything here
is re-exported from the extension lockstep._lockstep, which compiles the C
core (its scheduler, window and cancellation rules) into the module.

    >>> import lockstep
    >>> lockstep.run(iter(range(1, 1000)), sum, max)
    (499500, 999)

run(iterable, *consumers, window=None, engine=None) -> tuple
    Each consumer is any callable taking one iterator.  See help(lockstep.run).
await arun(source, *consumers, window=None, engine=None) -> tuple
    The same for async code: async sources, async def consumers, under
    asyncio, uvloop and trio.  See help(lockstep.arun).
Stream(*consumers, window=None, engine=None)
    The push side, for callback-driven sources.  See help(lockstep.Stream).
run_bytes(source, *consumers, window=None, engine=None) -> tuple
    Byte streams: each consumer takes a binary file object (hashlib.file_digest,
    tarfile, gzip, pickle.load...).  See help(lockstep.run_bytes).
engines() -> tuple
    Engines usable here, best first; engine=None picks the first:
    'greenlet' when greenlet imports, else 'thread', else 'buffer'.
DEFAULT_WINDOWS, DEFAULT_WINDOW
    Items handed over at once when window=None, per engine ({'greenlet':
    512, 'thread': 2048, 'buffer': 512}), and the greenlet engine's.
build_info() -> dict
    How the module was built and what it finds at run time.  'greenlet' is
    among engines() only when the greenlet engine was compiled in (greenlet.h
    found at build time: build_info()['greenlet_engine']) and greenlet
    imports.  A module built without it while greenlet imports warns once,
    at import, naming the fix.
"""

from ._lockstep import (
    DEFAULT_WINDOW,
    DEFAULT_WINDOWS,
    HAVE_GREENLET_ENGINE,
    MAX_WINDOW,
    Iterator,
    Stream,
    core_version,
    engines,
    run,
)

# lockstep.arun: async sources and consumers (python/ext/async_driver.c);
# on PyPy too, where synchronous consumers need greenlet's C API it lacks.
from ._lockstep import AsyncIterator, arun  # noqa: E402

__version__ = "0.1.0"
# --------------------------------------------------------------------------
# How this module was built.  The greenlet engine is compiled in only when
# greenlet's C header was found at build time; a module built without it
# still works (engine=None picks threads), but several times slower, so a
# module that lacks the engine while greenlet imports says so once, here, at
# import, and build_info() tells the rest.
# --------------------------------------------------------------------------

import sys as _sys
import warnings as _warnings


def _greenlet_version():
    """greenlet's version when `import greenlet` works here, else None."""
    try:
        import greenlet
    except ImportError:
        return None
    return getattr(greenlet, "__version__", "unknown")


def _greenlet_engine_warning(greenlet_version):
    """For a module built without the greenlet engine: the warning to give when
    greenlet (greenlet_version, None if it does not import) is installed."""
    if greenlet_version is None:
        return None
    return (f"lockstep was built without its greenlet engine, although greenlet "
            f"{greenlet_version} is installed: greenlet.h was not found at build time (or "
            f"LOCKSTEP_NO_GREENLET_BUILD was set), so engine=None uses threads, several "
            f"times slower.  Fix: rebuild with greenlet's header available, e.g. "
            f"`pip install --force-reinstall --no-cache-dir .` from the source tree "
            f"(build isolation installs greenlet, which ships greenlet.h), or on Debian "
            f"`apt install python-greenlet-dev` and rebuild.  See lockstep.build_info().")


def build_info():
    """How this lockstep module was built, and what it finds at run time.

    Returns a dict:
      version          the package version
      core_version     the C core compiled into the extension
      greenlet_engine  True when the greenlet engine was compiled in (greenlet.h
                       found at build time)
      greenlet         the version of greenlet importable now, or None
      engines          lockstep.engines(): the engines usable now, best first
      extension        the path of the compiled extension module
    """
    from . import _lockstep
    return {
        "version": __version__,
        "core_version": core_version,
        "greenlet_engine": bool(HAVE_GREENLET_ENGINE),
        "greenlet": _greenlet_version(),
        "engines": engines(),
        "extension": _lockstep.__file__,
    }


# Only a module without the engine imports greenlet here; stacklevel=2 names
# the importer's `import lockstep` line (the warnings module skips importlib).
# PyPy's own greenlet module has no C API, so no PyPy build has the engine
# and no rebuild would give it: nothing to warn about there.
if not HAVE_GREENLET_ENGINE and _sys.implementation.name != "pypy":
    _message = _greenlet_engine_warning(_greenlet_version())
    if _message is not None:
        _warnings.warn(_message, RuntimeWarning, stacklevel=2)
    del _message

__all__ = ["run", "Stream", "Iterator", "engines", "DEFAULT_WINDOW", "DEFAULT_WINDOWS", "MAX_WINDOW", "__version__"]
__all__ += ["build_info"]  # lockstep.build_info(), above

# Byte streams (issue 13): run_bytes and the reader it hands each consumer.
from ._bytes import DEFAULT_BYTES_WINDOW, DEFAULT_BYTES_WINDOWS, Reader, run_bytes  # noqa: E402
from ._lockstep import ByteIterator  # noqa: E402

__all__ += ["run_bytes", "Reader", "ByteIterator", "DEFAULT_BYTES_WINDOW", "DEFAULT_BYTES_WINDOWS"]
__all__ += ["arun", "AsyncIterator"]  # lockstep.arun (python/ext/async_driver.c)
