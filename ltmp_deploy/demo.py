"""``ltmp-deploy demo``: the trial (``ltmp_deploy.trial``) on the embedded default.

The base ViT trained once on the digits set (cached), its train split to learn on, its val split to
calibrate on and its test split held out; the rest is the same pipeline a user's model and folder
go through.
"""

from __future__ import annotations

import os

from ltmp_deploy.trial import EPOCHS, LR_MERGE, LR_PRUNE, ROUNDS, STATISTIC, THREADS, TrialInputs, TrialRecipe
from ltmp_deploy.trial import TrialReport as DemoReport  # noqa: F401  the name the demo's callers know

DEMO_TARGET = 0.5
DEMO_EPOCHS = EPOCHS
DEMO_LR_MERGE = LR_MERGE
DEMO_LR_PRUNE = LR_PRUNE
DEMO_THREADS = THREADS
DEMO_ROUNDS = ROUNDS
DEMO_STATISTIC = STATISTIC


def run_demo(
    workdir: str | os.PathLike = "ltmp-demo",
    *,
    target: float = DEMO_TARGET,
    epochs: int = DEMO_EPOCHS,
    rounds: int = DEMO_ROUNDS,
    threads: int | None = DEMO_THREADS,
    train_images: int | None = None,
    flops_only: bool = False,
) -> DemoReport:
    """The whole job on the embedded default. ``threads``: CPU threads for the latency step (None: every
    usable core); ``train_images``: learn on only that many train images (a smoke run); ``flops_only``:
    calibrate for FLOPs alone, without this CPU's cost model."""
    from ltmp_deploy.trial import run_trial

    recipe = TrialRecipe(
        target=target, epochs=epochs, rounds=rounds, threads=threads, train_images=train_images, flops_only=flops_only
    )
    recipe.check()  # before the base model is trained or loaded
    return run_trial(demo_inputs(), workdir, recipe, command="ltmp-deploy demo")


def demo_inputs() -> TrialInputs:
    """The cached base ViT (trained on the digits first if missing), patched, and the digits splits."""
    from ltmp_deploy.data.datasets import EMBEDDED, dataset_for
    from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint
    from ltmp_deploy.ltmp.checkpoint import create_model

    base = default_base_checkpoint()
    model = create_model(MODEL_NAME, weights=base)
    train, val, test = (dataset_for(EMBEDDED, model, s) for s in ("train", "val", "test"))
    return TrialInputs(
        model=model,
        train=train,
        calibration=val,
        held_out=test,
        data=EMBEDDED,
        source=str(base),
        about="a ViT trained on scikit-learn's digits (cached after the first run)",
        held_out_name="test",
    )
