"""setup.py: builds the lockstep Python extension (lockstep._lockstep).

The metadata lives in pyproject.toml; this file only describes the C
extension, which compiles the lockstep core (src/*.c) together with the
binding (python/ext/*.c, one file per responsibility, sharing
python/ext/binding.h), so the module needs no installed liblockstep.  The fiber engine is compiled with LOCKSTEP_FORCE_UCONTEXT (no
assembly to build; Python never runs consumers on raw fibers anyway).  The
greenlet engine is compiled in when greenlet's C header is found
(python-greenlet-dev on Debian, or the greenlet wheel's own copy); set
LOCKSTEP_NO_GREENLET_BUILD=1 to leave it out.

    /usr/bin/python3 setup.py build_ext --inplace      # python/lockstep/_lockstep*.so
    /usr/bin/python3 -m pip install --no-build-isolation .
"""
import os
import sys
import sysconfig

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def greenlet_include():
    """The directory holding greenlet.h, or None."""
    if os.environ.get("LOCKSTEP_NO_GREENLET_BUILD"):
        return None
    if sys.implementation.name == "pypy":  # PyPy's greenlet module has no C API
        return None
    candidates = [os.path.join(sysconfig.get_paths()["include"], "greenlet"),
                  os.path.join(sys.prefix, "include", "site",
                               f"python{sys.version_info[0]}.{sys.version_info[1]}", "greenlet")]
    # The importable greenlet's own directory comes first: in an isolated
    # build that is pyproject.toml's build requirement, whose wheel ships
    # greenlet.h there, and it matches the greenlet the module will run with.
    try:
        import greenlet
        candidates.insert(0, os.path.dirname(greenlet.__file__))
    except ImportError:
        pass
    for d in candidates:
        if os.path.isfile(os.path.join(d, "greenlet.h")):
            return d
    return None


GREENLET_INC = greenlet_include()
if GREENLET_INC is None:
    print("lockstep: greenlet.h not found; building without the greenlet engine", file=sys.stderr)
else:  # tests/python_install.sh checks where an isolated build found it
    print(f"lockstep: greenlet engine built with {GREENLET_INC}/greenlet.h", file=sys.stderr)

# The binding's files (python/ext/binding.h says what each holds).
BINDING = ["python/ext/module.c", "python/ext/iterator.c", "python/ext/greenlet_engine.c",
           "python/ext/run.c", "python/ext/stream.c", "python/ext/bytes.c",
           "python/ext/async_iter.c", "python/ext/async_driver.c"]

ext = Extension(
    "lockstep._lockstep",
    sources=BINDING + ["src/core.c", "src/engine_fiber.c", "src/engine_buffer.c",
                       "src/engine_thread.c", "src/fiber.c"],
    include_dirs=["include", "src", "python/ext"] + ([GREENLET_INC] if GREENLET_INC else []),
    define_macros=[("_GNU_SOURCE", None), ("LOCKSTEP_FORCE_UCONTEXT", None),
                   ("LOCKSTEP_NO_GUARD_HANDLER", None),
                   ("LOCKSTEP_HAVE_GREENLET", "1" if GREENLET_INC else "0")],
    depends=["include/lockstep.h", "src/internal.h", "src/fiber.h", "src/fpmode.h",
             "python/ext/binding.h", "python/ext/pycompat.h", "python/ext/async.h"],
    extra_compile_args=["-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wextra",
                        "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                        "-Wno-cast-function-type"],
    extra_link_args=["-pthread"],
    libraries=["m"],  # src/fpmode.h's portable path (fegetmode), under LOCKSTEP_FORCE_UCONTEXT
)

setup(
    ext_modules=[ext],
    # Keep setuptools' scratch files out of the way of CMake's build/.
    # LOCKSTEP_BUILD_BASE: scripts/pyversions.sh gives each interpreter its own.
    options={"build": {"build_base": os.environ.get("LOCKSTEP_BUILD_BASE", "python/build")}},
)
