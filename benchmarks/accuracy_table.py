"""Accuracy against FLOPs on the embedded digits set: LTMP (threshold and fixed mode) vs ToMe, over seeds.

Protocol. The base model is the embedded default (trained on the train split). For every target
and learning seed: learn the thresholds on the train split, calibrate the fixed schedule from
threshold mode's per-image token counts on the train split too (counts only, no labels), and
evaluate on the val and test splits together, images that neither base training, threshold
learning nor calibration has seen. ToMe is fixed-r merging (the same r in every block, no
pruning) through the same code, at the r whose FLOPs come closest to what LTMP's fixed mode
reached with that seed. FLOPs are block MACs kept, as a fraction of the unpatched model's.

Spread: the standard deviation over learning seeds (ddof 1). The LTMP - ToMe differences are
paired on the same images; besides their spread over seeds, the table gives the sampling
error of a paired difference on this many images, sqrt(b + c - (b - c)^2 / n) / n with b and c
the images only one of the two gets right (averaged over seeds).

    python benchmarks/accuracy_table.py --targets 0.9 0.75 0.6 0.5 --seeds 0 1 2 \\
        --json benchmarks/results/cpu-digits-accuracy.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ltmp_deploy.calibration.calibrate import calibrate, parse_statistic, tome_schedule
from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds
from ltmp_deploy.data.datasets import dataset_for
from ltmp_deploy.demo import DEMO_EPOCHS, DEMO_LR_MERGE, DEMO_LR_PRUNE, DEMO_STATISTIC
from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint
from ltmp_deploy.files import atomic_output
from ltmp_deploy.ltmp.checkpoint import create_model
from ltmp_deploy.ltmp.flops import image_flops, schedule_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.report.accuracy import accuracy_document, variant_entry, write_accuracy
from ltmp_deploy.runtime.bench_results import FIXED, THRESHOLD, TOME, UNPATCHED

VARIANTS = (  # name, method, mode
    ("ltmp-threshold", "ltmp", "threshold"),
    ("ltmp-fixed", "ltmp", "fixed"),
    ("tome-fixed-r", "tome", "fixed"),
)


@torch.no_grad()
def predict(model: LTMPVisionTransformer, data: Dataset) -> tuple[np.ndarray, float]:
    """Per-image correctness (bool) and the mean FLOPs ratio, in the model's current mode."""
    model.eval()
    fixed = model.ltmp.mode == "fixed"  # one schedule: the same FLOPs for every image
    correct, ratios = [], []
    for images, labels in DataLoader(data, batch_size=256, shuffle=False):
        out = model.forward_ltmp(images)
        correct.append((out.logits.argmax(-1) == labels).numpy())
        if not fixed:
            ratios += [r.ratio for r in image_flops(model, out.decisions)] if out.decisions else [1.0] * len(labels)
    flops = schedule_flops(model, model.ltmp.schedule).ratio if fixed else float(np.mean(ratios))
    return np.concatenate(correct), flops


def paired_error(a: np.ndarray, b: np.ndarray) -> float:
    """Sampling standard error of mean(a) - mean(b) for paired 0/1 outcomes on the same images."""
    n, only_a, only_b = len(a), int((a & ~b).sum()), int((~a & b).sum())
    return float(np.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n)


Outcome = dict[str, tuple[np.ndarray, float]]  # variant -> (per-image correctness, mean FLOPs ratio)


def run_one(
    base: Path, train: Dataset, heldout: Dataset, target: float, seed: int, args: argparse.Namespace, workdir: Path
) -> Outcome:
    """Learn, calibrate and evaluate one (target, seed): correctness and FLOPs per variant.

    The learned thresholds and the outcome are kept in ``workdir`` under names that hold the
    recipe, so a rerun, a second process given other targets, or a run with another calibration
    statistic reuses what is done (learning resumes from its last finished epoch).
    """
    recipe = f"e{args.epochs}-m{args.lr_merge:g}-p{args.lr_prune:g}"
    learned = workdir / f"{base.stem}-{recipe}-t{target:g}-s{seed}.safetensors"
    cached = learned.with_name(f"{learned.stem}-{args.statistic}.npz")
    if not cached.is_file():
        torch.manual_seed(seed)
        model = create_model(MODEL_NAME, weights=base)
        cfg = LearnConfig(target=target, epochs=args.epochs, lr_merge=args.lr_merge, lr_prune=args.lr_prune, seed=seed)
        learn_thresholds(model, train, learned, cfg, resume=True, progress=False)
        out = {"ltmp-threshold": predict(model.ltmp_set_mode("threshold"), heldout)}
        cal = calibrate(model, train, statistic=parse_statistic(args.statistic), progress=False)
        out["ltmp-fixed"] = predict(model, heldout)  # calibrate() leaves the model in fixed mode
        tome = tome_schedule(model, cal.fixed_flops)
        out["tome-fixed-r"] = predict(model.ltmp_set_mode("fixed", tome), heldout)
        arrays = {name: correct for name, (correct, _) in out.items()}
        arrays.update({f"{name}-flops": np.float64(flops) for name, (_, flops) in out.items()})
        with atomic_output(cached, suffix=".npz") as tmp:
            np.savez(tmp, schedule=np.array(cal.schedule.pairs()), tome_r=tome.merges[0], **arrays)
    with np.load(cached) as saved:
        out = {name: (saved[name], float(saved[f"{name}-flops"])) for name, _, _ in VARIANTS}
        schedule, tome_r = saved["schedule"].tolist(), int(saved["tome_r"])
    scores = ", ".join(f"{name} {correct.mean():.4f} @ {flops:.3f}" for name, (correct, flops) in out.items())
    print(f"target {target} seed {seed}: LTMP fixed (r, k) per block {schedule}, ToMe r={tome_r}: {scores}", flush=True)
    return out


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: dict[float, dict[int, Outcome]], unpatched: np.ndarray) -> dict[str, Any]:
    variants: list[dict[str, Any]] = [
        {
            "name": "unpatched",
            "method": "unpatched",
            "mode": "off",
            "target": 1.0,
            "flops": 1.0,
            "accuracy_mean": float(unpatched.mean()),
            "accuracy_std": 0.0,
            "seeds": [],
        }
    ]
    comparisons = []
    for target, by_seed in results.items():
        seeds = sorted(by_seed)
        for name, method, mode in VARIANTS:
            per_seed = [
                {"seed": s, "accuracy": float(by_seed[s][name][0].mean()), "flops": by_seed[s][name][1]} for s in seeds
            ]
            acc, flops = [p["accuracy"] for p in per_seed], [p["flops"] for p in per_seed]
            variants.append(
                {
                    "name": name,
                    "method": method,
                    "mode": mode,
                    "target": target,
                    "flops": statistics.fmean(flops),
                    "flops_std": _std(flops),
                    "accuracy_mean": statistics.fmean(acc),
                    "accuracy_std": _std(acc),
                    "seeds": per_seed,
                }
            )
        for name in ("ltmp-threshold", "ltmp-fixed"):
            diffs = [float(by_seed[s][name][0].mean() - by_seed[s]["tome-fixed-r"][0].mean()) for s in seeds]
            errors = [paired_error(by_seed[s][name][0], by_seed[s]["tome-fixed-r"][0]) for s in seeds]
            comparisons.append(
                {
                    "target": target,
                    "name": name,
                    "minus": "tome-fixed-r",
                    "difference_mean": statistics.fmean(diffs),
                    "difference_std": _std(diffs),
                    "paired_sampling_error": statistics.fmean(errors),
                    "per_seed": diffs,
                }
            )
    return {"variants": variants, "comparisons": comparisons}


def table(summary: dict[str, Any], images: int, recipe: str) -> str:
    rows = {(v["target"], v["name"]): v for v in summary["variants"]}
    unpatched = rows[(1.0, "unpatched")]["accuracy_mean"]
    seeds = len(summary["variants"][-1]["seeds"])
    lines = [
        f"embedded digits ViT ({MODEL_NAME}), {images} held-out images (val + test), "
        f"unpatched accuracy {unpatched:.4f}",
        f"learning: {recipe}; mean +- std over {seeds} seeds; FLOPs: block MACs kept",
        f"{'target':>6} | {'LTMP threshold':>22} | {'LTMP fixed':>22} | {'ToMe (fixed r)':>22}",
        f"{'':>6} | " + " | ".join(f"{'accuracy':>15} {'FLOPs':>6}" for _ in VARIANTS),
    ]
    for target in sorted({t for t, name in rows if name != "unpatched"}, reverse=True):
        cells = [rows[(target, name)] for name, _, _ in VARIANTS]
        text = [f"{c['accuracy_mean']:.4f}+-{c['accuracy_std']:.4f} {c['flops']:>6.3f}" for c in cells]
        lines.append(f"{target:>6} | " + " | ".join(f"{t:>22}" for t in text))
    lines.append("\nLTMP - ToMe, paired on the same images: mean +- std over seeds, the sampling error of one")
    lines.append("paired difference on these images, and the difference per seed:")
    for c in summary["comparisons"]:
        per_seed = ", ".join(f"{d:+.4f}" for d in c["per_seed"])
        mean, std, error = c["difference_mean"], c["difference_std"], c["paired_sampling_error"]
        lines.append(
            f"  target {c['target']:<5} {c['name']:<15} {mean:+.4f} +- {std:.4f}"
            f"  (sampling error {error:.4f}; per seed {per_seed})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.75, 0.6, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="threshold-learning seeds")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--lr-merge", type=float, default=DEMO_LR_MERGE)
    parser.add_argument("--lr-prune", type=float, default=DEMO_LR_PRUNE)
    parser.add_argument("--statistic", default=DEMO_STATISTIC, help="calibration statistic: mean, or a quantile: q0.9")
    parser.add_argument("--checkpoint", type=Path, help="base model (default: the embedded one, trained if missing)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep learned thresholds and outcomes here, and reuse them")
    args = parser.parse_args()

    base = args.checkpoint or default_base_checkpoint()
    model = create_model(MODEL_NAME, weights=base)
    train = dataset_for("digits", model, "train")
    heldout = ConcatDataset([dataset_for("digits", model, s) for s in ("val", "test")])
    unpatched, _ = predict(model.ltmp_set_mode("off"), heldout)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ltmp-acc-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = {t: {s: run_one(base, train, heldout, t, s, args, workdir) for s in args.seeds} for t in args.targets}
    summary = summarise(results, unpatched)
    recipe = (
        f"{args.epochs} epochs, lr merge {args.lr_merge:g}, lr prune {args.lr_prune:g}, "
        f"calibration statistic {args.statistic}"
    )
    print("\n" + table(summary, len(heldout), recipe))
    if args.json:
        write_accuracy(args.json, accuracy_json(summary, len(heldout), recipe, base))


def accuracy_json(summary: dict[str, Any], images: int, recipe: str, base: Path) -> dict[str, Any]:
    """The ``ltmp-deploy-accuracy/1`` document (what ``ltmp-deploy report`` reads), with the paired
    LTMP - ToMe differences beside it. Variant names follow bench results: ``ltmp-fixed@0.5``."""
    kinds = {"unpatched": UNPATCHED, "ltmp-threshold": THRESHOLD, "ltmp-fixed": FIXED, "tome-fixed-r": TOME}
    entries = []
    for v in summary["variants"]:
        label = None if v["name"] == "unpatched" else f"{v['target']:g}"
        runs = [{"seed": r["seed"], "accuracy": r["accuracy"], "flops_ratio": r["flops"]} for r in v["seeds"]]
        entries.append(
            variant_entry(kinds[v["name"]], label, runs or [{"accuracy": v["accuracy_mean"], "flops_ratio": 1.0}])
        )
    doc = accuracy_document(
        MODEL_NAME,
        {"name": "digits", "split": "val+test", "images": images},
        entries,
        note=f"base {base.name}; learning: {recipe}; spread: standard deviation over learning seeds",
    )
    doc["paired_differences"] = summary["comparisons"]
    return doc


if __name__ == "__main__":
    main()
