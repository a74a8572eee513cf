# __init__.pyi: type stubs for the lockstep package (run, Stream, Iterator,
# engines, the constants, arun with its AsyncIterator, and run_bytes with its
# Reader), which the C extension lockstep._lockstep implements (Reader:
# lockstep/_bytes.py).
from types import TracebackType
from typing import Any, Callable, Iterable, Iterator as _Iterator, Literal, Optional, Tuple, Type, TypeVar

_T = TypeVar("_T")

EngineName = Literal["greenlet", "thread", "buffer"]

DEFAULT_WINDOW: int
DEFAULT_WINDOWS: dict[str, int]
MAX_WINDOW: int
HAVE_GREENLET_ENGINE: int
core_version: str
__version__: str

class Iterator(_Iterator[_T]):
    """The iterator lockstep hands each consumer; valid only inside it."""
    @property
    def active(self) -> bool: ...
    @property
    def position(self) -> int: ...
    def __iter__(self) -> "Iterator[_T]": ...
    def __next__(self) -> _T: ...

def run(
    iterable: Iterable[_T],
    /,
    *consumers: Callable[[Iterator[_T]], Any],
    window: Optional[int] = None,
    engine: Optional[EngineName] = None,
) -> Tuple[Any, ...]:
    """Run every consumer over one pass of iterable; return their results."""
    ...

def engines() -> Tuple[EngineName, ...]:
    """The engines usable here, best first."""
    ...

# How the module was built (python/lockstep/__init__.py).
from typing import TypedDict

class _BuildInfo(TypedDict):
    version: str
    core_version: str
    greenlet_engine: bool
    greenlet: Optional[str]
    engines: Tuple[EngineName, ...]
    extension: str

def build_info() -> _BuildInfo:
    """How this module was built (greenlet engine compiled in?) and what it finds now."""
    ...

class Stream:
    """The push side: feed items with push/extend, get results at close."""
    def __init__(
        self,
        *consumers: Callable[[Iterator[Any]], Any],
        window: Optional[int] = None,
        engine: Optional[EngineName] = None,
    ) -> None: ...
    def push(self, item: Any, /) -> int: ...
    def extend(self, iterable: Iterable[Any], /) -> int: ...
    def fail(self, exc: BaseException, /) -> None: ...
    def close(self) -> Tuple[Any, ...]: ...
    @property
    def live(self) -> int: ...
    @property
    def results(self) -> Tuple[Any, ...]: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> "Stream": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

# --- lockstep.arun (python/ext/async_driver.c) --------------------------------------

from typing import AsyncIterable, AsyncIterator as _AsyncIterator, Awaitable, Generator, Union

AsyncEngineName = Literal["greenlet", "buffer"]

class AsyncIterator(_Iterator[_T], _AsyncIterator[_T]):
    """The iterator lockstep.arun hands each consumer: `for` in a synchronous
    consumer, `async for` in an async one; valid only inside it."""
    @property
    def active(self) -> bool: ...
    @property
    def position(self) -> int: ...
    def __iter__(self) -> "AsyncIterator[_T]": ...
    def __next__(self) -> _T: ...
    def __aiter__(self) -> "AsyncIterator[_T]": ...
    def __anext__(self) -> Awaitable[_T]: ...

class ARun(Awaitable[Tuple[Any, ...]]):
    """What arun() returns: await it once for the results tuple."""
    def __await__(self) -> Generator[Any, Any, Tuple[Any, ...]]: ...
    def send(self, value: Any, /) -> Any: ...
    def throw(self, exc: BaseException, /) -> Any: ...
    def close(self) -> None: ...

def arun(
    source: Union[Iterable[_T], AsyncIterable[_T]],
    /,
    *consumers: Callable[[AsyncIterator[_T]], Any],
    window: Optional[int] = None,
    engine: Optional[AsyncEngineName] = None,
) -> ARun:
    """Run every consumer (sync or async def) over one pass of source under
    the running event loop; await it for their results."""

# --- Byte streams (issue 13) ------------------------------------------------
from io import BufferedIOBase
from typing import Protocol, Union

DEFAULT_BYTES_WINDOW: int
DEFAULT_BYTES_WINDOWS: dict[str, int]

class _BinaryReadable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...

_BytesLike = Union[bytes, bytearray, memoryview]

class ByteIterator:
    """A consumer's handle on a byte stream (the C half; Reader wraps it)."""
    @property
    def position(self) -> int: ...
    def take(self, n: int, /) -> bytes: ...
    def readinto1(self, buffer: Any, /) -> int: ...
    def readline1(self, limit: int, /) -> bytes: ...
    def peek(self) -> bytes: ...
    def detach(self) -> bool: ...

class Reader(BufferedIOBase):
    """The read-only, non-seekable binary file run_bytes hands each consumer."""
    mode: str
    def __init__(self, handle: ByteIterator) -> None: ...
    def read(self, size: Optional[int] = -1, /) -> bytes: ...
    def read1(self, size: Optional[int] = -1, /) -> bytes: ...
    def readinto(self, b: Any, /) -> int: ...
    def readinto1(self, b: Any, /) -> int: ...
    def readline(self, size: Optional[int] = -1, /) -> bytes: ...
    def peek(self, size: int = 0, /) -> bytes: ...

def run_bytes(
    source: Union[_BinaryReadable, Iterable[_BytesLike]],
    /,
    *consumers: Callable[[Reader], Any],
    window: Optional[int] = None,
    engine: Optional[EngineName] = None,
) -> Tuple[Any, ...]:
    """Run every consumer (a reader of a binary file) over one pass of a byte stream."""
    ...
