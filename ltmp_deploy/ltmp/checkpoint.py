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

import importlib
import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

from ltmp_deploy import __version__
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import atomic_output
from ltmp_deploy.formats import (
    CHECKPOINT_METADATA_KEY,
    SAFETENSORS_KINDS,
    STATE_DICT_KINDS,
    THRESHOLD_SUFFIXES,
    FileKind,
    expect,
    safetensors_metadata,
)
from ltmp_deploy.ltmp.data_config import model_data_config
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer, apply_patch
from ltmp_deploy.ltmp.schedule import Schedule

FORMAT = "ltmp-deploy-checkpoint"


def build_model(architecture: dict[str, Any]) -> torch.nn.Module:
    """An unpatched timm model from ``{"timm_model": name, "kwargs": {...}}`` or
    ``{"timm_class": "module.Class", "config": {...}}`` (the authors' golden JSON shape)."""
    kwargs = dict(architecture.get("kwargs") or architecture.get("config") or {})
    try:
        if architecture.get("timm_model"):
            import ltmp_deploy.ltmp.embedded_vit  # noqa: F401  registers the embedded default with timm

            return timm.create_model(architecture["timm_model"], pretrained=False, **kwargs)
        module, _, cls = str(architecture.get("timm_class", "")).rpartition(".")
        if not module.startswith("timm."):
            raise LTMPError(f"architecture {architecture!r}: expected a timm model name or a timm class")
        return getattr(importlib.import_module(module), cls)(**kwargs)
    except (RuntimeError, TypeError, AttributeError, ImportError) as err:
        raise LTMPError(f"cannot build model from {architecture!r}: {err}") from err


def architecture_from_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a model description JSON (``timm_class`` + ``config``, or ``timm_model`` + ``kwargs``)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LTMPError(f"{path}: not a readable model description JSON ({err})") from err
    if not isinstance(doc, dict) or not (doc.get("timm_model") or doc.get("timm_class")):
        raise LTMPError(f"{path}: a model description needs 'timm_model' or 'timm_class'")
    return {k: doc[k] for k in ("timm_model", "timm_class", "kwargs", "config") if k in doc}


def create_model(
    model: str | dict[str, Any],
    *,
    weights: str | os.PathLike | None = None,
    reference_checkpoint: str | os.PathLike | None = None,
    mode: str = "threshold",
    **kwargs: Any,
) -> LTMPVisionTransformer:
    """The front door: a timm model (name, description JSON path, or architecture dict), patched.

    ``weights``: an ordinary timm state dict. ``reference_checkpoint``: the authors' LTMP
    checkpoint (weights and thresholds). Nothing is downloaded: timm's pretrained weights are
    not fetched, pass them as ``weights``.
    """
    if isinstance(model, dict):
        architecture = model
    elif Path(model).is_file():
        expect(model, FileKind.JSON, what="a model description JSON or a timm model name")
        architecture = architecture_from_file(model)
    else:
        architecture = {"timm_model": str(model), "kwargs": dict(kwargs)}
    net = apply_patch(build_model(architecture).eval(), mode=mode, architecture=architecture)
    if weights is not None:
        _load_into(net, read_state_dict(weights), weights, need_thresholds=False)
    if reference_checkpoint is not None:
        _load_into(net, read_state_dict(reference_checkpoint), reference_checkpoint, need_thresholds=True)
    return net


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
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
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
    return {
        "format": FORMAT,
        "toolkit_version": __version__,
        "architecture": model.ltmp.architecture,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()},
        "num_classes": int(model.num_classes),
        "mode": model.ltmp.mode,
        "thresholds": {"merge": merge, "prune": prune},
        "schedule": model.ltmp.schedule.pairs() if model.ltmp.schedule is not None else None,
        "tau": model.ltmp.tau,
    }


def save_checkpoint(model: LTMPVisionTransformer, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write the toolkit checkpoint atomically: whole or not at all."""
    meta = {**metadata(model), **(extra or {})}
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
    try:
        meta = json.loads(safetensors_metadata(path)[CHECKPOINT_METADATA_KEY])
    except (TypeError, ValueError) as err:
        raise LTMPError(f"{path}: its ltmp-deploy metadata is not readable JSON ({err})") from err
    if not isinstance(meta, dict):
        raise LTMPError(f"{path}: its ltmp-deploy metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise LTMPError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    return meta


def open_model(spec: str | os.PathLike, weights: str | os.PathLike | None = None) -> LTMPVisionTransformer:
    """A toolkit checkpoint or a model description JSON (told by content, whatever the name), or a
    timm model name patched fresh; a file that is neither is refused rather than looked up as a name.
    ``weights``: timm weights for a name or a description (a checkpoint carries its own)."""
    if not os.path.exists(spec):
        return create_model(str(spec), weights=weights)
    what = f"{FileKind.TOOLKIT_CHECKPOINT.human}, a model description JSON or a timm model name"
    kinds = (FileKind.TOOLKIT_CHECKPOINT, FileKind.SAFETENSORS, FileKind.JSON)
    if expect(spec, *kinds, what=what) is FileKind.JSON:
        return create_model(str(spec), weights=weights)
    if weights is not None:
        raise LTMPError(f"--weights: {spec} is a toolkit checkpoint and carries its own weights")
    return load_checkpoint(spec)  # a plain safetensors file gets its advice there


def load_checkpoint(path: str | os.PathLike, mode: str | None = None) -> LTMPVisionTransformer:
    """Rebuild the patched model from a toolkit checkpoint, in its saved mode unless told."""
    meta = read_metadata(path)
    model = apply_patch(build_model(meta["architecture"]).eval(), mode="threshold", architecture=meta["architecture"])
    _load_into(model, read_state_dict(path), path, need_thresholds=True)
    model.ltmp.tau = float(meta.get("tau", model.ltmp.tau))
    schedule = Schedule.from_pairs(meta["schedule"]) if meta.get("schedule") else None
    try:
        model.ltmp_set_mode(mode or meta["mode"], schedule)
    except LTMPError as err:
        raise LTMPError(f"{path}: {err}") from err
    return model
