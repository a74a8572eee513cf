"""lockstep: run several consumers over one iterator, in one pass, with bounded memory.

This package is the Python face of the lockstep C library: everything here
is re-exported from the extension lockstep._lockstep, which compiles the C
core (its scheduler, window and cancellation rules) into the module.

    >>> import lockstep
    >>> lockstep.run(iter(range(1, 1000)), sum, max)
    (499500, 999)

run(iterable, *consumers, window=None, engine=None) -> tuple
    Each consumer is any callable taking one iterator.  See help(lockstep.run).
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

__version__ = "0.1.0"

__all__ = ["run", "Stream", "Iterator", "engines", "DEFAULT_WINDOW", "DEFAULT_WINDOWS", "MAX_WINDOW", "__version__"]

# Byte streams (issue 13): run_bytes and the reader it hands each consumer.
from ._bytes import DEFAULT_BYTES_WINDOW, Reader, run_bytes  # noqa: E402
from ._lockstep import ByteIterator  # noqa: E402

__all__ += ["run_bytes", "Reader", "ByteIterator", "DEFAULT_BYTES_WINDOW"]
