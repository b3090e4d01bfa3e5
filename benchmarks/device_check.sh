#!/usr/bin/env bash
# The GPU checks in one call, for a lent machine with a CUDA GPU and PyTorch (under 8 minutes):
#   1. pytest tests/test_cuda.py                         -> OUTDIR/test_cuda.log
#   2. ltmp-deploy bench of DeiT-S and DeiT-B (timm names, random weights, nothing downloaded) on
#      torch-cuda in fp16 (eager and CUDA graphs) and onnxruntime-cuda where installed, batch 1, 64, 256,
#      against the unpatched model, the oracle and ToMe    -> OUTDIR/deit_{s,b}-eager/
#   3. DeiT-S torch.compile'd (inductor) at batch 256 against the unpatched model and the oracle, compiled
#      the same way (ToMe and threshold mode left out)                       -> OUTDIR/deit_s-compile/
# Every step has its own time limit, so the whole stays under 8 minutes; a step cut short is named in
# OUTDIR/SUMMARY.md, with each finished run's tables (bench.md). Compiling is what limits step 3: fixed
# mode's blocks each run at token counts of their own, so inductor compiles every block anew, several
# times as long as the unpatched model, and ToMe, on the same code, as long again
# (benchmarks/results/2026-12-06-compile-time.md). Run from the repository root:
#   bash benchmarks/device_check.sh OUTDIR
#   bash benchmarks/device_check.sh OUTDIR --dry-run   # print the commands, run them at toy size on the CPU
#   bash benchmarks/device_check.sh OUTDIR --wheels DIR  # an offline machine: install DIR's wheels first
# A GPU image with PyTorch seldom has all of the toolkit's own dependencies, and an offline machine cannot
# fetch them: benchmarks/device_wheels.sh DIR, run where pip reaches its index, gathers them (and the
# toolkit's own wheel) into DIR, and --wheels DIR installs them into a temporary folder on PYTHONPATH.
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [--dry-run] [--wheels DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1
shift
DRY=0
WHEELS=""
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --wheels) [ $# -ge 2 ] || usage; WHEELS=$2; shift ;;
        *) usage ;;
    esac
    shift
done
PY=${PYTHON:-python}
mkdir -p "$OUT" || exit 2
SUMMARY="$OUT/SUMMARY.md"

if [ -n "$WHEELS" ]; then
    compgen -G "$WHEELS/*.whl" >/dev/null || { echo "$0: --wheels $WHEELS: no .whl files there" >&2; exit 2; }
    SITE=$(mktemp -d) || exit 1
    trap 'rm -rf "$SITE"' EXIT
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl || {
        echo "$0: --wheels $WHEELS: pip could not install them (see above)" >&2
        exit 1
    }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
fi

if [ $DRY -eq 1 ]; then
    # Toy size: the test model, one round, the CPU; the same options otherwise (fp16 and CUDA graphs
    # need CUDA, so the dry run times fp32 eager and compiles with Dynamo's eager backend).
    "$PY" - "$OUT/tiny.safetensors" <<'PYEOF' || exit 1
import sys
import torch
from ltmp_deploy.ltmp.checkpoint import create_model, save_checkpoint
torch.manual_seed(0)
model = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=5)
save_checkpoint(model, sys.argv[1])
PYEOF
    MODELS="tiny:$OUT/tiny.safetensors"
    COMPILE_MODELS=$MODELS
    BATCH="1 2"
    COMPILE_BATCH="2"
    TORCH=torch-cpu
    FP16=""
    GRAPH=""
    COMPILE="--compile eager"
    SIZE="--rounds 1 --warmup 0 --threads 1"
    LIMIT=(600 600 600)
    TESTS=(echo "dry run: would run" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py)
else
    MODELS="deit_s:deit_small_patch16_224 deit_b:deit_base_patch16_224"
    COMPILE_MODELS="deit_s:deit_small_patch16_224"
    BATCH="1 64 256"
    COMPILE_BATCH="256"  # the batch of the issue's throughput target
    TORCH=torch-cuda
    FP16="--dtype fp16"
    GRAPH="--cuda-graph"
    COMPILE="--compile"
    SIZE="--rounds 20 --warmup 5"
    LIMIT=(70 90 220)  # seconds: tests, each eager run, the compile run (7.8 minutes in all)
    TESTS=("$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py)
fi

{
    echo "# device check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' 2>&1)"
    echo
    echo "Every PyTorch path is timed host to host (batch copied to the device, logits copied back)."
    echo
    if [ -n "$WHEELS" ]; then
        echo "Installed for this run from $WHEELS: $(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')"
        echo
    fi
} >"$SUMMARY"

# step NAME LIMIT COMMAND...: print it, run it under its limit with its output in OUTDIR/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    echo "+ $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    local what="ok"
    [ $rc -eq 0 ] || what="exit $rc"
    [ $rc -eq 124 ] && what="cut short at its ${limit} s limit"
    echo "- $name: $what in ${took} s (log: $name.log)" >>"$SUMMARY"
    echo "  $name: $what in ${took} s"
    return 0
}

step test_cuda "${LIMIT[0]}" "${TESTS[@]}"

ORT=""
if "$PY" -c 'import onnxruntime, sys; sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())' 2>/dev/null; then
    ORT="onnxruntime-cuda"
fi
[ $DRY -eq 1 ] && ORT="onnxruntime-cpu"

BENCH=("$PY" -m ltmp_deploy bench)
COMMON="--targets 0.5 $SIZE --note device-check"
for entry in $MODELS; do
    tag=${entry%%:*}
    model=${entry#*:}
    # shellcheck disable=SC2086  # the option strings split into words on purpose
    step "$tag-eager" "${LIMIT[1]}" "${BENCH[@]}" "$model" --backends $TORCH $ORT $FP16 $GRAPH --batch $BATCH \
        $COMMON -o "$OUT/$tag-eager"
done
for entry in $COMPILE_MODELS; do
    tag=${entry%%:*}
    model=${entry#*:}
    # shellcheck disable=SC2086
    step "$tag-compile" "${LIMIT[2]}" "${BENCH[@]}" "$model" --backends $TORCH $FP16 $COMPILE --no-threshold \
        --no-tome --batch $COMPILE_BATCH $COMMON -o "$OUT/$tag-compile"
done

for md in "$OUT"/*/bench.md; do
    [ -f "$md" ] || continue
    { echo; echo "## $(basename "$(dirname "$md")")"; echo; cat "$md"; } >>"$SUMMARY"
done
echo "wrote $SUMMARY"
