#!/usr/bin/env bash
# One session on a machine with a CUDA GPU, from the source tree, with the machine's own python3 (torch with
# CUDA, Triton, nvcc): build the extension with its CUDA kernels, then run the requested phases.
#   build          compile helo_fast._C for this GPU (TORCH_CUDA_ARCH_LIST defaults to 9.0, Hopper)
#   test           the CUDA- and Triton-marked tests (real Triton kernels, TRITON_INTERPRET=0; one warp count
#                  per kernel, HELO_TRITON_NUM_WARPS=4, since autotuning every test shape costs minutes)
#   test-rest      the rest of the test suite (not cuda, not triton, not slow)
#   bench          the benchmark suites on CUDA, one JSON each for benchmarks/report.py (BENCH_SUITES picks
#                  among sinkhorn, gromov_wasserstein, model, lcd_attention, seeded_dropout; BENCH_K, or
#                  BENCH_K_<suite>, selects cases with -k;
#                  BENCH_LIMIT_<suite> sets a suite's time limit)
#   bench-compile  the same with the torch.compile providers (HELO_BENCH_COMPILE=1)
# Logs and benchmark JSON go to $OUT (default build/gpu-session). Each phase has a time limit (seconds, e.g.
# TEST_LIMIT=240), and none runs past DEADLINE seconds after the start (default 560), so the whole session
# ends inside a lease. Needs pytest-xdist and pytest-timeout (on the lent machines' image). POT, a test and
# benchmark peer, is installed from wheels in .whl/ when present (machines without a package registry).
# Usage: benchmarks/gpu_session.sh build test bench
set -u
OUT=${OUT:-build/gpu-session}
mkdir -p "$OUT"
PY=${PY:-python3}
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 HELO_BENCH_THREADS=${HELO_BENCH_THREADS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/helo-site .whl/*.whl \
    && export PYTHONPATH=/tmp/helo-site${PYTHONPATH:+:$PYTHONPATH}
fi
# helo_fast.kernels is kernels/ (package_dir in setup.py); from the source tree a link stands in for the install.
[ -e helo_fast/kernels ] || ln -s ../kernels helo_fast/kernels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

phase() {  # phase NAME LIMIT COMMAND...: run with a time limit, log to $OUT/NAME.log, print its tail
  local name=$1 limit=$2; shift 2
  local left=$(( ${DEADLINE:-560} - SECONDS ))
  (( left < limit )) && limit=$left
  (( limit > 10 )) || { echo "=== $name: skipped, no time left"; return 1; }
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start))s"
  tail -n "${TAIL:-25}" "$OUT/$name.log"
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
$PY -c "import torch, triton; p = torch.cuda.get_device_properties(0); print('torch', torch.__version__, 'triton', triton.__version__, p.name, p.multi_processor_count, 'SMs, L2', p.L2_cache_size >> 20, 'MiB')"
for step in "$@"; do
  case $step in
    build) phase build "${BUILD_LIMIT:-420}" $PY setup.py build_ext --inplace \
             && $PY -c "from helo_fast import _ext; print('cpp', _ext.has_cpp(), 'cuda kernels', _ext.has_cuda_kernels())" ;;
    test) HELO_TRITON_NUM_WARPS=${HELO_TRITON_NUM_WARPS:-4} phase test "${TEST_LIMIT:-300}" $PY -m pytest \
             -p no:cacheprovider -n "${TEST_WORKERS:-12}" -v -rfE --durations=10 --timeout="${TEST_TIMEOUT:-60}" \
             -m "cuda or triton" tests ;;
    test-rest) phase test-rest "${TEST_LIMIT:-300}" $PY -m pytest -q -p no:cacheprovider -n 8 \
             -m "not cuda and not triton and not slow" tests ;;
    bench|bench-compile)  # one pytest run (and JSON) per suite, so a time-out loses one suite, not all
      compile=$([ "$step" = bench-compile ] && echo 1 || echo 0)
      for suite in ${BENCH_SUITES:-sinkhorn gromov_wasserstein model lcd_attention}; do
        k_var=BENCH_K_$suite limit_var=BENCH_LIMIT_$suite
        HELO_BENCH_COMPILE=$compile phase "$step-$suite" "${!limit_var:-${BENCH_LIMIT:-300}}" $PY -m pytest -v \
          -p no:cacheprovider "benchmarks/test_bench_$suite.py" -k "${!k_var:-${BENCH_K:-}}" --durations=8 \
          --timeout="${BENCH_TIMEOUT:-60}" --benchmark-warmup=on --benchmark-warmup-iterations=2 \
          --benchmark-min-rounds=3 --benchmark-max-time="${BENCH_MAX_TIME:-0.25}" \
          --benchmark-json="$OUT/$step-$suite.json"
      done ;;
    *) echo "unknown phase $step"; exit 2 ;;
  esac
done
