#!/usr/bin/env bash
# CI gate: export a checkpoint in both modes and validate each graph against PyTorch.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/ci_parity_gate.sh CHECKPOINT [options]

Exports CHECKPOINT to ONNX in fixed and threshold mode with `ltmp-deploy export`, then runs
`ltmp-deploy validate GRAPH --against CHECKPOINT -o REPORT` on each graph. Exits 1 when any
export or validation fails, so CI can gate on it. CHECKPOINT is a toolkit .safetensors checkpoint
that carries thresholds and a fixed-mode schedule (what `ltmp-deploy calibrate` writes); use
--modes threshold for one that has no schedule yet.

Options:
  --out DIR        where graphs and JSON reports go (default: ./parity-gate)
  --modes "M ..."  modes to check (default: "fixed threshold")
  --images N       sample images per validation (default: validate's own)
  -h, --help       this text
EOF
}

die() { echo "ci_parity_gate.sh: error: $*" >&2; exit 2; }

checkpoint=""
out="parity-gate"
modes="fixed threshold"
images=""

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --out) out="${2:?--out needs a folder}"; shift 2 ;;
        --modes) modes="${2:?--modes needs a list}"; shift 2 ;;
        --images) images="${2:?--images needs a number}"; shift 2 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$checkpoint" ] || die "one CHECKPOINT only (got $checkpoint and $1)"; checkpoint="$1"; shift ;;
    esac
done

[ -n "$checkpoint" ] || { usage >&2; exit 2; }
[ -f "$checkpoint" ] || die "$checkpoint: no such file"
mkdir -p "$out"

if command -v ltmp-deploy >/dev/null 2>&1; then
    LTMP=(ltmp-deploy)
else
    LTMP=(python3 -m ltmp_deploy.cli)
fi

validate_args=()
[ -z "$images" ] || validate_args=(--images "$images")

failed=()
for mode in $modes; do
    graph="$out/$mode.onnx"
    report="$out/$mode.json"
    echo "== $mode: export $checkpoint -> $graph"
    if ! "${LTMP[@]}" export "$checkpoint" --mode "$mode" -o "$graph"; then
        failed+=("$mode (export)")
        continue
    fi
    echo "== $mode: validate $graph against $checkpoint"
    if ! "${LTMP[@]}" validate "$graph" --against "$checkpoint" -o "$report" "${validate_args[@]}"; then
        failed+=("$mode (validate: $report)")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "ci_parity_gate.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "ci_parity_gate.sh: all modes match PyTorch ($modes); reports in $out"
