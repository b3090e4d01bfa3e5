"""Accuracy against FLOPs on the embedded digits set: LTMP (threshold and fixed mode) vs ToMe, over seeds.

Protocol. The base model is the embedded default (trained on the train split). For every target
and learning seed: learn the thresholds on the train split, calibrate the fixed schedule from
threshold mode's per-image token counts on the train split too (counts only, no labels), and
evaluate on the val and test splits together, images that neither base training, threshold
learning nor calibration has seen. ToMe is fixed-r merging (the same r in every block, no
pruning) through the same code, at the r whose FLOPs come closest to what LTMP's fixed mode
reached with that seed. Beside LTMP, the same recipe learns a second time with pruning held off
(``merge_only``): merging alone at the same target, so that the run that prunes stands next to one
that only merges at the same FLOPs. FLOPs are block MACs kept, as a fraction of the unpatched model's;
tokens merged and pruned are per image, summed over the blocks, on the held-out images.

Spread: the standard deviation over learning seeds (ddof 1). The LTMP - ToMe differences are
paired on the same images; besides their spread over seeds, the table gives the sampling
error of a paired difference on this many images, sqrt(b + c - (b - c)^2 / n) / n with b and c
the images only one of the two gets right (averaged over seeds).

    python benchmarks/accuracy_table.py --targets 0.75 0.5 --seeds 0 1 2 \\
        --json benchmarks/results/2026-12-05-accuracy-prune-vs-merge.json

``--recipe reference`` learns as the authors' recipe starts (merge 0.9, prune 0, the prune mask at
``tau``; benchmarks/results/cpu-digits-accuracy.json was measured so, with ``--lr-merge 0.06
--lr-prune 5e-6``).
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
from ltmp_deploy.calibration.evaluate import per_image_counts
from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds
from ltmp_deploy.data.datasets import dataset_for
from ltmp_deploy.demo import DEMO_EPOCHS, DEMO_STATISTIC
from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint
from ltmp_deploy.files import atomic_output
from ltmp_deploy.ltmp.checkpoint import create_model
from ltmp_deploy.ltmp.flops import image_flops, schedule_flops
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.report.accuracy import accuracy_document, variant_entry, write_accuracy
from ltmp_deploy.runtime.bench_results import FIXED, THRESHOLD, TOME, UNPATCHED

VARIANTS = (  # name, method, mode
    ("ltmp-threshold", "ltmp", "threshold"),
    ("ltmp-merge-only", "ltmp", "threshold"),
    ("ltmp-fixed", "ltmp", "fixed"),
    ("tome-fixed-r", "tome", "fixed"),
)
COUNTED = ("ltmp-threshold", "ltmp-merge-only")  # threshold mode: tokens merged and pruned per block
PAIRS = (  # paired differences: (variant, minus variant)
    ("ltmp-threshold", "tome-fixed-r"),
    ("ltmp-fixed", "tome-fixed-r"),
    ("ltmp-threshold", "ltmp-merge-only"),
)
DEFAULTS = LearnConfig(target=0.5)
RECIPES = {  # LearnConfig fields of each --recipe beyond the learning rates
    "scaled": {},  # LearnConfig's defaults: automatic start, prune mask at tau / tokens
    "reference": {"merge_start": 0.9, "prune_start": 0.0, "prune_tau": 0.1},
}


@torch.no_grad()
def predict(model: LTMPVisionTransformer, data: Dataset) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Per-image correctness (bool), the mean FLOPs ratio and, in threshold mode, the mean tokens
    (merged, pruned) per block (2, blocks), in the model's current mode."""
    model.eval()
    fixed = model.ltmp.mode == "fixed"  # one schedule: the same FLOPs for every image
    correct, ratios, decisions = [], [], []
    for images, labels in DataLoader(data, batch_size=256, shuffle=False):
        out = model.forward_ltmp(images)
        correct.append((out.logits.argmax(-1) == labels).numpy())
        if not fixed:
            ratios += [r.ratio for r in image_flops(model, out.decisions)] if out.decisions else [1.0] * len(labels)
            decisions.append(out.decisions)
    flops = schedule_flops(model, model.ltmp.schedule).ratio if fixed else float(np.mean(ratios))
    counted = model.ltmp.mode == "threshold"
    return np.concatenate(correct), flops, removed_per_block(model, decisions) if counted else None


def removed_per_block(model: LTMPVisionTransformer, decisions: list[list[Any]]) -> np.ndarray:
    """(2, blocks): the mean tokens per image each block merged away and pruned."""
    merges, keeps = per_image_counts(decisions)
    entering = np.concatenate([np.full((len(keeps), 1), model.ltmp_num_tokens), keeps[:, :-1]], axis=1)
    return np.stack([merges.mean(0), (entering - merges - keeps).mean(0)])


def paired_error(a: np.ndarray, b: np.ndarray) -> float:
    """Sampling standard error of mean(a) - mean(b) for paired 0/1 outcomes on the same images."""
    n, only_a, only_b = len(a), int((a & ~b).sum()), int((~a & b).sum())
    return float(np.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n)


# variant -> (per-image correctness, mean FLOPs ratio, mean tokens (merged, pruned) per block or None)
Outcome = dict[str, tuple[np.ndarray, float, Any]]


def run_one(
    base: Path, train: Dataset, heldout: Dataset, target: float, seed: int, args: argparse.Namespace, workdir: Path
) -> Outcome:
    """Learn, calibrate and evaluate one (target, seed): correctness and FLOPs per variant.

    The learned thresholds and the outcome are kept in ``workdir`` under names that hold the
    recipe, so a rerun, a second process given other targets, or a run with another calibration
    statistic reuses what is done (learning resumes from its last finished epoch).
    """
    recipe = f"{args.recipe}-e{args.epochs}-m{args.lr_merge:g}-p{args.lr_prune:g}"
    learned = workdir / f"{base.stem}-{recipe}-t{target:g}-s{seed}.safetensors"
    cached = learned.with_name(f"{learned.stem}-{args.statistic}.npz")
    if not cached.is_file():
        model = _learn(base, train, heldout, target, seed, args, learned, merge_only=False)
        out = {"ltmp-threshold": predict(model, heldout)}
        cal = calibrate(model, train, statistic=parse_statistic(args.statistic), progress=False)
        out["ltmp-fixed"] = predict(model, heldout)  # calibrate() leaves the model in fixed mode
        tome = tome_schedule(model, cal.fixed_flops)
        out["tome-fixed-r"] = predict(model.ltmp_set_mode("fixed", tome), heldout)
        merge_only = learned.with_name(f"{learned.stem}-merge-only.safetensors")
        merging = _learn(base, train, heldout, target, seed, args, merge_only, merge_only=True)
        out["ltmp-merge-only"] = predict(merging, heldout)
        arrays = {name: correct for name, (correct, _, _) in out.items()}
        arrays.update({f"{name}-flops": np.float64(flops) for name, (_, flops, _) in out.items()})
        arrays.update({f"{name}-removed": out[name][2] for name in COUNTED})
        with atomic_output(cached, suffix=".npz") as tmp:
            np.savez(tmp, schedule=np.array(cal.schedule.pairs()), tome_r=tome.merges[0], **arrays)
    with np.load(cached) as saved:
        out = {
            name: (saved[name], float(saved[f"{name}-flops"]), saved[f"{name}-removed"] if name in COUNTED else None)
            for name, _, _ in VARIANTS
        }
        schedule, tome_r = saved["schedule"].tolist(), int(saved["tome_r"])
    scores = ", ".join(f"{name} {correct.mean():.4f} @ {flops:.3f}" for name, (correct, flops, _) in out.items())
    removed = ", ".join(
        f"{name} merged {out[name][2][0].sum():.1f} pruned {out[name][2][1].sum():.1f}" for name in COUNTED
    )
    print(f"target {target} seed {seed}: LTMP fixed (r, k) per block {schedule}, ToMe r={tome_r}: {scores}", flush=True)
    print(f"  tokens per image (held-out, summed over blocks): {removed}", flush=True)
    return out


def _learn(
    base: Path,
    train: Dataset,
    heldout: Dataset,
    target: float,
    seed: int,
    args: argparse.Namespace,
    output: Path,
    merge_only: bool,
) -> LTMPVisionTransformer:
    """The base model with thresholds learned into ``output``, in threshold mode."""
    torch.manual_seed(seed)
    model = create_model(MODEL_NAME, weights=base)
    options = dict(RECIPES[args.recipe], merge_only=merge_only)
    cfg = LearnConfig(target, args.epochs, lr_merge=args.lr_merge, lr_prune=args.lr_prune, seed=seed, **options)
    learn_thresholds(model, train, output, cfg, heldout=heldout, resume=True, progress=False)
    return model.ltmp_set_mode("threshold")


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
    comparisons, removed = [], []
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
        for name, minus in PAIRS:
            diffs = [float(by_seed[s][name][0].mean() - by_seed[s][minus][0].mean()) for s in seeds]
            errors = [paired_error(by_seed[s][name][0], by_seed[s][minus][0]) for s in seeds]
            comparisons.append(
                {
                    "target": target,
                    "name": name,
                    "minus": minus,
                    "difference_mean": statistics.fmean(diffs),
                    "difference_std": _std(diffs),
                    "paired_sampling_error": statistics.fmean(errors),
                    "per_seed": diffs,
                }
            )
        for name in COUNTED:  # mean over seeds of the mean tokens per image
            merged, pruned = np.mean([by_seed[s][name][2] for s in seeds], axis=0).tolist()
            removed.append({"target": target, "name": name, "merged": merged, "pruned": pruned})
    return {"variants": variants, "comparisons": comparisons, "removed_per_block": removed}


def table(summary: dict[str, Any], images: int, recipe: str) -> str:
    rows = {(v["target"], v["name"]): v for v in summary["variants"]}
    unpatched = rows[(1.0, "unpatched")]["accuracy_mean"]
    seeds = len(summary["variants"][-1]["seeds"])
    lines = [
        f"embedded digits ViT ({MODEL_NAME}), {images} held-out images (val + test), "
        f"unpatched accuracy {unpatched:.4f}",
        f"learning: {recipe}; mean +- std over {seeds} seeds; FLOPs: block MACs kept",
        f"{'target':>6} | {'LTMP threshold':>22} | {'LTMP merge only':>22} | {'LTMP fixed':>22} | "
        f"{'ToMe (fixed r)':>22}",
        f"{'':>6} | " + " | ".join(f"{'accuracy':>15} {'FLOPs':>6}" for _ in VARIANTS),
    ]
    for target in sorted({t for t, name in rows if name != "unpatched"}, reverse=True):
        cells = [rows[(target, name)] for name, _, _ in VARIANTS]
        text = [f"{c['accuracy_mean']:.4f}+-{c['accuracy_std']:.4f} {c['flops']:>6.3f}" for c in cells]
        lines.append(f"{target:>6} | " + " | ".join(f"{t:>22}" for t in text))
    lines.append("\nTokens per image on the held-out images, threshold mode, mean over seeds (per block, then summed):")
    for r in summary["removed_per_block"]:
        merged, pruned = " ".join(f"{x:5.1f}" for x in r["merged"]), " ".join(f"{x:5.1f}" for x in r["pruned"])
        lines.append(f"  target {r['target']:<5} {r['name']:<16} merged {merged} = {sum(r['merged']):5.1f}")
        lines.append(f"  {'':<29} pruned {pruned} = {sum(r['pruned']):5.1f}")
    lines.append("\nPaired on the same images: mean +- std over seeds, the sampling error of one paired difference")
    lines.append("on these images, and the difference per seed:")
    for c in summary["comparisons"]:
        per_seed = ", ".join(f"{d:+.4f}" for d in c["per_seed"])
        mean, std, error = c["difference_mean"], c["difference_std"], c["paired_sampling_error"]
        lines.append(
            f"  target {c['target']:<5} {c['name']:<15} - {c['minus']:<15} {mean:+.4f} +- {std:.4f}"
            f"  (sampling error {error:.4f}; per seed {per_seed})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.75, 0.6, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="threshold-learning seeds")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--lr-merge", type=float, default=DEFAULTS.lr_merge)
    parser.add_argument("--lr-prune", type=float, default=DEFAULTS.lr_prune)
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), default="scaled", help="start values and prune temperature"
    )
    parser.add_argument("--statistic", default=DEMO_STATISTIC, help="calibration statistic: mean, or a quantile: q0.9")
    parser.add_argument("--checkpoint", type=Path, help="base model (default: the embedded one, trained if missing)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep learned thresholds and outcomes here, and reuse them")
    args = parser.parse_args()

    base = args.checkpoint or default_base_checkpoint()
    model = create_model(MODEL_NAME, weights=base)
    train = dataset_for("digits", model, "train")
    heldout = ConcatDataset([dataset_for("digits", model, s) for s in ("val", "test")])
    unpatched, _, _ = predict(model.ltmp_set_mode("off"), heldout)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ltmp-acc-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = {t: {s: run_one(base, train, heldout, t, s, args, workdir) for s in args.seeds} for t in args.targets}
    summary = summarise(results, unpatched)
    recipe = (
        f"{args.recipe} recipe, {args.epochs} epochs, lr merge {args.lr_merge:g}, lr prune {args.lr_prune:g}, "
        f"calibration statistic {args.statistic}"
    )
    print("\n" + table(summary, len(heldout), recipe))
    if args.json:
        write_accuracy(args.json, accuracy_json(summary, len(heldout), recipe, base))


def accuracy_json(summary: dict[str, Any], images: int, recipe: str, base: Path) -> dict[str, Any]:
    """The ``ltmp-deploy-accuracy/1`` document (what ``ltmp-deploy report`` reads), with the paired
    LTMP - ToMe differences beside it. Variant names follow bench results: ``ltmp-fixed@0.5``."""
    kinds = {
        "unpatched": UNPATCHED,
        "ltmp-threshold": THRESHOLD,
        "ltmp-merge-only": THRESHOLD,
        "ltmp-fixed": FIXED,
        "tome-fixed-r": TOME,
    }
    entries = []
    for v in summary["variants"]:
        label = None if v["name"] == "unpatched" else f"{v['target']:g}"
        label = f"{label}-merge-only" if v["name"] == "ltmp-merge-only" else label
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
    doc["removed_per_block"] = summary["removed_per_block"]
    return doc


if __name__ == "__main__":
    main()
