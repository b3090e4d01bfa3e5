"""The whole job in a few calls, the way ``timm.create_model`` and ToMe's one-call patch work:

    import ltmp_deploy as ld

    model = ld.create_model("deit_small_patch16_224", weights="deit_small.safetensors")
    ld.learn(model, "/data/imagenet", target=0.5)             # writes nothing unless output= is given
    ld.calibrate(model, flops_target=0.5)                     # a fixed schedule, no data needed
    ld.export_onnx(model, "fixed.onnx", mode="fixed")         # validated against PyTorch on the spot
    ld.validate("fixed.onnx", against="fixed.safetensors")    # or an engine against its ONNX
    ld.build("fixed.onnx", "fixed.engine", preset="orin-nx")  # where TensorRT is installed
    with ld.Session("fixed.onnx") as session:
        print(session.predict(["cat.jpg"]))

Each call is the library function the CLI uses; see their own docs for every option. (Export is
``export_onnx``: ``ltmp_deploy.export`` is the package that holds it.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Union

from ltmp_deploy.errors import LTMPError

PathLike = Union[str, os.PathLike]


def learn(
    model: Any,
    data: Any = "digits",
    *,
    target: float,
    output: PathLike | None = None,
    progress: bool = True,
    device: str | None = None,
    **options: Any,
) -> Sequence:
    """Learn the thresholds of ``model`` towards ``target`` (fraction of block FLOPs kept).

    ``data``: a torch Dataset, ``"digits"`` (the embedded set) or an image folder. ``options``:
    any :class:`~ltmp_deploy.calibration.learn.LearnConfig` field (epochs, lr_merge, ...).
    ``output``: a checkpoint written after every epoch; None keeps the result in ``model`` only.
    Returns the epochs' statistics, with ``.check``: threshold mode measured after learning on the
    held-out split of named data (its val split), else on the training images. ``device``: where it
    runs (default: CUDA when available, else the CPU); the model stays where it is.
    """
    from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds
    from ltmp_deploy.data.datasets import held_out_split

    try:
        cfg = LearnConfig(target=target, **options)
    except TypeError as err:
        raise LTMPError(f"learn: {err}") from err
    split = held_out_split(os.fspath(data), model) if isinstance(data, (str, os.PathLike)) else None
    heldout = {} if split is None else {"heldout_name": split[0], "heldout": split[1]}
    train = _dataset(data, model, "train")
    return learn_thresholds(model, train, output, cfg, progress=progress, device=device, **heldout)


def calibrate(
    model: Any,
    data: Any = None,
    *,
    flops_target: float | None = None,
    statistic: str = "mean",
    evaluate_on: Any = None,
    progress: bool = True,
    device: str | None = None,
    cost: Any = None,
    cost_batch: int = 1,
) -> Any:
    """Give ``model`` a fixed schedule: from threshold-mode counts on ``data``, or from ``flops_target``.

    Returns the :class:`~ltmp_deploy.calibration.calibrate.CalibrationReport`; ``model`` is left in
    fixed mode. ``evaluate_on``: data to measure both modes' accuracy on. Named data ("digits" or a
    folder) gives its calibration part as ``data`` and its evaluation part as ``evaluate_on``: the
    same name in both never puts an image in both. ``device``: where the images run (default: CUDA
    when available, else the CPU); the model stays where it is. ``cost``: a cost-model file (or
    :class:`~ltmp_deploy.runtime.cost_model.CostModel`) from ``ltmp-deploy cost``: the schedule is then
    chosen for latency at batch ``cost_batch`` (at the FLOPs of the counted schedule).
    """
    from ltmp_deploy.calibration.calibrate import calibrate as calibrate_schedule
    from ltmp_deploy.calibration.calibrate import parse_statistic

    if data is None and flops_target is None:
        raise LTMPError("calibrate: give data to count tokens on, or a flops_target")
    calibration = _dataset(data, model, "calibration") if data is not None and flops_target is None else None
    evaluation = _dataset(evaluate_on, model, "evaluation") if evaluate_on is not None else None
    return calibrate_schedule(
        model,
        calibration,
        statistic=parse_statistic(statistic),
        flops_target=flops_target,
        evaluation=evaluation,
        progress=progress,
        device=device,
        cost=_cost_model(cost),
        cost_batch=cost_batch,
    )


def _cost_model(cost: Any) -> Any:
    from ltmp_deploy.runtime.cost_model import CostModel, read_cost_model

    return cost if cost is None or isinstance(cost, CostModel) else read_cost_model(cost)


def validate(
    files: Union[PathLike, Sequence[PathLike]],
    against: PathLike | None = None,
    *,
    backend: str = "auto",
    providers: Sequence[Any] | None = None,
    mode: str | None = None,
    device: str | None = None,
    **options: Any,
) -> Any:
    """Parity of graphs or engines against a checkpoint (PyTorch) or an ONNX file (ONNX Runtime);
    a checkpoint alone is exported to a temporary graph and compared with itself. ``device``: where
    the PyTorch reference runs (default: CUDA when available, else the CPU).

    ``backend``/``providers``: how the files run (see :class:`~ltmp_deploy.runtime.session.Session`).
    ``mode``: the mode a checkpoint alone is exported and run in (default: its own). ``options``:
    ``images`` (a count, an image folder or files, or pictures), ``batch``, ``json_path``,
    ``require_reductions`` (fail when the images exercised no merge and no prune). Returns the
    :class:`~ltmp_deploy.runtime.parity.compare.ParityReport`;
    ``report.ok`` is the verdict.
    """
    from pathlib import Path

    from ltmp_deploy.extras import FULL
    from ltmp_deploy.runtime.backends import require, resolve_backend
    from ltmp_deploy.runtime.parity.validate import open_target
    from ltmp_deploy.runtime.parity.validate import validate as validate_files

    listed = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    reference = against if against is not None else (listed[0] if len(listed) == 1 else None)
    if reference is None or resolve_backend(Path(reference), "auto") != "torch":
        if device is not None:
            raise LTMPError(
                f"--device {device}: the reference here is ONNX Runtime; --device places a checkpoint's PyTorch one"
            )
        return validate_files(listed, against, backend=backend, providers=providers, **options)
    require("torch", Path(reference), FULL)
    from ltmp_deploy.export.checkpoint_parity import validate_checkpoint

    def open_file(path: Path) -> Any:
        return open_target(path, backend, providers)

    rest = [f for f in listed if os.fspath(f) != os.fspath(reference)]
    return validate_checkpoint(reference, rest, mode=mode, open_file=open_file, device=device, **options)


def build(onnx_path: PathLike, output: PathLike, *, preset: str = "datacenter", **options: Any) -> Any:
    """A TensorRT engine and its sidecar for ``preset`` (needs TensorRT; see ``runtime.trt.build.build``).

    ``options``: :class:`~ltmp_deploy.runtime.trt.plan.BuildOptions` fields, plus ``calibration`` and
    ``calibration_method`` for INT8 and ``print_trtexec`` for the equivalent trtexec line only.
    """
    from dataclasses import fields

    from ltmp_deploy.runtime.trt.build import build as build_engine
    from ltmp_deploy.runtime.trt.plan import BuildOptions

    names = {f.name for f in fields(BuildOptions)}
    try:
        plan = BuildOptions(preset=preset, **{k: v for k, v in options.items() if k in names})
    except TypeError as err:
        raise LTMPError(f"build: {err}") from err
    return build_engine(onnx_path, output, plan, **{k: v for k, v in options.items() if k not in names})


def _dataset(data: Any, model: Any, split: str) -> Any:
    """A named data set's ``split``: "train", or calibrate's "calibration" / "evaluation", which never
    share an image (data.datasets.calibration_split); a Dataset passes as it is."""
    if isinstance(data, (str, os.PathLike)):
        from ltmp_deploy.data.datasets import calibration_split, dataset_for, record_source

        if split in ("train", "calibration"):
            record_source(model, os.fspath(data), split)  # the checkpoint says where it learned
        if split in ("calibration", "evaluation"):
            return calibration_split(os.fspath(data), model, split)
        return dataset_for(os.fspath(data), model, split)
    return data
