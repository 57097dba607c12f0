#!/usr/bin/env bash
# The GPU check: one call on the GPU machine (H100/H200, CUDA 13, Python 3.12, no network)
# installs the carried wheels, records the environment, runs the GPU tests, the kernel
# micro-benchmark and the model throughput benchmark, and writes every log and result
# into $OUT, then summary.json / summary.md (step, status, seconds, test counts).
#
#   make gpu-wheels                     # once, on a machine with network: .gpu-wheels/ (~7 MiB)
#   OUT=/some/dir bash scripts/gpu_check.sh   # on the GPU machine, with .gpu-wheels carried
#   make gpu-check DRY_RUN=1            # on a CPU machine: the same steps, CUDA ones skipped
#   SKIP="kernel-bench throughput" ...    # leave out steps already measured
#
# Every step runs under `timeout`, its output in $OUT/<step>.log; a failing step does not
# stop the next, and all steps end within BUDGET_S (480 s: the call stays under 9 minutes).
# With DRY_RUN=1 (or no CUDA) the CUDA steps print "skipped: no CUDA", the benchmarks run
# their --smoke variants on CPU, and the wheels are also installed and imported under
# Python 3.12 when one exists here (the GPU image's interpreter). See docs/kernels.md.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-check-out}
PYTHON=${PYTHON:-python3}
PYTHON312=${PYTHON312:-python3.12}
WHEELS=${WHEELS:-$ROOT/.gpu-wheels}
DRY_RUN=${DRY_RUN:-0}
if [ "$DRY_RUN" = 1 ]; then BUDGET_S=${BUDGET_S:-1200}; else BUDGET_S=${BUDGET_S:-480}; fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tokcomp-gpu-check.XXXXXX")  # site folder of the installed wheels + steps file
SITE=$WORK/site
STEPS=$WORK/steps.tsv
mkdir -p "$OUT" "$SITE"
: >"$STEPS"
export PYTHONPATH="$ROOT:$SITE" TOKCOMP_QUIET=1 HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
STARTED=$(date +%s)

if [ "$DRY_RUN" != 1 ] && "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  CUDA=1
else
  CUDA=0
fi
echo "tokcomp GPU check: python=$PYTHON dry_run=$DRY_RUN cuda=$CUDA budget=${BUDGET_S}s out=$OUT"

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STEPS"; }

# step NAME CAP_SECONDS cuda|any COMMAND...
step() {
  local name=$1 cap=$2 needs=$3
  shift 3
  local left=$((BUDGET_S - ($(date +%s) - STARTED)))
  if [[ " ${SKIP:-} " == *" $name "* ]]; then  # SKIP="kernel-bench throughput": steps already measured
    echo "== $name: skipped: in SKIP"
    record "$name" skipped "in SKIP" 0
    return
  fi
  if [ "$needs" = cuda ] && [ "$CUDA" != 1 ]; then
    echo "== $name: skipped: no CUDA"
    record "$name" skipped "no CUDA" 0
    return
  fi
  if [ "$left" -lt 15 ]; then
    echo "== $name: skipped: out of time"
    record "$name" skipped "out of time (budget ${BUDGET_S}s)" 0
    return
  fi
  local limit=$((cap < left ? cap : left))
  echo "== $name (limit ${limit}s)"
  local began
  began=$(date +%s.%N)
  timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local seconds
  seconds=$(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) record "$name" ok "exit 0" "$seconds" ;;
    124 | 137) record "$name" timeout "killed after ${limit}s" "$seconds" ;;
    *) record "$name" failed "exit $rc" "$seconds" ;;
  esac
  tail -n 3 "$OUT/$name.log" | sed 's/^/   /'
}

GPU_TESTS=(
  tests/test_gpu_kernels.py                      # kernels vs CPU reference (fp32/fp16/bf16), determinism, opcheck, timm
  tests/test_plugins.py                          # custom ops, kernels on CUDA, torch.compile with the kernels, PTX
  tests/test_gpu_export.py                       # TF32 off in validation, AOTInductor copy, TensorRT precision
  tests/test_gpu_tensorrt_plugins.py             # the plugin module against the tensorrt.plugin stand-in
  tests/test_export.py::test_aoti_cuda_package   # AOTInductor CUDA package vs PyTorch
)

step wheels 90 any "$PYTHON" scripts/gpu_check.py wheels-install --wheels "$WHEELS" --target "$SITE"
if [ "$DRY_RUN" = 1 ]; then
  step wheels-py312 120 any "$PYTHON" scripts/gpu_check.py wheels-verify --wheels "$WHEELS" --python "$PYTHON312"
fi
step environment 60 any "$PYTHON" scripts/gpu_check.py environment --out "$OUT/environment.json"
# Long prompts first (an open issue's measurement): time to first token, decoding speed and KV-cache bytes
# of Gemma-3 shapes (random weights: nothing to download) at 2k / 4k / 8k tokens, original vs the passes.
PREFILL_PASSES=(
  --pass '{"type": "fastv", "keep": 0.25, "layer": 6, "sink": 4, "question": 32}'
  --pass '{"type": "pyramid_drop", "layers": [6, 12], "target_keep": 0.25, "sink": 4, "question": 32}'
  --pass '{"type": "snapkv", "keep": 0.25, "sink": 4, "question": 32}'
)
# gemma-3-270m's shapes past 8k tokens too: on a GPU a model this small is bound by kernel launches at
# short prompts, so the lengths show where dropping tokens starts to pay.
step decoder-prefill 150 cuda "$PYTHON" benchmarks/decoder_prefill_speed.py --model random:gemma-3-270m \
  --device cuda --dtype bfloat16 --lengths 2048,4096,8192,16384,32768 --repeats 3 --new-tokens 8 \
  "${PREFILL_PASSES[@]}" --output "$OUT/decoder_prefill_speed_gpu"
step gpu-tests 120 any "$PYTHON" -m pytest -q -p no:cacheprovider "${GPU_TESTS[@]}"
step kernel-bench 90 cuda "$PYTHON" benchmarks/kernel_micro.py --dtype float16 --out "$OUT/kernel_micro"
step throughput 300 cuda "$PYTHON" benchmarks/gpu_throughput.py --dtype float16 --batch-sizes 1,64,256 \
  --out "$OUT/gpu_throughput"
if [ "$CUDA" != 1 ]; then  # the benchmarks' code paths, on CPU (their timings mean nothing)
  step kernel-bench-smoke 180 any "$PYTHON" benchmarks/kernel_micro.py --smoke --out "$OUT/kernel_micro_smoke"
  step throughput-smoke 240 any "$PYTHON" benchmarks/gpu_throughput.py --smoke --out "$OUT/gpu_throughput_smoke"
fi

if [ "$DRY_RUN" = 1 ]; then set -- --dry-run; else set --; fi
"$PYTHON" scripts/gpu_check.py summary --steps "$STEPS" --out "$OUT" "$@"
status=$?
[ -f "$OUT/summary.json" ] || cp "$STEPS" "$OUT/steps.tsv"  # the summary itself failed: keep the raw steps
rm -rf "$WORK"
exit $status
