#!/usr/bin/env bash
# Gather, where pip reaches its index, the wheels an offline GPU machine needs to run device_check.sh:
# the toolkit's own wheel, and those of its dependencies that a PyTorch image seldom has. The image is
# expected to bring torch, timm, onnx, onnxscript, ONNX Runtime, safetensors, matplotlib, scikit-learn,
# pytest, tqdm, numpy and pillow (and onnxslim's needs: sympy, ml-dtypes, colorama, packaging); any other
# missing package can be added with --also. Wheels are for the machine's Python and platform, not this one's:
#   bash benchmarks/device_wheels.sh DIR [--python 3.12] [--also NAME[==VERSION] ...]
# then, on the machine:   bash benchmarks/device_check.sh OUTDIR --wheels DIR
set -euo pipefail

usage() { echo "usage: $0 DIR [--python X.Y] [--also NAME ...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
DIR=$1
shift
PYVER=3.12
ALSO=()
while [ $# -gt 0 ]; do
    case $1 in
        --python) [ $# -ge 2 ] || usage; PYVER=$2; shift ;;
        --also) [ $# -ge 2 ] || usage; ALSO+=("$2"); shift ;;
        *) usage ;;
    esac
    shift
done
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$DIR"

# The toolkit itself, so that its entry points (the backends a Session finds) are registered there too.
"$PY" -m pip wheel -q --no-deps -w "$DIR" "$ROOT"
# Its dependencies beyond the image's: the runners and the TensorRT check (polygraphy), the file-format
# schemas (jsonschema and what it needs), the graph cleanup of every export (onnxslim).
PACKAGES=(polygraphy jsonschema jsonschema-specifications referencing rpds-py onnxslim "${ALSO[@]}")
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do PLATFORMS+=(--platform "$tag"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${PLATFORMS[@]}" -d "$DIR" "${PACKAGES[@]}"
echo "wrote $(ls "$DIR"/*.whl | wc -l) wheels to $DIR ($(du -sh "$DIR" | cut -f1))"
