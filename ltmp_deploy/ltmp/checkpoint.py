"""Checkpoints: the toolkit's own format and the authors' reference format.

Own format: one safetensors file. Tensors: the patched model's state dict (thresholds included,
under the authors' names ``blocks.{i}.merge_masker.threshold``). Header metadata, key
``ltmp_deploy``: a JSON document with everything needed to run the model the same way again:
the timm architecture, preprocessing, thresholds, schedule, mode and toolkit version.

Authors' format: a timm ViT state dict plus the two thresholds per block, as safetensors or a
torch checkpoint (zip or legacy pickle, possibly nested under ``model`` or ``state_dict``).

Files are told apart by their content (:mod:`ltmp_deploy.formats`), whatever their names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

from ltmp_deploy import __version__
from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.files import atomic_output
from ltmp_deploy.formats import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_METADATA_KEY,
    SAFETENSORS_KINDS,
    STATE_DICT_KINDS,
    THRESHOLD_SUFFIXES,
    FileKind,
    checkpoint_metadata,
    expect,
)
from ltmp_deploy.ltmp.architecture import build_model, read_description
from ltmp_deploy.ltmp.data_config import PREPROCESSING, model_data_config, set_preprocessing
from ltmp_deploy.ltmp.labels import check_labels
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer, apply_patch
from ltmp_deploy.ltmp.schedule import Schedule

# Names that look like files, so a missing file is reported as one rather than looked up in timm.
FILE_SUFFIXES = (".safetensors", ".onnx", ".json", ".pth", ".pt", ".bin", ".ckpt", ".engine", ".plan", ".jsonl")


def create_model(
    model: str | dict[str, Any],
    *,
    weights: str | os.PathLike | None = None,
    reference_checkpoint: str | os.PathLike | None = None,
    mode: str = "threshold",
    preprocessing: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    **kwargs: Any,
) -> LTMPVisionTransformer:
    """The front door: a timm model (name, description JSON path, or architecture dict), patched.

    ``weights``: an ordinary timm state dict. ``reference_checkpoint``: the authors' LTMP
    checkpoint (weights and thresholds). Nothing is downloaded: timm's pretrained weights are
    not fetched, pass them as ``weights``. ``preprocessing`` (mean, std, crop_pct, crop_mode,
    interpolation) and ``labels`` (class names) override those of a description JSON, which
    may carry both under the same keys; checkpoints and exports carry them on.
    """
    source, described = None, {}
    if isinstance(model, dict):
        architecture = _with_kwargs(model, kwargs)
    elif Path(model).is_file():
        expect(model, FileKind.JSON, what="a model description JSON or a timm model name")
        source = model
        described_architecture, described = read_description(model)
        architecture = _with_kwargs(described_architecture, kwargs)
    else:
        _check_model_name(str(model))
        architecture = {"timm_model": str(model), "kwargs": dict(kwargs)}
    net = apply_patch(build_model(architecture, source).eval(), mode=mode, architecture=architecture)
    where = str(source or "preprocessing")
    set_preprocessing(net, {**described.get("preprocessing", {}), **(preprocessing or {})}, where)
    names = labels if labels is not None else described.get("labels")
    if names is not None:
        net.ltmp.labels = check_labels(names, int(net.num_classes), "labels" if labels is not None else where)
    if weights is not None:
        _load_into(net, read_state_dict(weights), weights, need_thresholds=False)
    if reference_checkpoint is not None:
        _load_into(net, read_state_dict(reference_checkpoint), reference_checkpoint, need_thresholds=True)
    return net


def _with_kwargs(architecture: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``architecture`` with ``kwargs`` (e.g. num_classes) over its own arguments: they are recorded
    in the checkpoint, so it rebuilds the same model."""
    if not kwargs:
        return architecture
    key = "kwargs" if "kwargs" in architecture or "timm_model" in architecture else "config"
    own = architecture.get(key) or {}
    return {**architecture, key: {**own, **kwargs} if isinstance(own, dict) else own}


def _check_model_name(name: str) -> None:
    """A name that is no file: a timm model name, or a file the user meant that is not there."""
    import ltmp_deploy.ltmp.embedded_vit  # noqa: F401  registers the embedded default with timm

    if timm.is_model(name):
        return
    if os.sep in name or "/" in name or name.lower().endswith(FILE_SUFFIXES):
        raise LTMPError(f"{name}: no such file (nor a timm model name)")
    raise LTMPError(f"{name}: neither a file nor a timm model name (timm.list_models() lists the names)")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a torch checkpoint; a clear error for anything else."""
    path = Path(path)
    kind = expect(path, *STATE_DICT_KINDS, what="a state dict (safetensors or a torch checkpoint)")
    try:
        if kind in SAFETENSORS_KINDS:
            return load_file(str(path))
        # A file object, not the name: torch.load (2.14.1) reads any path named *.safetensors as
        # safetensors, whatever it holds, and this file is a torch checkpoint by its content.
        with path.open("rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch.load raises many kinds for a bad file)
        reason = first_line(err)
        raise LTMPError(f"{path}: not a readable checkpoint, it may be truncated or corrupt ({reason})") from err
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LTMPError(f"{path}: holds no state dict of tensors")
    return obj


def _load_into(model: LTMPVisionTransformer, state: dict[str, torch.Tensor], path: Any, need_thresholds: bool) -> None:
    """Load ``state`` strictly, naming the file and the first problems when it does not fit."""
    own = model.state_dict()
    thresholds = {k for k in own if k.endswith(THRESHOLD_SUFFIXES)}
    expected = set(own) if need_thresholds else set(own) - thresholds
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})"
        for k in sorted(set(state) & set(own))
        if state[k].shape != own[k].shape
    ]
    name = model.ltmp.architecture.get("timm_model") or model.ltmp.architecture.get("timm_class")
    if missing:
        what = "LTMP thresholds" if set(missing) <= thresholds else "weights"
        raise LTMPError(f"{path}: missing {len(missing)} {what} for {name}, e.g. {', '.join(missing[:3])}")
    if unexpected:
        raise LTMPError(f"{path}: {len(unexpected)} keys that {name} does not have, e.g. {', '.join(unexpected[:3])}")
    if wrong:
        raise LTMPError(f"{path}: wrong shapes for {name}: {'; '.join(wrong[:3])}")
    model.load_state_dict(state, strict=False)


def metadata(model: LTMPVisionTransformer) -> dict[str, Any]:
    """Everything needed to run the model the same way again (also what exports carry)."""
    merge, prune = model.ltmp_thresholds()
    data = model_data_config(model)
    labels = {"labels": list(model.ltmp.labels)} if model.ltmp.labels else {}
    return {
        "format": CHECKPOINT_FORMAT,
        "toolkit_version": __version__,
        "architecture": model.ltmp.architecture,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()},
        "num_classes": int(model.num_classes),
        "mode": model.ltmp.mode,
        "thresholds": {"merge": merge, "prune": prune},
        "schedule": model.ltmp.schedule.pairs() if model.ltmp.schedule is not None else None,
        "tau": model.ltmp.tau,
        **labels,
    }


def save_checkpoint(model: LTMPVisionTransformer, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write the toolkit checkpoint atomically: whole or not at all."""
    learned_on = {"learned_on": dict(model.ltmp.learned_on)} if model.ltmp.learned_on else {}
    meta = {**metadata(model), **learned_on, **(extra or {})}
    _check_rebuildable(model)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_output(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={CHECKPOINT_METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return Path(path)


def _check_rebuildable(model: LTMPVisionTransformer) -> None:
    """A checkpoint that cannot be rebuilt from its own metadata is refused before writing."""
    with torch.device("meta"):
        rebuilt = build_model(model.ltmp.architecture)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(THRESHOLD_SUFFIXES)}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if ours != theirs:
        raise LTMPError(
            f"cannot describe this {type(model).__name__} for a checkpoint (architecture {model.ltmp.architecture}); "
            "create it with ltmp_deploy.ltmp.checkpoint.create_model(name or description JSON) instead"
        )


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a toolkit checkpoint, without loading the weights."""
    path = Path(path)
    if expect(path, *SAFETENSORS_KINDS, what=FileKind.TOOLKIT_CHECKPOINT.human) is FileKind.SAFETENSORS:
        raise LTMPError(
            f"{path}: a safetensors file without ltmp-deploy metadata (pass it as --weights or "
            "--reference-checkpoint instead)"
        )
    return checkpoint_metadata(path)


def load(
    spec: str | os.PathLike, *, weights: str | os.PathLike | None = None, mode: str | None = None
) -> LTMPVisionTransformer:
    """The front door for a model a user names: a toolkit checkpoint or a model description JSON (told
    by content, whatever the name), or a timm model name patched fresh; a file that is neither is
    refused rather than looked up as a name. ``weights``: timm weights for a name or a description (a
    checkpoint carries its own). ``mode``: "fixed" or "threshold" (default: a checkpoint's saved mode)."""
    if os.path.exists(spec):
        what = f"{FileKind.TOOLKIT_CHECKPOINT.human}, a model description JSON or a timm model name"
        kinds = (FileKind.TOOLKIT_CHECKPOINT, FileKind.SAFETENSORS, FileKind.JSON)
        if expect(spec, *kinds, what=what) is not FileKind.JSON:
            if weights is not None:
                raise LTMPError(f"--weights: {spec} is a toolkit checkpoint and carries its own weights")
            return load_checkpoint(spec, mode=mode)  # a plain safetensors file gets its advice there
    model = create_model(str(spec), weights=weights)
    if mode is not None:
        model.ltmp_set_mode(mode)
    return model


def load_checkpoint(path: str | os.PathLike, mode: str | None = None) -> LTMPVisionTransformer:
    """Rebuild the patched model from a toolkit checkpoint, in its saved mode unless told."""
    meta = read_metadata(path)
    net = build_model(meta["architecture"], path).eval()
    model = apply_patch(net, mode="threshold", architecture=meta["architecture"])
    _load_into(model, read_state_dict(path), path, need_thresholds=True)
    model.ltmp.tau = float(meta["tau"])
    set_preprocessing(model, {k: v for k, v in meta["data_config"].items() if k in PREPROCESSING}, str(path))
    if meta.get("labels") is not None:
        model.ltmp.labels = check_labels(meta["labels"], int(model.num_classes), str(path))
    if isinstance(meta.get("learned_on"), dict):
        model.ltmp.learned_on = dict(meta["learned_on"])
    try:
        schedule = Schedule.from_pairs(meta["schedule"]) if meta["schedule"] else None
        model.ltmp_set_mode(mode or meta["mode"], schedule)
    except LTMPError as err:
        raise LTMPError(f"{path}: {err}") from err
    return model
