#!/usr/bin/env bash
# Runs the CUDA and Triton kernel tests (tests/test_cuda_kernels.py, the GPU tests of tests/test_triton.py
# and tests/test_cusparselt.py) under compute-sanitizer's memcheck, racecheck, initcheck and synccheck,
# on a machine with a GPU and the extension built there
# (pip install --no-build-isolation -e . ; see /work/shared/BENCHMARKING.md).
#
#   bench/cuda_sanitize.sh                 # all four tools, a reduced selection of the tests
#   QUICK=1 bench/cuda_sanitize.sh         # the decode kernels only, within gpu_all.sh --quick's budget
#   bench/cuda_sanitize.sh -k sparse24     # extra pytest arguments select tests
#   TOOLS="memcheck" FULL=1 bench/cuda_sanitize.sh   # one tool, every test (slow: the tools cost 10-100x)
#
# PYTORCH_NO_CUDA_MEMORY_CACHING=1 makes every tensor its own cudaMalloc, so that memcheck sees the
# exact bounds of each buffer (with the caching allocator an overrun lands in a neighbour's memory) and
# initcheck sees memory nothing wrote. Logs go to bench/results/sanitize_<tool>.log; the script exits
# non-zero if any tool reports an error. SPARSEKIT_UNDER_SANITIZER=1 tells the tests that a tool is
# attached (the profiler cannot subscribe then: the kernel-identity test skips its profiler half).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SAN=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
TOOLS=${TOOLS:-memcheck racecheck initcheck synccheck}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "cuda_sanitize.sh: no CUDA device visible to $PY" >&2
  exit 2
fi
if [ ! -x "$SAN" ]; then
  echo "cuda_sanitize.sh: compute-sanitizer not found (set COMPUTE_SANITIZER)" >&2
  exit 2
fi

# Under the tools every launch is slow: by default one dtype per kernel and the shapes that cover each
# path (vector / general, split-K, M tiles, multi-tile rows); FULL=1 runs everything.
# Every kernel in every dtype, with the smallest shapes that still take each path.
FILES=(tests/test_cuda_kernels.py tests/test_triton.py tests/test_cusparselt.py)
SELECT=()
if [ -z "${FULL:-}" ] && [ "$#" -eq 0 ]; then
  if [ -n "${QUICK:-}" ] && [ "${QUICK}" != 0 ]; then
    FILES=(tests/test_cuda_kernels.py)
    SELECT=(-k "(test_sparse24_mm or test_bitmap_mm or test_bsr_mm) and ([1- or split) and not float32")
  else
    SELECT=(-k "not interp and (split or misaligned or empty or pack or run or graph or gpu_ or cslt or edge or [1- or [16-)")
  fi
fi

export PYTORCH_NO_CUDA_MEMORY_CACHING=1
export CUDA_LAUNCH_BLOCKING=1
export SPARSEKIT_UNDER_SANITIZER=1
status=0
for tool in $TOOLS; do
  extra=()
  case "$tool" in
    memcheck) extra=(--leak-check no) ;;            # torch keeps handles for the process's life
    racecheck) extra=(--racecheck-report all) ;;
    initcheck) extra=(--track-unused-memory no) ;;
    synccheck) extra=() ;;
  esac
  log="$OUT/sanitize_${tool}.log"
  echo "== compute-sanitizer --tool $tool (log: $log)"
  "$SAN" --tool "$tool" "${extra[@]}" --error-exitcode 97 --print-limit 50 \
    "$PY" -m pytest -q -p no:cacheprovider "${FILES[@]}" "${SELECT[@]}" "$@" >"$log" 2>&1
  rc=$?
  tail -n 3 "$log"
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY|INITCHECK SUMMARY" "$log" | tail -n 1)
  echo "   exit $rc; ${summary:-no summary line}"
  if [ "$rc" -ne 0 ]; then status=1; fi
done
exit $status
