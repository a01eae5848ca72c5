#!/usr/bin/env bash
# Everything a GPU session runs, in one call: build sparsekit._C from source, the GPU tests, compute-sanitizer,
# the Triton / CUDA kernel benchmarks, `sparsekit bench layer` and `sparsekit bench model`, and the reports.
# Meant for the lent H100/H200 (torch 2.11 cu13.0 + triton 3.6 + transformers preinstalled in the system
# python3, no network): the venv sees them through --system-site-packages and installs nothing new.
#
#   bench/gpu_all.sh            # full run (each step under its own timeout; about 25 minutes in all)
#   bench/gpu_all.sh --quick    # fits one 10-minute device call: shorter sweeps, 2-layer model
#
# Everything (logs, JSON lines, markdown, PNG) goes to $OUT (default bench/results/gpu). A step that fails or
# times out is logged and the next one runs; the exit status is non-zero if any step failed. The device tool
# brings back at most 8 files from its $OUT: there, set TARBALL to pack them all into one, e.g.
#   TARBALL=$OUT/gpu_results.tar.gz OUT=/tmp/gpu bench/gpu_all.sh --quick   (TARBALL first: it expands the tool's $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; fi
OUT=${OUT:-bench/results/gpu}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
VENV=${VENV:-/tmp/sparsekit-venv}
export PYTHONUNBUFFERED=1 SPARSEKIT_CUDA_ARCH_LIST=${SPARSEKIT_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-16}
failed=()

# step NAME SECONDS CMD...: runs CMD under `timeout`, its output to $OUT/NAME.log; records a failure, never exits
step() {
  local name=$1 secs=$2; shift 2
  echo "== $name (timeout ${secs}s, log $OUT/$name.log)"
  local t0=$SECONDS rc=0
  timeout --kill-after=20 "$secs" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  tail -n 4 "$OUT/$name.log" | sed 's/^/   /'
  echo "   $name: exit $rc after $((SECONDS - t0)) s"
  if [ "$rc" -ne 0 ]; then failed+=("$name($rc)"); fi
}

if [ "$QUICK" = 1 ]; then
  LAYER=(--shapes 4096x4096,11008x4096 --m 1,16,2048 --formats 2:4,bsr:64,int8,int8-wo,2:4+int8,csr --quick)
  MODEL=(--preset llama-7b --layers 2 --prompt 2048 --quick)
  KERNELS=(--quick)
  TESTS=(-k "cuda or triton or gpu" -x)
  T_TEST=240; T_BENCH=150
else
  LAYER=(--shapes llama-7b,llama3-8b --m 1,2,4,8,16,32,64,128,512,2048,8192 --formats all --sparsity 0.5,0.7,0.9)
  MODEL=(--preset llama-7b --prompt 2048)
  KERNELS=()
  TESTS=(-k "cuda or triton or gpu")
  T_TEST=900; T_BENCH=900
fi

python3 -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
step env 60 bash -c "nvidia-smi; $PY -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())'"
step build 600 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
step info 60 "$PY" -m sparsekit info
step gpu_tests "$T_TEST" "$PY" -m pytest tests -q -p no:cacheprovider "${TESTS[@]}"
if [ "$QUICK" = 0 ]; then
  step sanitize 900 env PYTHON="$PY" bench/cuda_sanitize.sh
  cp bench/results/sanitize_*.log "$OUT"/ 2>/dev/null || true
fi
step cuda_kernels "$T_BENCH" "$PY" bench/cuda_gpu.py "${KERNELS[@]}" --out "$OUT"
if [ "$QUICK" = 0 ]; then
  step cuda_cslt "$T_BENCH" "$PY" bench/cuda_gpu.py --cslt --name cuda_cslt --out "$OUT"
fi
step triton_kernels "$T_BENCH" "$PY" bench/triton_gpu.py "${KERNELS[@]}" --out "$OUT"
step bench_layer "$T_BENCH" "$PY" -m sparsekit bench layer "${LAYER[@]}" --no-progress --json "$OUT/gpu_layers.jsonl"
step bench_model "$T_BENCH" "$PY" -m sparsekit bench model "${MODEL[@]}" --no-progress --json "$OUT/gpu_model.jsonl"
step pytest_benchmark "$T_BENCH" "$PY" -m pytest bench/test_bench_kernels.py -q -p no:cacheprovider -k cuda \
  --benchmark-only --benchmark-json "$OUT/pytest_benchmark.json"
for f in gpu_layers gpu_model; do
  if [ -s "$OUT/$f.jsonl" ]; then step "report_$f" 120 "$PY" -m sparsekit bench report --json "$OUT/$f.jsonl" --out "$OUT"; fi
done

echo "== results in $OUT"
ls -l "$OUT"
if [ -n "${TARBALL:-}" ]; then tar czf "$TARBALL" -C "$OUT" --exclude "$(basename "$TARBALL")" . && echo "packed into $TARBALL"; fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
