# The two set-up commands of the README: `make demo` and `make test`. Both create .venv when absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Triton runs on the CPU interpreter unless a GPU is present.
export TRITON_INTERPRET ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 0 || echo 1)
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv build lint format gpu-check test test-fast demo bench ctest clean

$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	# The extension is compiled once, in place, by `make build` (not twice: here and there).
	HELO_FAST_NO_EXTENSION=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

venv: $(STAMP)

# Rebuilds the extension in place when a C++/CUDA source changed (ninja; a no-op otherwise).
build: $(STAMP)
	flock /tmp/helo_fast_build.lock $(PY) setup.py -q build_ext --inplace

# ruff with the rules of pyproject.toml's [tool.ruff] (pycodestyle incl. lines <= 120 chars, pyflakes), and its formatter
# ([tool.ruff.format]: the layout of every .py file is ruff's; `.venv/bin/ruff format .` applies it); about a second.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Apply the layouts lint and tests/repo/test_cpp_format.py check: ruff format for .py, clang-format 14 for csrc/.
format: $(STAMP)
	$(PY) -m ruff format .
	find csrc \( -name '*.h' -o -name '*.cpp' -o -name '*.cuh' -o -name '*.cu' \) -print0 | xargs -0 clang-format-14 -i

# Serially below 4 cores, else in parallel on the machine's cores (pytest-xdist; tests that must not overlap share an
# xdist_group). Measured on 2 cores, quiet, the whole suite: serial 1000 s, 2 workers 1086 s (many tests already use
# both cores: CMake/nvcc builds, subprocesses, 2-thread kernels).
PYTEST_WORKERS ?= $(shell [ $$(nproc) -ge 4 ] && echo auto || echo 0)
# Compiles every Triton kernel configuration and CUDA kernel for Hopper (no GPU needed) and fails on compile errors,
# spills, shared memory over the limit and TF32 dots (docs/gpu.md). Cached under build/gpu-audit: a cold run takes
# about 5-9 minutes on 2 cores, a run with unchanged kernels seconds.
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_audit $(GPU_CHECK_ARGS)

# lint first: a style error fails in seconds, before the build and the audit.
test: lint build gpu-check
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS) tests

# Skips the slow and torch.compile tests (for a quick local loop; CI runs `make test`).
test-fast: lint build
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow and not compile" $(PYTEST_ARGS) tests

demo: build
	$(PY) -m helo_fast demo

bench: build
	$(PY) -m pytest -q benchmarks --benchmark-warmup=on --benchmark-warmup-iterations=2 --benchmark-json=benchmarks/results/latest.json $(BENCH_ARGS)
	$(PY) -m benchmarks.report benchmarks/results/latest.json --update-readme README.md

# C++ users: the same sources built against libtorch with CMake, plus the C++ unit test.
ctest:
	cmake -S . -B build/cmake -G Ninja -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake -j2
	cd build/cmake && ctest --output-on-failure

clean:
	rm -rf build helo_fast/_C*.so .pytest_cache .benchmarks .ruff_cache
