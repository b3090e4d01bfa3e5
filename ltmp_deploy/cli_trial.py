"""The trial's commands (the full toolkit): trial (the whole job on a user's model and image folder)
and evaluate (held-out accuracy of every variant, with its sampling error)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from ltmp_deploy.files import refuse_overwriting_inputs
from ltmp_deploy.options import DeviceChoice, add_options, fraction, from_args
from ltmp_deploy.trial import TrialRecipe

DATA_HELP = (
    "an image folder, one subfolder per class, optionally under train/, val/ and test/ ('digits': the embedded set)"
)


def add_trial(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "trial",
        run_trial,
        "Run the whole job on your model and your image folder: learn, calibrate, accuracy with sampling errors on "
        "held-out images, export, validate, check, benchmark, report.",
        "ltmp-deploy trial vit.json --weights vit.safetensors --data photos/ --target 0.5 -o trial/",
        "ltmp-deploy trial learned.safetensors --data photos/ --quick -o trial-smoke/",
        toolkit=True,
    )
    p.add_argument(
        "model", metavar="MODEL", help="a timm name or model description JSON (with --weights), or a checkpoint"
    )
    p.add_argument("--weights", metavar="FILE", help="timm weights for a name or description (.safetensors or .pth)")
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help=DATA_HELP + "; learning, calibration and accuracy never share an image",
    )
    p.add_argument("-o", "--workdir", default="ltmp-trial", metavar="WORKDIR", help="artefacts folder")
    add_options(p, TrialRecipe)
    p.add_argument(
        "--quick", action="store_true", help="a smoke run of every step: one epoch on 128 train images, 3 rounds"
    )


def run_trial(args: argparse.Namespace) -> int:
    from ltmp_deploy.files import ensure_writable_folder
    from ltmp_deploy.trial import folder_inputs, run_trial

    ensure_writable_folder(args.workdir, "-o")
    recipe = from_args(TrialRecipe, args)
    if args.quick:
        recipe.epochs, recipe.rounds, recipe.train_images = 1, 3, min(args.limit or 128, 128)
    recipe.check()  # before the model and the folder are read
    run_trial(folder_inputs(args.model, args.data, weights=args.weights), args.workdir, recipe)
    return 0


def add_evaluate(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "evaluate",
        run_evaluate,
        "Accuracy of the unpatched model, LTMP threshold and fixed mode and ToMe at equal FLOPs on the held-out "
        "images of a folder, each with its sampling error; writes an accuracy result for `report --accuracy`.",
        "ltmp-deploy evaluate fixed.safetensors --data photos/ -o accuracy.json",
        "ltmp-deploy evaluate learned.safetensors --data photos/ --target 0.5 -o accuracy.json",
        toolkit=True,
    )
    p.add_argument("model", metavar="MODEL", help="a toolkit checkpoint, or a timm name or model description JSON")
    p.add_argument("--weights", metavar="FILE", help="timm weights for a name or description")
    p.add_argument("--data", required=True, metavar="DIR", help=DATA_HELP + "; accuracy on its held-out part")
    p.add_argument(
        "--target",
        type=fraction,
        help="the fixed variant keeps this fraction of block FLOPs (default: the checkpoint's schedule, else one "
        "calibrated on the folder's calibration part)",
    )
    p.add_argument("--statistic", default="mean", help="calibrating: 'mean' of the per-image counts, or a quantile")
    add_options(p, DeviceChoice)
    p.add_argument("-o", "--output", required=True, metavar="ACCURACY.json", help="the accuracy result to write")


def run_evaluate(args: argparse.Namespace) -> int:
    from ltmp_deploy import load
    from ltmp_deploy.calibration.calibrate import parse_statistic
    from ltmp_deploy.data.datasets import calibration_split
    from ltmp_deploy.files import ensure_writable
    from ltmp_deploy.ltmp.device import resolve_device
    from ltmp_deploy.report.accuracy import write_accuracy
    from ltmp_deploy.report.held_out import accuracy_table, evaluate_variants, split_name

    device = resolve_device(args.device)
    ensure_writable(args.output)
    refuse_overwriting_inputs([("-o", args.output)], [args.model, args.weights])
    statistic = parse_statistic(args.statistic)
    model = load(args.model, weights=args.weights)
    held_out = calibration_split(args.data, model, "evaluation")
    needs_schedule = args.target is None and model.ltmp.schedule is None
    doc = evaluate_variants(
        model,
        held_out,
        dataset=args.data,
        split=split_name(args.data, held_out),
        target=args.target,
        calibration=calibration_split(args.data, model, "calibration") if needs_schedule else None,
        statistic=statistic,
        model_name=model.ltmp.architecture.get("timm_model") or os.path.basename(args.model),
        device=device,
    )
    write_accuracy(args.output, doc)
    print(f"{args.data}, {doc['dataset']['split']}: {len(held_out)} images; +- the sampling error (binomial)")
    print(accuracy_table(doc))
    print(f"wrote {args.output}")
    return 0
