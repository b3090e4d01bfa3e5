#!/usr/bin/env bash
# On-device TensorRT build for a Jetson (Xavier, Orin, Thor): engine + ENGINE.json, parity validation, short benchmark.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/jetson_build.sh MODEL.onnx [options]

Run on the Jetson itself (an engine only runs on the TensorRT version and GPU that built it).
Builds MODEL.onnx with `ltmp-deploy build` and a Jetson preset; when TensorRT's Python bindings
are missing it builds with trtexec from the command `ltmp-deploy build --print-trtexec` gives and
records ENGINE.json with `--sidecar-only`. Then validates the engine with `ltmp-deploy validate`
(against the checkpoint with PyTorch, or against MODEL.onnx with ONNX Runtime) and benchmarks it
with trtexec.

Options:
  --preset P            xavier-nx | agx-xavier | orin-nano | orin-nx | agx-orin | thor
                        (default: read from /proc/device-tree/model)
  --precision X         fp16 (default) | fp32 | int8 | bf16 (TensorRT 10.3 / JetPack 6.1+)
  --calibration FILE    int8 on a float graph: preprocessed images (.npy/.npz/Polygraphy JSON, N x C x H x W)
  --dla-core N          run on DLA core N with GPU fallback (xavier-nx, agx-xavier, JetPack 5.1; orin-nx,
                        agx-orin, JetPack 5.1-6.2; agx-orin, TensorRT 11.4.1 on JetPack 7.2.2+, from an
                        fp16 or Q/DQ graph; fixed mode)
  --batch N             one batch size (min = opt = max)
  --min-batch N, --opt-batch N, --max-batch N
                        optimization profile of a dynamic batch axis (default from the preset)
  --timing-cache FILE   reuse and update a tactic timing cache
  --checkpoint CKPT     validate against this toolkit checkpoint (PyTorch) instead of MODEL.onnx
  -o, --output ENGINE   engine path (default: MODEL.PRESET.PRECISION.plan next to MODEL.onnx)
  --bench-seconds S     benchmark duration (default 10)
  --skip-validate       do not run `ltmp-deploy validate`
  --skip-bench          do not benchmark
  -h, --help            this text

Exit status: 0 when the engine was built, validation passed (or was skipped) and the benchmark
ran (or was skipped); non-zero otherwise.
EOF
}

die() { echo "jetson_build.sh: error: $*" >&2; exit 2; }
say() { echo "== $*"; }

onnx=""
preset=""
precision="fp16"
calibration=""
dla_core=""
batch=""
min_batch=""
opt_batch=""
max_batch=""
timing_cache=""
checkpoint=""
engine=""
bench_seconds=10
do_validate=1
do_bench=1

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --preset) preset="${2:?--preset needs a value}"; shift 2 ;;
        --precision) precision="${2:?--precision needs a value}"; shift 2 ;;
        --calibration) calibration="${2:?--calibration needs a file}"; shift 2 ;;
        --dla-core) dla_core="${2:?--dla-core needs a number}"; shift 2 ;;
        --batch) batch="${2:?--batch needs a number}"; shift 2 ;;
        --min-batch) min_batch="${2:?}"; shift 2 ;;
        --opt-batch) opt_batch="${2:?}"; shift 2 ;;
        --max-batch) max_batch="${2:?}"; shift 2 ;;
        --timing-cache) timing_cache="${2:?--timing-cache needs a file}"; shift 2 ;;
        --checkpoint) checkpoint="${2:?--checkpoint needs a file}"; shift 2 ;;
        -o|--output) engine="${2:?--output needs a path}"; shift 2 ;;
        --bench-seconds) bench_seconds="${2:?--bench-seconds needs a number}"; shift 2 ;;
        --skip-validate) do_validate=0; shift ;;
        --skip-bench) do_bench=0; shift ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$onnx" ] || die "one MODEL.onnx only (got $onnx and $1)"; onnx="$1"; shift ;;
    esac
done

[ -n "$onnx" ] || { usage >&2; exit 2; }
[ -f "$onnx" ] || die "$onnx: no such file"

if command -v ltmp-deploy >/dev/null 2>&1; then
    LTMP=(ltmp-deploy)
else
    LTMP=(python3 -m ltmp_deploy.cli)
fi

if [ -z "$preset" ]; then
    model="$(tr -d '\0' 2>/dev/null </proc/device-tree/model || true)"
    case "$model" in
        *"AGX Orin"*) preset="agx-orin" ;;
        *"Orin NX"*) preset="orin-nx" ;;
        *"Orin Nano"*) preset="orin-nano" ;;
        *"Thor"*) preset="thor" ;;
        *"Xavier NX"*) preset="xavier-nx" ;;
        *"AGX Xavier"* | *"Jetson-AGX"*) preset="agx-xavier" ;;  # L4T 32 names the AGX Xavier "Jetson-AGX"
        *) die "cannot tell the Jetson module from /proc/device-tree/model ('$model'): pass --preset" ;;
    esac
    say "device: $model -> --preset $preset"
fi

if [ -z "$engine" ]; then
    engine="${onnx%.onnx}.${preset}.${precision}.plan"
fi

build_args=(--preset "$preset" --precision "$precision")
if [ -n "$batch" ]; then
    build_args+=(--min-batch "$batch" --opt-batch "$batch" --max-batch "$batch")
fi
[ -z "$min_batch" ] || build_args+=(--min-batch "$min_batch")
[ -z "$opt_batch" ] || build_args+=(--opt-batch "$opt_batch")
[ -z "$max_batch" ] || build_args+=(--max-batch "$max_batch")
[ -z "$dla_core" ] || build_args+=(--dla-core "$dla_core")
[ -z "$timing_cache" ] || build_args+=(--timing-cache "$timing_cache")

# int8 on a float graph: the build quantizes first, to ENGINE_STEM.int8.onnx next to the engine.
build_onnx="$onnx"
quant_args=()
if [ -n "$calibration" ]; then
    quant_args=(--calibration "$calibration")
fi

if python3 -c "import tensorrt" >/dev/null 2>&1; then
    have_trt_python=1
    say "building $engine with ltmp-deploy build (TensorRT $(python3 -c 'import tensorrt; print(tensorrt.__version__)'))"
    "${LTMP[@]}" build "$onnx" "${build_args[@]}" "${quant_args[@]}" -o "$engine"
    if [ -n "$calibration" ] && [ -f "${engine%.*}.int8.onnx" ]; then
        build_onnx="${engine%.*}.int8.onnx"
    fi
else
    have_trt_python=0
    trtexec_bin="$(command -v trtexec || true)"
    [ -n "$trtexec_bin" ] || [ ! -x /usr/src/tensorrt/bin/trtexec ] || trtexec_bin=/usr/src/tensorrt/bin/trtexec
    [ -n "$trtexec_bin" ] || die "neither TensorRT's Python bindings (python3-libnvinfer) nor trtexec (/usr/src/tensorrt/bin) found"
    cmd="$("${LTMP[@]}" build "$onnx" "${build_args[@]}" "${quant_args[@]}" -o "$engine" --print-trtexec)"
    if [ -n "$calibration" ] && [ -f "${engine%.*}.int8.onnx" ]; then
        build_onnx="${engine%.*}.int8.onnx"
    fi
    cmd="${cmd/#trtexec/$(printf '%q' "$trtexec_bin")}"
    say "no TensorRT Python bindings: building with trtexec"
    echo "$cmd"
    log="${engine}.build.log"
    if ! eval "$cmd" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "trtexec failed (full log: $log)"
    fi
    # The full version as Python's tensorrt.__version__ spells it comes from dpkg (JetPack's
    # "tensorrt" package); trtexec's banner (v100300) has no build number.
    version="$(dpkg-query -W -f='${Version}' tensorrt 2>/dev/null | cut -d- -f1 || true)"
    [ -n "$version" ] || version="$(grep -o 'TensorRT v[0-9]*' "$log" | head -n 1 | sed 's/TensorRT //')"
    [ -n "$version" ] || die "cannot read the TensorRT version from dpkg or $log"
    "${LTMP[@]}" build "$build_onnx" "${build_args[@]}" -o "$engine" --sidecar-only "$version"
fi
say "engine: $engine (sidecar ${engine}.json)"

status=0
if [ "$do_validate" = 1 ]; then
    report="${engine}.validate.json"
    if [ "$have_trt_python" = 1 ]; then
        against="${checkpoint:-$build_onnx}"
        say "validating $engine against $against"
        "${LTMP[@]}" validate "$engine" --against "$against" -o "$report" || status=$?
    elif [ -n "$checkpoint" ]; then
        say "no TensorRT Python bindings: validating $build_onnx (ONNX Runtime) against $checkpoint instead of the engine"
        "${LTMP[@]}" validate "$build_onnx" --against "$checkpoint" -o "$report" || status=$?
    else
        say "no TensorRT Python bindings and no --checkpoint: engine validation skipped (install python3-libnvinfer)"
    fi
    [ "$status" = 0 ] || echo "jetson_build.sh: validation FAILED (report: $report)" >&2
fi

if [ "$do_bench" = 1 ]; then
    trtexec_bin="$(command -v trtexec || true)"
    [ -n "$trtexec_bin" ] || [ ! -x /usr/src/tensorrt/bin/trtexec ] || trtexec_bin=/usr/src/tensorrt/bin/trtexec
    if [ -z "$trtexec_bin" ]; then
        say "trtexec not found: benchmark skipped"
    else
        shape_args=()
        opt_shape="$(python3 - "${engine}.json" <<'PY'
import json, sys
profile = json.load(open(sys.argv[1]))["profiles"][0]
if profile["min"] != profile["max"]:
    print(profile["input"] + ":" + "x".join(str(d) for d in profile["opt"]))
PY
)"
        [ -z "$opt_shape" ] || shape_args=("--shapes=$opt_shape")
        [ -z "$dla_core" ] || shape_args+=("--useDLACore=$dla_core")
        say "benchmark: ${bench_seconds}s with trtexec ${shape_args[*]:-}"
        "$trtexec_bin" --loadEngine="$engine" "${shape_args[@]}" --duration="$bench_seconds" --warmUp=1000 \
            >"${engine}.bench.log" 2>&1 || { tail -n 20 "${engine}.bench.log" >&2; die "benchmark failed"; }
        grep -E "Throughput|Latency:|GPU Compute Time:" "${engine}.bench.log" || true
    fi
fi

exit "$status"
