"""The preprocessing a model carries: timm's data config, at the size its patch embedding takes.

A model's preprocessing lives where timm keeps it, in ``model.pretrained_cfg``: timm's
``resolve_data_config`` reads it, so every step (learning, calibration, export metadata, the
runtime's preprocess) sees the same values, and checkpoints carry it in their metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm.data
import torch

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.schemas import check

# What a user may set; the input size is the patch embedding's (set it with the img_size argument).
PREPROCESSING = ("mean", "std", "crop_pct", "crop_mode", "interpolation")


def model_data_config(model: torch.nn.Module) -> dict:
    """timm's preprocessing config of ``model``, at the input size its patch embedding takes.

    A model built from a class and config carries timm's default 224 in its pretrained_cfg; the
    size its weights were made for is the patch embedding's.
    """
    cfg = timm.data.resolve_data_config({}, model=model)
    embed = getattr(model, "patch_embed", None)
    if embed is not None:
        cfg["input_size"] = (embed.proj.in_channels, *embed.img_size)
    return cfg


def set_preprocessing(model: torch.nn.Module, values: Mapping[str, Any], where: str) -> None:
    """Make ``values`` (any of :data:`PREPROCESSING`) part of ``model``'s preprocessing; the result is
    checked against the data-config schema, so a bad value is one line starting with ``where``."""
    if not isinstance(values, Mapping):
        raise LTMPError(f"{where}: preprocessing must be a JSON object of {', '.join(PREPROCESSING)}")
    if "input_size" in values:
        raise LTMPError(f"{where}: the input size is the model's own: set it with the img_size argument")
    unknown = sorted(set(values) - set(PREPROCESSING))
    if unknown:
        raise LTMPError(f"{where}: unknown preprocessing key {unknown[0]!r} (expected {', '.join(PREPROCESSING)})")
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if not given:
        return
    before = getattr(model, "pretrained_cfg", None)
    model.pretrained_cfg = {**(before or {}), **given}
    try:
        cfg = check(jsonable(model_data_config(model)), "data-config", where)
        channels = cfg["input_size"][0]
        for key in ("mean", "std"):
            if len(cfg[key]) != channels:
                raise LTMPError(f"{where}: {key} has {len(cfg[key])} values for {channels} input channels")
    except LTMPError:
        model.pretrained_cfg = before
        raise


def jsonable(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A data config as JSON values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
