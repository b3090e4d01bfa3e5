"""Accuracy against FLOPs on the embedded digits set: LTMP (threshold and fixed mode) vs ToMe.

For each FLOPs target: learn the thresholds from the same base model, calibrate the fixed schedule
on the validation split, and measure on the test split: threshold mode (its real mean FLOPs),
fixed mode, and ToMe's fixed-r merging at the FLOPs fixed mode reached. Numbers from one run.

    python benchmarks/accuracy_table.py --targets 0.9 0.75 0.6 0.5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ltmp_deploy.calibration.learn import LearnConfig, evaluate, learn_thresholds
from ltmp_deploy.calibration.schedule import calibrate, tome_schedule
from ltmp_deploy.data.sources import dataset_for
from ltmp_deploy.demo import DEMO_EPOCHS, DEMO_LR_MERGE, DEMO_LR_PRUNE
from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint
from ltmp_deploy.ltmp.checkpoint import create_model
from ltmp_deploy.ltmp.flops import schedule_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.75, 0.6, 0.5])
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--lr-merge", type=float, default=DEMO_LR_MERGE)
    parser.add_argument("--lr-prune", type=float, default=DEMO_LR_PRUNE)
    args = parser.parse_args()

    base = default_base_checkpoint()
    model = create_model(MODEL_NAME, weights=base)
    train, val, test = (dataset_for("digits", model, s) for s in ("train", "val", "test"))
    model.ltmp_set_mode("off")
    unpatched = evaluate(model, test)[0]
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="ltmp-acc-"))
    for target in args.targets:
        torch.manual_seed(0)
        model = create_model(MODEL_NAME, weights=base)
        cfg = LearnConfig(target=target, epochs=args.epochs, lr_merge=args.lr_merge, lr_prune=args.lr_prune)
        learn_thresholds(model, train, workdir / f"t{target}.safetensors", cfg, progress=False)
        cal = calibrate(model, val, evaluation=test, progress=False)
        tome = tome_schedule(model, cal.fixed_flops)
        model.ltmp_set_mode("fixed", tome)
        tome_acc = evaluate(model, test)[0]
        rows.append((target, cal, tome_acc, schedule_flops(model, tome).ratio, tome.merges[0]))
        print(f"target {target}: done", flush=True)

    print(f"\nembedded digits ViT ({MODEL_NAME}), test split of {len(test)} images, unpatched accuracy {unpatched:.4f}")
    print(
        f"{'target':>6} | {'LTMP thr acc':>12} {'FLOPs':>6} | {'LTMP fixed acc':>14} {'FLOPs':>6} | {'ToMe acc':>8} "
        f"{'FLOPs':>6} {'r':>3}"
    )
    for target, cal, tome_acc, tome_flops, r in rows:
        print(
            f"{target:>6} | {cal.threshold_accuracy:>12.4f} {cal.threshold_flops:>6.3f} | "
            f"{cal.fixed_accuracy:>14.4f} {cal.fixed_flops:>6.3f} | {tome_acc:>8.4f} {tome_flops:>6.3f} {r:>3}"
        )


if __name__ == "__main__":
    main()
