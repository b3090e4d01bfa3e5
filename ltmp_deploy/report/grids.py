"""Token pictures of a PyTorch model: its decisions (``ltmp.token_maps.token_maps``) drawn by the
same drawer the runtime uses for exported graphs and audit logs, so every source gives one picture."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ltmp_deploy.ltmp.token_maps import token_maps
from ltmp_deploy.runtime.sources import PatchMap
from ltmp_deploy.runtime.visualize import draw, save_png


def checkpoint_maps(model: torch.nn.Module, image: torch.Tensor) -> list[PatchMap]:
    """Per block, which input patches each surviving token of ``image`` (C, H, W, preprocessed) stands for."""
    return [PatchMap(m["block"], m["kept"], m["owner"].astype("int64")) for m in token_maps(model, image)]


def token_grid(model: torch.nn.Module, image: torch.Tensor, display: np.ndarray, out: str | os.PathLike) -> Path:
    """Draw ``image``'s decisions over ``display`` ((H, W, 3) uint8, the picture as the model saw it)."""
    grid = tuple(model.patch_embed.grid_size)
    return save_png(draw(display, checkpoint_maps(model, image), grid), out)
