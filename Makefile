# Makefile: lockstep's front door.  CMake + CTest do the work underneath.
#
#   make          build the library, tests, examples, benchmarks (build/) and
#                 the Python extension (python/lockstep/)
#   make demo     answer the original question and show the speed and memory
#   make test     the quick legs (a few minutes): release ctest, Python with
#                 and without greenlet, ASan+UBSan (gcc)
#   make test-all the whole matrix, which CI runs: the quick legs, then clang
#                 ASan+UBSan, TSan, ucontext, valgrind, aarch64, the fuzzer
#                 and a Python install from PyPI in a fresh virtualenv
#   make bench    the full benchmark suite (QUICK=1 for a smoke run)
#   make install  install into PREFIX (default /usr/local)
#
# Every target installs the Debian packages it needs, when they are missing.

PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
DEPS = scripts/deps.sh

.PHONY: all build python test-python test-pyversions demo test test-release test-asan test-asan-clang test-tsan \
        test-valgrind test-ucontext test-aarch64 test-fuzz fuzz bench install clean

all: build python

# configure DIR EXTRA-FLAGS: configure a build tree once, then build it.
define cmake_build
	cmake -S . -B $(1) -DCMAKE_BUILD_TYPE=$(2) $(CMAKE_FLAGS) $(3) >/dev/null
	cmake --build $(1) -j $(JOBS)
endef

build:
	@$(DEPS) build
	$(call cmake_build,build,RelWithDebInfo,)

# The Python extension, built in place (python/lockstep/_lockstep*.so) for
# Debian's /usr/bin/python3, which has greenlet and pytest.
PYTHON = /usr/bin/python3
python:
	@$(DEPS) python
	$(PYTHON) -W ignore setup.py -q build_ext --inplace

# The build is quiet: its output goes to build/demo-build.log, which is
# printed only when the build fails.  Packages are installed (loudly) first.
DEMO_LOG = build/demo-build.log
demo:
	@$(DEPS) build python
	@mkdir -p build
	@echo "== Building (log: $(DEMO_LOG)) =="
	@$(MAKE) --no-print-directory build python >$(DEMO_LOG) 2>&1 || \
	  { cat $(DEMO_LOG); echo "make demo: the build failed; its log is above and in $(DEMO_LOG)" >&2; exit 1; }
	@echo
	@echo "== The question: sum and max of iter(range(1, 1000)), one pass, one iterator =="
	@./build/examples/sum_max
	@echo
	@echo "== How fast, in C (N = 10^7 int64, sum and max) =="
	@./build/bench/bench_c --demo
	@echo
	@echo "== The same question in Python: time and peak memory =="
	@PYTHONPATH=python $(PYTHON) examples/sum_max.py
	@echo
	@echo "== Bytes: one pass over a tarball on a pipe (examples/onepass.c) =="
	@tar czf - src include | ./build/examples/onepass

# make test: the legs a developer runs many times a day, a few minutes on a
# fresh clone (docs/TESTING.md has the figure).  make test-all: every leg,
# for CI and before a release.  Both run their legs through scripts/legs.sh,
# which times each, keeps going after a failure and ends with a table and
# the line "N passed, N failed".  Each leg is also a target of its own.  To
# add a leg to test-all, put one line beside its target:
#   TEST_ALL_LEGS += test-foo
TEST_LEGS = test-release test-python test-asan
TEST_ALL_LEGS = $(TEST_LEGS) test-asan-clang test-tsan test-ucontext test-valgrind test-aarch64 test-fuzz
.PHONY: test-all test-install

test:
	@MAKE="$(MAKE)" scripts/legs.sh $(TEST_LEGS)

test-all:
	@MAKE="$(MAKE)" scripts/legs.sh $(TEST_ALL_LEGS)

test-release: build
	cd build && ctest --output-on-failure -j $(JOBS)
	tests/install_smoke.sh build

# The Python suite on every engine, then again with greenlet made
# unimportable, which proves the thread fallback.
test-python: python
	$(PYTHON) -m pytest -q python/tests
	LOCKSTEP_NO_GREENLET=1 $(PYTHON) -m pytest -q python/tests

# The Python version matrix: CPython 3.9 to 3.13 (pyenv) and Debian's PyPy,
# each in its own virtualenv under build-py/ with the pins of
# python/requirements-test.txt; the whole suite, with and without greenlet.
TEST_ALL_LEGS += test-pyversions
test-pyversions:
	@$(DEPS) python pypy
	scripts/pyversions.sh

# ASan + UBSan with gcc, then with clang.  The scale test shrinks 4x: the
# sanitizers make every item cost ten times more, and 2,500 consumers over
# 25,000 items still crosses every window and page boundary.
test-asan:
	@$(DEPS) build sanitize
	$(call cmake_build,build-asan,Debug,-DLOCKSTEP_SANITIZE=address$(,)undefined -DLOCKSTEP_BUILD_BENCH=OFF)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 LOCKSTEP_TEST_SCALE=4 ctest --output-on-failure -j $(JOBS)

test-asan-clang:
	@$(DEPS) build sanitize
	$(call cmake_build,build-asan-clang,Debug,-DCMAKE_C_COMPILER=clang -DLOCKSTEP_SANITIZE=address$(,)undefined -DLOCKSTEP_BUILD_BENCH=OFF)
	cd build-asan-clang && ASAN_OPTIONS=detect_leaks=1 LOCKSTEP_TEST_SCALE=4 ctest --output-on-failure -j $(JOBS)

test-tsan:
	@$(DEPS) build sanitize
	$(call cmake_build,build-tsan,Debug,-DCMAKE_C_COMPILER=clang -DLOCKSTEP_SANITIZE=thread -DLOCKSTEP_BUILD_BENCH=OFF)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1 LOCKSTEP_TEST_SCALE=10 ctest --output-on-failure -j $(JOBS)

# The portable switch path, forced on x86-64.
test-ucontext:
	@$(DEPS) build
	$(call cmake_build,build-ucontext,RelWithDebInfo,-DLOCKSTEP_FORCE_UCONTEXT=ON -DLOCKSTEP_BUILD_BENCH=OFF)
	cd build-ucontext && ctest --output-on-failure -j $(JOBS)

# memcheck over the release build; valgrind is ~50x slower, hence the
# smaller scale and fewer random cases.  The thread engine is left to TSan.
test-valgrind: build
	@$(DEPS) sanitize
	cd build && LOCKSTEP_TEST_SCALE=100 LOCKSTEP_TEST_CASES=300 ctest --output-on-failure -j $(JOBS) \
	  -T memcheck --overwrite MemoryCheckCommandOptions="--error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect --track-origins=yes --child-silent-after-fork=yes"

# The aarch64 switch, cross-compiled and run under qemu-user.
test-aarch64:
	@$(DEPS) build cross
	$(call cmake_build,build-aarch64,RelWithDebInfo,-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DLOCKSTEP_BUILD_BENCH=OFF)
	cd build-aarch64 && LOCKSTEP_TEST_SCALE=4 ctest --output-on-failure -j $(JOBS)

# The libFuzzer schedule fuzzer (clang, ASan+UBSan).  make test-all runs a
# 60-second smoke; make fuzz FUZZ_TIME=600 runs longer.  New inputs go to
# build-fuzz/corpus, crashes to build-fuzz/artifacts.
FUZZ_TIME ?= 60
fuzz test-fuzz:
	@$(DEPS) build sanitize
	$(call cmake_build,build-fuzz,RelWithDebInfo,-DCMAKE_C_COMPILER=clang -DLOCKSTEP_SANITIZE=address$(,)undefined -DLOCKSTEP_FUZZ=ON -DLOCKSTEP_BUILD_BENCH=OFF -DLOCKSTEP_BUILD_EXAMPLES=OFF)
	mkdir -p build-fuzz/corpus build-fuzz/artifacts
	ASAN_OPTIONS=detect_leaks=1 ./build-fuzz/tests/fuzz_schedule_libfuzzer -max_total_time=$(FUZZ_TIME) \
	  -timeout=10 -print_final_stats=1 -artifact_prefix=build-fuzz/artifacts/ build-fuzz/corpus tests/fuzz_corpus

# pip install . in fresh virtualenvs, with build isolation from PyPI, as a
# user installs: the greenlet engine must be there, and a build without it
# must warn once.  Slow (downloads, two compiles), hence only in test-all.
TEST_ALL_LEGS += test-install
test-install:
	@$(DEPS) python venv
	tests/python_install.sh

bench: build python
	@$(DEPS) bench
	QUICK=$(QUICK) scripts/bench.sh

install: build python
	cmake --install build --prefix $(PREFIX)

clean:
	rm -rf build build-py build-asan build-asan-clang build-tsan build-ucontext build-aarch64 build-bench-ucontext build-fuzz python/build
	rm -f python/lockstep/_lockstep*.so

, := ,
