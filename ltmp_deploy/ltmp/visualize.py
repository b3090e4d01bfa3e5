"""What the model threw away: per block, which patches were pruned and which were merged.

One panel per block over the input image: every surviving token's patches share a colour
(a merged group is one colour block, an untouched patch keeps its own tone), pruned patches
turn dark red. Drawn from the source map, the same bookkeeping every backend's decisions follow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ltmp_deploy.files import atomic_output
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer

PANEL = 192  # pixels per panel side


def token_maps(model: LTMPVisionTransformer, image: torch.Tensor) -> list[dict[str, Any]]:
    """Per block: ``owner`` (P,) the output token each patch now belongs to (-1: pruned), and the
    block's counts. ``image``: one preprocessed (3, H, W) tensor."""
    with torch.no_grad():
        out = model.forward_ltmp(image[None], track_source=True)
    maps = []
    for i, d in enumerate(out.decisions):
        source = d.source[0]  # (K, P)
        valid = torch.arange(source.shape[0]) < int(d.n_out[0].round())
        owner = torch.where(valid[:, None] & (source > 0.5), torch.arange(source.shape[0])[:, None], -1).max(dim=0).values
        maps.append({"block": i, "owner": owner.numpy(), "kept": int(d.n_out[0].round()), "merged": int(d.merged()[0].sum()), "pruned": int(d.pruned()[0].sum())})
    return maps


def render(model: LTMPVisionTransformer, image: torch.Tensor, display: np.ndarray, out: str | os.PathLike) -> Path:
    """Write a PNG: the input, then one panel per block. ``display``: (H, W, 3) uint8 of the image."""
    maps = token_maps(model, image)
    grid = model.patch_embed.grid_size
    base = Image.fromarray(display).convert("RGB").resize((PANEL, PANEL), Image.NEAREST)
    canvas = Image.new("RGB", ((PANEL + 8) * (len(maps) + 1), PANEL + 40), "white")
    canvas.paste(base, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, PANEL + 6), "input", fill="black")
    palette = np.random.default_rng(0).integers(60, 255, size=(4096, 3))
    cell_h, cell_w = PANEL / grid[0], PANEL / grid[1]
    for j, m in enumerate(maps, start=1):
        panel = np.asarray(base, dtype=np.float32).copy()
        owner = m["owner"].reshape(grid)
        sizes = np.bincount(owner[owner >= 0].ravel(), minlength=1)
        for r in range(grid[0]):
            for c in range(grid[1]):
                ys, xs = slice(int(r * cell_h), int((r + 1) * cell_h)), slice(int(c * cell_w), int((c + 1) * cell_w))
                o = owner[r, c]
                if o < 0:
                    panel[ys, xs] = 0.25 * panel[ys, xs] + 0.75 * np.array([110.0, 0.0, 0.0])  # pruned: dark red
                elif sizes[o] > 1:
                    panel[ys, xs] = 0.45 * panel[ys, xs] + 0.55 * palette[o % len(palette)]  # merged group
        x0 = j * (PANEL + 8)
        canvas.paste(Image.fromarray(panel.clip(0, 255).astype(np.uint8)), (x0, 0))
        draw.text((x0 + 4, PANEL + 6), f"block {m['block']}: {m['kept']} tokens left", fill="black")
        draw.text((x0 + 4, PANEL + 20), f"{m['merged']} merged, {m['pruned']} pruned", fill="black")
    with atomic_output(out, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return Path(out)
