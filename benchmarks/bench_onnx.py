"""ONNX Runtime on CPU: LTMP fixed and threshold mode against the unpatched model and the oracle.

Every graph is exported the same way (TorchScript exporter, same opset) with a dynamic batch
axis; the oracle and fixed mode also pinned to the batch being timed (``--batch``). All are timed
interleaved in one run, at batch 1 and at batch 8. Besides the ratio of medians, the ratio is taken
round by round (``paired_ratio``), which cancels rounds that ran slow for every variant.

Fixed mode against the oracle: the oracle is the same ViT whose blocks keep the first k_l tokens
after attention, with no reduction operations, so no merge/prune graph can beat it, and the gap
between them is the overhead of the reduction ops. Both use ``schedule_for_flops(--target)``, which
merges and prunes in every block.

Threshold mode against fixed mode at the same mean FLOPs (``ltmp-fixed-cal``): thresholds are set
(one scalar, bisected) so that threshold mode keeps about ``--target`` of the block FLOPs on the
sample images, and that fixed schedule is calibrated from threshold mode's mean per-image counts
there, exactly as ``ltmp-deploy calibrate`` does. (With random weights attention is nearly uniform,
so this schedule prunes hard in a few blocks and merges little: it is a fair pair for threshold
mode, not a typical schedule.)

    python benchmarks/bench_onnx.py --model deit_small_patch16_224 --target 0.5
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import timm
import torch

from ltmp_deploy.calibration.schedule import per_image_counts, schedule_from_counts
from ltmp_deploy.export.onnx_export import export_onnx
from ltmp_deploy.ltmp.flops import image_flops, schedule_flops, schedule_for_flops
from ltmp_deploy.ltmp.patch import apply_patch
from ltmp_deploy.runtime.bench import interleaved, paired_ratio, table


def set_thresholds_for_target(model, images: torch.Tensor, target: float, merge_threshold: float) -> float:
    """Bisect c in prune_threshold_l = c / n_l (n_l: tokens a block receives at the target) until
    threshold mode keeps about ``target`` of the block FLOPs on ``images``; returns the FLOPs kept."""
    counts = [n for n, _ in schedule_for_flops(model, target).token_counts(model.ltmp_num_tokens)]
    lo, hi, ratio = 0.0, 2.0, 1.0
    for _ in range(12):
        c = (lo + hi) / 2
        model.ltmp_set_thresholds([merge_threshold] * len(counts), [c / n for n in counts])
        model.ltmp_set_mode("threshold")
        with torch.no_grad():
            ratio = float(np.mean([r.ratio for r in image_flops(model, model.forward_ltmp(images).decisions)]))
        lo, hi = (c, hi) if ratio > target else (lo, c)
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of block FLOPs kept")
    parser.add_argument("--merge-threshold", type=float, default=0.8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    import onnxruntime as ort  # here, not at the top: bench_torch.py borrows set_thresholds_for_target where only torch is installed

    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = apply_patch(timm.create_model(args.model, pretrained=False).eval())
    size = tuple(model.patch_embed.img_size)
    images = torch.randn(8, 3, *size, generator=torch.Generator().manual_seed(0))
    thr_ratio = set_thresholds_for_target(model, images, args.target, args.merge_threshold)
    with torch.no_grad():
        decisions = model.forward_ltmp(images).decisions
    merges, keeps = per_image_counts([decisions])
    ratios = [r.ratio for r in image_flops(model, decisions)]
    typical = int(np.argmin(np.abs(np.array(ratios) - np.mean(ratios))))  # batch 1: the most typical image
    # Two fixed schedules: one that merges and prunes in every block (the oracle comparison), and
    # one calibrated from threshold mode's counts (same mean FLOPs: the threshold comparison).
    # Random weights give threshold mode near-uniform attention, so its counts are degenerate.
    schedules = {"flops": schedule_for_flops(model, args.target), "calibrated": schedule_from_counts(model, merges, keeps, "mean")}
    print(f"model {args.model}, onnxruntime {ort.__version__}, {args.threads} threads, opset {args.opset}")
    print(f"threshold mode keeps {thr_ratio:.3f} of block FLOPs (mean over 8 images)")
    for name, sched in schedules.items():
        print(f"{name} schedule keeps {schedule_flops(model, sched).ratio:.3f}; (r, k) per block: {sched.pairs()}")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ltmp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # name -> (mode, schedule); "-cal" variants use the calibrated schedule.
    variants = {
        "unpatched": ("off", None),
        "oracle": ("oracle", "flops"),
        "ltmp-fixed": ("fixed", "flops"),
        "ltmp-fixed-cal": ("fixed", "calibrated"),
        "ltmp-threshold": ("threshold", None),
    }
    pinned = ("oracle", "ltmp-fixed")  # also exported at the timed batch
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads

    def session(name: str, batch: Optional[int]) -> ort.InferenceSession:
        mode, sched = variants[name]
        model.ltmp_set_mode(mode, schedules[sched] if sched else None)
        path = workdir / f"{name}-{batch or 'dynamic'}.onnx"
        export_onnx(model, path, opset=args.opset, batch=batch, num_samples=2)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    dynamic = {name: session(name, None) for name in variants}
    for batch in (1, 8):
        x = (images[typical : typical + 1] if batch == 1 else images).numpy()
        static = {f"{name} b{batch}": session(name, batch) for name in pinned}
        calls = {k: (lambda s=s: s.run(None, {"images": x})) for k, s in {**dynamic, **static}.items()}
        timings = interleaved(calls, batch, rounds=args.rounds)
        kept = ratios[typical] if batch == 1 else float(np.mean(ratios))
        print(f"\nbatch {batch} (threshold mode keeps {kept:.3f} of block FLOPs on these images), dynamic batch axis:")
        print(table({k: timings[k] for k in variants}, baselines=("unpatched", "oracle", "ltmp-fixed-cal")))
        print(f"exported at batch {batch}:")
        print(table({k: timings[f"{k} b{batch}"] for k in pinned}, baselines=("oracle",)))
        print("round by round (median, quartiles):")
        for a, b in (("ltmp-fixed", "oracle"), (f"ltmp-fixed b{batch}", f"oracle b{batch}"), ("ltmp-threshold", "ltmp-fixed-cal")):
            median, q1, q3 = paired_ratio(timings[a], timings[b])
            print(f"  {a} / {b}: {median:.3f} ({q1:.3f}-{q3:.3f})")

if __name__ == "__main__":
    main()
