"""Nodes that LTMP's reduction adds to an exported graph, after ONNX Runtime's own optimizations.

Each mode is exported as ``ltmp-deploy export`` does (``export_onnx``, dynamic batch axis unless
``--batch``), loaded into ONNX Runtime's CPU provider with every graph optimization on
(``ORT_ENABLE_ALL``), and the optimized graph it would run is written out
(``optimized_model_filepath``) and counted. The figure is that count minus the oracle's (the same
ViT keeping the same token counts, no reduction work), exported at the same opset: a count, not a
timing, so it is deterministic. At batch 1 each node is at least one kernel launch, and the
reduction's nodes are small ones.

``--per-block`` divides by the number of blocks; the first block (every token one patch, so no
size bias) and the last (whose sizes nothing reads) have a few nodes fewer than the others, so
tests count per added block instead (two depths of one model).

    python benchmarks/node_count.py --model deit_small_patch16_224 --op-types
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import timm
import torch

from ltmp_deploy.export.onnx_export import DEFAULT_OPSET, export_onnx
from ltmp_deploy.ltmp.flops import schedule_for_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer, apply_patch


def optimized_graph(path: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs for ``path``, every graph optimization applied."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    out = path.with_name(path.stem + ".ort.onnx")
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(out), load_external_data=False)


def op_types(
    model: LTMPVisionTransformer, mode: str, opset: int, workdir: Path, batch: int | None = None
) -> collections.Counter:
    """Op types of the optimized graph of ``model`` exported in ``mode``."""
    model.ltmp_set_mode(mode)
    path = workdir / f"{mode}-{opset}-{batch or 'dynamic'}.onnx"
    export_onnx(model, path, opset=opset, batch=batch, validate=False, num_samples=2)
    return collections.Counter(node.op_type for node in optimized_graph(path).graph.node)


def extra_op_types(
    model: LTMPVisionTransformer, modes: tuple[str, ...] = ("fixed", "threshold"), batch: int | None = None
) -> dict[str, collections.Counter]:
    """For each mode, its optimized graph's op types minus the oracle's, both exported at the
    mode's default opset (threshold mode's 17 exports LayerNorm as one op). The model needs a
    fixed-mode schedule (the oracle keeps its token counts); threshold mode uses its thresholds.
    Its mode is left as it was."""
    before, extra, oracle = model.ltmp.mode, {}, {}
    with tempfile.TemporaryDirectory(prefix="ltmp-nodes-") as work:
        for mode in modes:
            opset = DEFAULT_OPSET[mode]
            if opset not in oracle:
                oracle[opset] = op_types(model, "oracle", opset, Path(work), batch)
            count = op_types(model, mode, opset, Path(work), batch)
            count.subtract(oracle[opset])
            extra[mode] = count
    model.ltmp_set_mode(before)
    return extra


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of block FLOPs the fixed schedule keeps")
    parser.add_argument("--batch", type=int, help="pin the batch axis (default: dynamic)")
    parser.add_argument("--op-types", action="store_true", help="also list op types per block beyond the oracle")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = apply_patch(timm.create_model(args.model, pretrained=False).eval())
    blocks, n = len(model.blocks), model.ltmp_num_tokens
    model.ltmp_set_mode("fixed", schedule_for_flops(model, args.target))
    model.ltmp_set_thresholds([0.8] * blocks, [1.0 / n] * blocks)
    print(f"model {args.model}, {blocks} blocks, onnxruntime {ort.__version__}, batch {args.batch or 'dynamic'}")
    for mode, count in extra_op_types(model, batch=args.batch).items():
        total = sum(count.values())
        print(f"{mode} (opset {DEFAULT_OPSET[mode]}): {total} nodes beyond the oracle, {total / blocks:.2f} per block")
        if args.op_types:
            print("  per block: " + ", ".join(f"{op} {v / blocks:.3g}" for op, v in sorted(count.items()) if v))


if __name__ == "__main__":
    main()
