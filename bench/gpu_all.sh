#!/usr/bin/env bash
# Everything a GPU session runs, in one call, most valuable results first: build sparsekit._C from source,
# the GPU tests, the cuSPARSELt probe, compute-sanitizer, the kernel benchmarks with their predicted floors,
# `sparsekit bench overhead`, `sparsekit bench layer` and `sparsekit bench model`, the reports, and the issues'
# goals checked cell by cell (bench/gpu_goals.py: goals.md).
#
# Meant for the lent H100/H200 as it is: its `python3` (a virtual environment holding torch, triton,
# pytest-xdist, pytest-timeout, transformers; no network). sparsekit is installed into that python3
# (`pip install --no-build-isolation --no-deps --no-index -e .`); no venv is made. PYTHON=... picks another.
#
#   bench/gpu_all.sh            # full run (each step under its own timeout; about 25 minutes in all)
#   bench/gpu_all.sh --quick    # fits one 10-minute device call: an 8-minute deadline for all steps
#
# Every step runs under its own timeout, cut to what is left of the overall deadline (DEADLINE seconds,
# 480 with --quick); a step with less than 20 s left is skipped and recorded so. Everything (logs, JSON
# lines, markdown, PNG) goes to $OUT (default bench/results/gpu); tests.txt there holds the device, the
# versions, the commit, pytest's summary line and the sanitizer summaries. The device tool brings back at
# most 8 files from its $OUT: set TARBALL to pack them all into one, e.g.
#   TARBALL=$OUT/gpu_results.tar.gz OUT=/tmp/gpu bench/gpu_all.sh --quick   (TARBALL first: it expands the tool's $OUT)
# STEPS=name,name,... runs only those steps (the names below: build, info, gpu_tests, cuda_decode_variants,
# int8_decode, cslt_probe, sanitize, bench_overhead, cuda_kernels, triton_kernels, bench_layer, bench_model,
# bitmap_large_m, wide_tiles, bitmap_shapes, report_gpu_layers, report_gpu_model; without --quick also cuda_cslt,
# pytest_benchmark), e.g. a second call on the still-warm machine for what the first one's deadline skipped:
#   STEPS=bench_overhead,bench_layer,report_gpu_layers DEADLINE=200 OUT=/tmp/gpu2 bench/gpu_all.sh --quick
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; fi
OUT=${OUT:-bench/results/gpu}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-$([ "$QUICK" = 1 ] && echo 480 || echo 1800)}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
START=$SECONDS
failed=()
SUMMARY="$OUT/tests.txt"

# step NAME SECONDS CMD...: runs CMD under `timeout` (cut to the time left), its output to $OUT/NAME.log;
# records a failure, never exits
step() {
  local name=$1 secs=$2; shift 2
  if [ -n "${STEPS:-}" ] && [[ ",$STEPS," != *",$name,"* ]]; then return; fi  # not selected
  local left=$((DEADLINE - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped, ${left}s left of the ${DEADLINE}s deadline" | tee -a "$SUMMARY"
    failed+=("$name(skipped)")
    return
  fi
  if [ "$secs" -gt "$left" ]; then secs=$left; fi
  echo "== $name (timeout ${secs}s, log $OUT/$name.log)"
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$secs" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  tail -n 4 "$OUT/$name.log" | sed 's/^/   /'
  echo "   $name: exit $rc after $((SECONDS - t0)) s"
  echo "$name: exit $rc after $((SECONDS - t0)) s" >>"$OUT/steps.txt"
  if [ "$rc" -ne 0 ]; then failed+=("$name($rc)"); fi
}

if [ "$QUICK" = 1 ]; then
  LAYER=(--shapes 14336x4096,4096x14336 --m 1,16,333 --formats 2:4,bsr:64,int8,int8-wo,2:4+int8,bitmap --quick
         --sparsity 0.7,0.9)  # the sparsities the goals name (bench/gpu_goals.py)
  MODEL=(--preset llama-7b --layers 2 --prompt 2048 --quick)
  KERNELS=(--quick)
  T_TEST=200; T_BENCH=90; T_SAN=150
else
  LAYER=(--shapes llama-7b,llama3-8b --m 1,2,4,8,16,32,64,128,512,2048,8192 --formats all --sparsity 0.5,0.7,0.9)
  MODEL=(--preset llama-7b --prompt 2048)
  KERNELS=()
  T_TEST=900; T_BENCH=900; T_SAN=900
fi
GPU_TESTS=(-k "cuda or triton or gpu or cslt or cusparselt or sparse24 or graph or threads")

: >"$OUT/steps.txt"
{
  echo "# sparsekit GPU run"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  "$PY" -c 'import torch, triton, platform
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("torch:", torch.__version__, "cuda:", torch.version.cuda, "triton:", triton.__version__, "python:", platform.python_version())' 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/nvidia-smi: /'
} >"$SUMMARY"
cat "$SUMMARY"

# The arch of the device here (9.0a on an H100/H200): one arch keeps the build short.
ARCH=$("$PY" -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}" + ("a" if c[0] == 9 else ""))' 2>/dev/null || echo 9.0a)
export SPARSEKIT_CUDA_ARCH_LIST=${SPARSEKIT_CUDA_ARCH_LIST:-$ARCH}
# The autotune cache (Triton configurations, and which kernel serves each M bucket: the own 2:4 kernels or
# cuSPARSELt, the compiled int8 kernels or Triton) of the benchmarks goes into $OUT: the routes the device
# measured, recorded with the run. The GPU tests keep theirs apart: measured under 8 workers at once, they would not be the device's.
export SPARSEKIT_CACHE_DIR=${SPARSEKIT_CACHE_DIR:-$OUT/autotune}

step build 300 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
step info 60 "$PY" -m sparsekit info
# First pass with CUDA_LAUNCH_BLOCKING=1, so that an error lands on the test that caused it; a test that
# breaks the CUDA context fails and its xdist worker is replaced (tests/_cuda_health.py).
step gpu_tests "$T_TEST" env CUDA_LAUNCH_BLOCKING=1 SPARSEKIT_CACHE_DIR="$OUT/.test_autotune" "$PY" -m pytest tests -q -p no:cacheprovider -n 8 \
  --timeout 120 -rfE "${GPU_TESTS[@]}"
echo "gpu tests (-n 8, CUDA_LAUNCH_BLOCKING=1): $(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$OUT/gpu_tests.log" 2>/dev/null | tail -n 1)" >>"$SUMMARY"
grep -E "^(FAILED|ERROR) " "$OUT/gpu_tests.log" 2>/dev/null | head -n 60 >>"$SUMMARY"
# The designs of the CUDA decode kernels (SPARSEKIT_CUDA_DECODE: bitmap v2 batched / v1; 2:4 v1 FMAs, v2 tensor
# cores from M = 2, v3 tensor cores at every M; BSR v2 tensor cores / v1 simple) on the GPU-speed issue's shapes, in one process: the first
# timings of bitmap v2, of the bitmap column list (variant 4, what a bitmap layer runs up to 35 % density) and of the
# 2:4 tensor-core kernel (csrc/cuda/README.md); --refill-ab: 2:4 also under SPARSEKIT_CUDA_REFILL=0 (the order
# before the weight registers were refilled while consumed), as the int8 step below does (its *_norefill kernels).
step cuda_decode_variants "$T_BENCH" "$PY" bench/cuda_gpu.py --formats 2:4,bitmap,bsr --bitmap-density 0.1,0.3,0.5 --bsr 64:0.1 \
  --m 1,3,7,16 --shapes 14336x4096,4096x14336,5120x13824 --dtype bfloat16 --decode-variants v2,v1,v3 --refill-ab \
  --name cuda_decode_variants --out "$OUT"
# The int8 tensor-core decode kernels (weight-only and W8A8; csrc/cuda/mma_decode.cuh, never run on a GPU
# before) against the Triton launchers and dense in one process, at the GPU-speed issue's shapes.
step int8_decode "$T_BENCH" "$PY" bench/triton_gpu.py --kernels dense,w8a16,w8a16_norefill,w8a16_triton,w8a8_linear,w8a8_linear_norefill,w8a8,w8a8_triton \
  --dtype bf16 --shapes 14336x4096,4096x14336,5120x13824 --m 1,3,7,16 --name int8_decode --out "$OUT"
step cslt_probe 90 "$PY" bench/cslt_probe.py --out "$OUT"
echo "cslt probe: $(tail -n 1 "$OUT/cslt_probe.log" 2>/dev/null)" >>"$SUMMARY"
step sanitize "$T_SAN" env PYTHON="$PY" OUT="$OUT" QUICK="$QUICK" bench/cuda_sanitize.sh
grep -h -E "ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY|INITCHECK SUMMARY" "$OUT"/sanitize_*.log 2>/dev/null \
  | sed 's/^/sanitizer: /' >>"$SUMMARY"
# Host time per call of every format and eager / graph speedups at M = 1 on 14336x4096 (the host-time issue)
step bench_overhead 120 "$PY" -m sparsekit bench overhead --quick --no-progress --json "$OUT/gpu_overhead.jsonl"
step cuda_kernels "$T_BENCH" "$PY" bench/cuda_gpu.py "${KERNELS[@]}" --out "$OUT"
step triton_kernels "$T_BENCH" "$PY" bench/triton_gpu.py "${KERNELS[@]}" --out "$OUT"
step bench_layer "$T_BENCH" "$PY" -m sparsekit bench layer "${LAYER[@]}" --no-progress --json "$OUT/gpu_layers.jsonl"
step bench_model "$T_BENCH" "$PY" -m sparsekit bench model "${MODEL[@]}" --no-progress --json "$OUT/gpu_model.jsonl"
# Triton's bitmap_mm above the decode sizes, each design held (TILE, EXPAND, the bit slices that measured 0.04-0.09x
# dense at M = 48-333) against dense and the tuned choice: which design serves which M (sparsekit/triton/bitmap.py)
step bitmap_large_m 120 "$PY" bench/triton_gpu.py --kernels dense,bitmap,bitmap_tile,bitmap_expand,bitmap_slices \
  --dtype bf16 --shapes 14336x4096,4096x14336 --m 48,333,2048 --bitmap-sparsity 0.5,0.7 --name bitmap_large_m --out "$OUT"
# The tensor-core decode kernels above M = 16 in tiles of 32 rows against tiles of 16 (SPARSEKIT_CUDA_WIDE_TILE=0),
# beside the routed ops, Triton and dense (csrc/cuda/README.md: the wide tile converts the weight once per 32 rows)
step wide_tiles 120 "$PY" bench/triton_gpu.py \
  --kernels dense,w8a16,w8a16_triton,w8a16_cuda,w8a16_cuda_16,w8a8_gemm,w8a8_cuda,w8a8_cuda_16 \
  --dtype bf16 --shapes 14336x4096,4096x14336 --m 17,32,48,64,128 --name wide_tiles --out "$OUT"
# The batched bitmap kernel forced to each of its batch shapes (SPARSEKIT_CUDA_BITMAP_SHAPE) at densities around
# the thresholds between them (wide <= 10.6 %, wide-dense <= 31.9 % in bf16: a model of instruction counts,
# csrc/cuda/README.md), so that the thresholds can be set from measurements (late: the steps above matter more);
# its records also time the column list at each density: where it stops paying (SPARSEKIT_BITMAP_COLUMNS, 0.35).
step bitmap_shapes 60 "$PY" bench/cuda_gpu.py --formats bitmap --bitmap-density 0.05,0.1,0.15,0.3,0.4 --m 1,16 \
  --shapes 14336x4096 --dtype bfloat16 --decode-variants v2 --bitmap-shapes wide,wide-dense,sparse,dense \
  --name cuda_bitmap_shapes --out "$OUT"
if [ "$QUICK" = 0 ]; then
  step cuda_cslt "$T_BENCH" "$PY" bench/cuda_gpu.py --cslt --name cuda_cslt --out "$OUT"
  step pytest_benchmark "$T_BENCH" "$PY" -m pytest bench/test_bench_kernels.py -q -p no:cacheprovider -k cuda \
    --benchmark-only --benchmark-json "$OUT/pytest_benchmark.json"
fi
for f in gpu_layers gpu_model; do
  if [ -s "$OUT/$f.jsonl" ]; then step "report_$f" 60 "$PY" -m sparsekit bench report --json "$OUT/$f.jsonl" --out "$OUT"; fi
done

# Every goal of the GPU-speed and host-time issues, cell by cell, from the JSON lines above (CPU only, a second:
# outside the deadline, so that it runs whatever the steps before left)
timeout 60 "$PY" bench/gpu_goals.py --layer "$OUT/gpu_layers.jsonl" --model "$OUT/gpu_model.jsonl" \
  --overhead "$OUT/gpu_overhead.jsonl" --md "$OUT/goals.md" --json "$OUT/goals.jsonl" >"$OUT/goals.log" 2>&1
echo "goals: $(tail -n 1 "$OUT/goals.log" 2>/dev/null)" >>"$SUMMARY"
# The refill A/B (SPARSEKIT_CUDA_REFILL: the decode kernels' weight registers refilled while consumed, or the order
# before), cell by cell from the two steps that time both (CPU only, outside the deadline, like the goals)
CDV=$(ls "$OUT"/cuda_decode_variants*.jsonl 2>/dev/null | head -n 1)  # (bench/cuda_gpu.py adds the device's name)
timeout 60 "$PY" bench/refill_ab.py --cuda "${CDV:-none}" --int8 "$OUT/int8_decode.jsonl" \
  --md "$OUT/refill_ab.md" >"$OUT/refill_ab.log" 2>&1
echo "refill A/B: $(tail -n 1 "$OUT/refill_ab.log" 2>/dev/null)" >>"$SUMMARY"
# which kernel the benchmarks' calls measured faster, per shape and M bucket (own 2:4 kernels or cuSPARSELt;
# compiled int8 kernels or Triton)
timeout 60 "$PY" bench/routes.py "$SPARSEKIT_CACHE_DIR" --md "$OUT/routes.md" >"$OUT/routes.log" 2>&1
echo "routes: $(tail -n 1 "$OUT/routes.log" 2>/dev/null)" >>"$SUMMARY"
# the per-goal summary table on stdout too: the device tool returns the output's tail even when no file comes back
sed -n '/^| goal | format | cells met/,/^$/p' "$OUT/goals.md" 2>/dev/null

echo "steps: $(tr '\n' ';' <"$OUT/steps.txt")" >>"$SUMMARY"
echo "== results in $OUT ($((SECONDS - START)) s)"
ls -l "$OUT"
if [ -n "${TARBALL:-}" ]; then tar czf "$TARBALL" -C "$OUT" --exclude "$(basename "$TARBALL")" . && echo "packed into $TARBALL"; fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
