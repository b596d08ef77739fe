#!/usr/bin/env bash
# One session on a machine with a CUDA GPU, from the source tree, with the machine's own python3 (torch with
# CUDA, Triton, nvcc): build the extension with its CUDA kernels, then run the requested phases, each under a time
# limit, and end with a compact summary (pass / fail per test file with the failing ids, the median of every
# benchmark; at most SUMMARY_LIMIT=12000 characters). Full logs, JUnit XML and benchmark JSON go to $OUT.
#   build          compile helo_fast._C for this GPU (TORCH_CUDA_ARCH_LIST defaults to 9.0, Hopper); skipped when
#                  the extension is newer than every C++/CUDA source (a cached build carried along)
#   test           the CUDA- and Triton-marked tests (real Triton kernels, TRITON_INTERPRET=0; one warp count
#                  per launch, HELO_TRITON_NUM_WARPS=4,16: the pruning keeps 4 where a tile fits and 16 where it
#                  needs more (kernels/triton_utils.prune_num_warps), since autotuning every test shape costs minutes)
#   test-rest      the rest of the test suite (not cuda, not triton, not slow)
#   bench          the benchmark suites on CUDA, one JSON each (BENCH_SUITES picks among sinkhorn,
#                  gromov_wasserstein, model, lcd_attention, seeded_dropout; BENCH_K or BENCH_K_<suite> selects
#                  cases with -k; BENCH_LIMIT_<suite> sets a suite's time limit)
#   bench-compile  the same with the torch.compile providers (HELO_BENCH_COMPILE=1)
# No phase runs past DEADLINE seconds after the start (default 480: 8 minutes), so the session ends inside a
# 15-minute lease with room for the machine's start. Needs pytest-xdist and pytest-timeout (on the lent machines'
# image). POT, a test and benchmark peer, is installed from wheels in .whl/ when present.
#
# --dry-run (first argument) runs the whole script on a CPU-only machine, as CI does (tests/repo/test_gpu_session.py):
# no nvidia-smi, no build, the interpreter for Triton, the same pytest commands
# narrowed by DRY_RUN_K to a handful of tests and benchmarks, and tiny limits where the caller sets them.
# Usage: benchmarks/gpu_session.sh [--dry-run] build test bench
set -u
DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
OUT=${OUT:-build/gpu-session}
mkdir -p "$OUT"
: >"$OUT/phases.tsv"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 HELO_BENCH_THREADS=${HELO_BENCH_THREADS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
K_EXTRA=()
if (( DRY_RUN )); then
  export TRITON_INTERPRET=1 HELO_BENCH_THREADS=1
  DRY_RUN_K=${DRY_RUN_K:-launch_case_matches_reference and 5x11-grad-float32 or reference-ffn_hidden-128-fwd and not bwd}
  K_EXTRA=(-k "$DRY_RUN_K")
else
  export TRITON_INTERPRET=0
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/helo-site .whl/*.whl \
    && export PYTHONPATH=/tmp/helo-site${PYTHONPATH:+:$PYTHONPATH}
fi
# helo_fast.kernels is kernels/ (package_dir in setup.py); from the source tree a link stands in for the install.
$PY -c "import helo_fast.kernels" 2>/dev/null || [ -e helo_fast/kernels ] || ln -s ../kernels helo_fast/kernels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

phase() {  # phase NAME LIMIT COMMAND...: run with a time limit, log to $OUT/NAME.log, record (name, rc, seconds)
  local name=$1 limit=$2; shift 2
  local left=$(( ${DEADLINE:-480} - SECONDS ))
  (( left < limit )) && limit=$left
  if (( limit < ${MIN_PHASE:-10} )); then
    echo "=== $name: skipped, no time left"
    printf '%s\t%s\t%s\n' "$name" skipped 0 >>"$OUT/phases.tsv"
    return 1
  fi
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start))s (log: $OUT/$name.log)"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$OUT/phases.tsv"
  return $rc
}

extension_is_fresh() {  # the built extension is newer than every C++/CUDA source and setup.py
  local so
  so=$(ls helo_fast/_C*.so 2>/dev/null | head -n 1)
  [ -n "$so" ] && [ -z "$(find csrc setup.py -newer "$so" \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' \
    -o -name '*.cuh' -o -name 'setup.py' \) 2>/dev/null | head -n 1)" ]
}

if (( DRY_RUN )); then
  echo "dry run: no GPU; Triton under the interpreter"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
  $PY -c "import torch, triton; p = torch.cuda.get_device_properties(0); print('torch', torch.__version__, 'triton', triton.__version__, p.name, p.multi_processor_count, 'SMs, L2', p.L2_cache_size >> 20, 'MiB')"
fi
TEST_MARK="cuda or triton"
# Per-test time limits where pytest-timeout is installed (the lent machines' image has it; a dry run may not).
T_TEST=() T_BENCH=()
if $PY -c "import pytest_timeout" 2>/dev/null; then
  T_TEST=(--timeout="${TEST_TIMEOUT:-60}") T_BENCH=(--timeout="${BENCH_TIMEOUT:-60}")
fi
for step in "$@"; do
  case $step in
    build)
      if extension_is_fresh; then
        echo "=== build: extension newer than every source, kept"
        printf '%s\t%s\t%s\n' build 0 0 >>"$OUT/phases.tsv"
      elif (( DRY_RUN )); then
        echo "=== build: dry run, the extension is not rebuilt"
        printf '%s\t%s\t%s\n' build skipped 0 >>"$OUT/phases.tsv"
      else
        phase build "${BUILD_LIMIT:-420}" $PY setup.py build_ext --inplace \
          && $PY -c "from helo_fast import _ext; print('cpp', _ext.has_cpp(), 'cuda kernels', _ext.has_cuda_kernels())"
      fi ;;
    test) HELO_TRITON_NUM_WARPS=${HELO_TRITON_NUM_WARPS:-4,16} phase test "${TEST_LIMIT:-240}" $PY -m pytest \
             -p no:cacheprovider -n "${TEST_WORKERS:-12}" -q -rfE --durations=10 "${T_TEST[@]}" \
             --junitxml="$OUT/test.xml" -m "$TEST_MARK" "${K_EXTRA[@]}" tests ;;
    test-rest) phase test-rest "${TEST_LIMIT:-240}" $PY -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-8}" \
             --junitxml="$OUT/test-rest.xml" -m "not cuda and not triton and not slow" "${K_EXTRA[@]}" tests ;;
    bench|bench-compile)  # one pytest run (and JSON) per suite, so a time-out loses one suite, not all
      compile=$([ "$step" = bench-compile ] && echo 1 || echo 0)
      for suite in ${BENCH_SUITES:-sinkhorn gromov_wasserstein model lcd_attention seeded_dropout}; do
        k_var=BENCH_K_$suite limit_var=BENCH_LIMIT_$suite
        k=${!k_var:-${BENCH_K:-}}
        (( DRY_RUN )) && k=$DRY_RUN_K
        HELO_BENCH_COMPILE=$compile phase "$step-$suite" "${!limit_var:-${BENCH_LIMIT:-60}}" $PY -m pytest -q \
          -p no:cacheprovider "benchmarks/test_bench_$suite.py" -k "$k" "${T_BENCH[@]}" \
          --benchmark-warmup=on --benchmark-warmup-iterations=2 --benchmark-min-rounds=3 \
          --benchmark-max-time="${BENCH_MAX_TIME:-0.25}" --benchmark-json="$OUT/$step-$suite.json"
      done ;;
    *) echo "unknown phase $step"; exit 2 ;;
  esac
done
$PY -m benchmarks.gpu_session_summary "$OUT" --limit "${SUMMARY_LIMIT:-12000}"
