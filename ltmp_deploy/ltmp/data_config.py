"""The preprocessing a model carries: timm's data config, at the size its patch embedding takes."""

from __future__ import annotations

import timm.data
import torch


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
