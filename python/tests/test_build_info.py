"""test_build_info.py: lockstep.build_info() and the warning a module built
without the greenlet engine gives when greenlet imports.

The real case, a `pip install .` built with the header hidden, is
tests/python_install.sh (make test-install, in make test-all): it needs
PyPI and two compiles.  Here, in seconds, the same import-time logic runs on
this build with the extension's HAVE_GREENLET_ENGINE flag turned off in a
subprocess.
"""
import glob
import os
import subprocess
import sys
import textwrap

import pytest

import lockstep
from conftest import PYPY, lockstep_path

KEYS = {"version", "core_version", "greenlet_engine", "greenlet", "engines", "extension"}
NO_GREENLET = bool(os.environ.get("LOCKSTEP_NO_GREENLET"))


def test_build_info_describes_this_module():
    info = lockstep.build_info()
    assert set(info) == KEYS
    assert info["version"] == lockstep.__version__
    assert info["core_version"] == lockstep.core_version
    assert info["greenlet_engine"] is bool(lockstep.HAVE_GREENLET_ENGINE)
    assert info["engines"] == lockstep.engines()
    assert os.path.isfile(info["extension"])
    # 'greenlet' is usable exactly when it was compiled in and imports now.
    usable = info["greenlet_engine"] and info["greenlet"] is not None
    assert ("greenlet" in info["engines"]) is usable


@pytest.mark.skipif(not NO_GREENLET, reason="only with LOCKSTEP_NO_GREENLET=1")
def test_build_info_with_greenlet_blocked():
    info = lockstep.build_info()
    assert info["greenlet"] is None
    assert "greenlet" not in info["engines"]


def test_warning_text_names_the_fix():
    assert lockstep._greenlet_engine_warning(None) is None
    text = lockstep._greenlet_engine_warning("3.1.0")
    assert "without its greenlet engine" in text
    assert "greenlet 3.1.0 is installed" in text
    assert "pip install --force-reinstall --no-cache-dir ." in text
    assert "python-greenlet-dev" in text


# A subprocess that imports this lockstep with the extension's flag set to 0,
# as a build without greenlet.h has it, imports it again, runs it, and prints
# what it saw.  The warning goes to stderr under the default filters.
SIMULATED_BUILD = textwrap.dedent("""
    import importlib.util, sys, types
    path, so = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location("lockstep._lockstep", so)
    real = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real)
    fake = types.ModuleType("lockstep._lockstep")
    fake.__dict__.update(real.__dict__)
    fake.HAVE_GREENLET_ENGINE = 0
    sys.modules["lockstep._lockstep"] = fake
    sys.path.insert(0, path)
    import lockstep
    import lockstep  # noqa: F811  (a second import must not warn again)
    assert lockstep.run(iter(range(10)), sum, max) == (45, 9)
    print(lockstep.build_info()["greenlet_engine"])
""")


@pytest.mark.skipif(NO_GREENLET, reason="needs an importable greenlet")
@pytest.mark.skipif(PYPY, reason="PyPy never has the greenlet engine, so it never warns")
def test_module_without_engine_warns_once():
    pytest.importorskip("greenlet")
    path = lockstep_path()
    so = glob.glob(os.path.join(path, "lockstep", "_lockstep*.so"))
    assert len(so) == 1, so
    proc = subprocess.run([sys.executable, "-c", SIMULATED_BUILD, path, so[0]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert proc.stderr.count("RuntimeWarning: lockstep was built without its greenlet engine") == 1
    # stacklevel=2 points at the importer's line, not at lockstep itself.
    assert "__init__.py" not in proc.stderr.split("RuntimeWarning")[0]


def test_module_with_engine_or_without_greenlet_is_silent():
    if not PYPY and not lockstep.HAVE_GREENLET_ENGINE and lockstep.build_info()["greenlet"] is not None:
        pytest.skip("this build lacks the greenlet engine while greenlet imports: it warns")
    path = lockstep_path()
    env = dict(os.environ, PYTHONPATH=path)
    code = "import sys, os\n" \
           "if os.environ.get('LOCKSTEP_NO_GREENLET'): sys.modules['greenlet'] = None\n" \
           "import lockstep"
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
