"""Token pictures: what the model threw away, drawn over the image it saw (NumPy and Pillow only).

One panel per block, after the input, in a grid: pruned patches are greyed out, every merged
group (a token standing for several patches) is tinted and outlined in its own colour, and
untouched patches keep the image. The picture depends only on the patch maps (which patches
share a token, which are gone), so a checkpoint, an exported graph and an audit log line that
agree on the decisions give the same pixels. ``ltmp_deploy.pictures`` gathers the maps and writes
the files.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.patch_maps import PatchMap

PANEL = 192  # pixels per panel side (the long one for a non-square input)
GAP = 8  # white space right of each panel
LABEL = 40  # white space under each panel for its two lines of text
COLUMNS = 7  # panels per row: the input and six blocks
GREY = 128.0
GOLDEN = 0.618033988749895  # hue step between consecutive groups: any few of them differ


def group_colour(rank: int) -> np.ndarray:
    """The colour of a panel's ``rank``-th merged group (0, 1, ...)."""
    r, g, b = colorsys.hsv_to_rgb((rank * GOLDEN) % 1.0, 0.85, 1.0)
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _edges(n: int, length: int) -> list[int]:
    return [i * length // n for i in range(n + 1)]


def _panel(base: np.ndarray, owner: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """One block's panel: ``base`` (h, w, 3) float32 with the owner map (rows, columns) drawn on it."""
    panel = base.copy()
    ys, xs = _edges(grid[0], panel.shape[0]), _edges(grid[1], panel.shape[1])
    line = max(2, min(ys[1] - ys[0], xs[1] - xs[0]) // 10)
    sizes = np.bincount(owner[owner >= 0], minlength=1)
    # Groups are coloured in the order of their first patches: neighbours in that order get
    # distant hues, so the groups of one panel are told apart.
    firsts = {}
    for p, o in enumerate(owner.ravel()):
        if o >= 0 and sizes[o] > 1:
            firsts.setdefault(int(o), p)
    colours = {o: group_colour(rank) for rank, o in enumerate(sorted(firsts, key=firsts.get))}
    for r in range(grid[0]):
        for c in range(grid[1]):
            cell = panel[ys[r] : ys[r + 1], xs[c] : xs[c + 1]]
            o = owner[r, c]
            if o < 0:
                cell[...] = 0.35 * cell.mean(axis=-1, keepdims=True) + 0.65 * GREY
                continue
            if sizes[o] < 2:
                continue
            colour = colours[int(o)]
            cell[...] = 0.7 * cell + 0.3 * colour
            # An outline on every side that borders another token (or the image edge).
            if r == 0 or owner[r - 1, c] != o:
                cell[:line] = colour
            if r == grid[0] - 1 or owner[r + 1, c] != o:
                cell[-line:] = colour
            if c == 0 or owner[r, c - 1] != o:
                cell[:, :line] = colour
            if c == grid[1] - 1 or owner[r, c + 1] != o:
                cell[:, -line:] = colour
    return panel


def draw(picture: np.ndarray, maps: Sequence[PatchMap], grid: tuple[int, int], columns: int = COLUMNS) -> Image.Image:
    """The grid for one image: ``picture`` (H, W, 3) uint8 as the model saw it, then one panel per
    block of ``maps`` over a ``grid`` (rows, columns) of patches."""
    h, w = picture.shape[:2]
    size = (PANEL, max(1, round(PANEL * h / w))) if w >= h else (max(1, round(PANEL * w / h)), PANEL)
    base = np.asarray(Image.fromarray(picture).convert("RGB").resize(size, Image.NEAREST), dtype=np.float32)
    panels = [(base, "input", "")]
    for m in maps:
        if m.owner.size != grid[0] * grid[1]:
            raise LTMPError(
                f"block {m.block}: a map of {m.owner.size} patches does not fit a {grid[0]}x{grid[1]} patch grid"
            )
        pruned, groups = m.pruned, m.groups
        owner = m.owner.reshape(grid)
        panels.append(
            (
                _panel(base, owner, grid),
                f"block {m.block}: {m.kept} tokens left",
                f"{len(groups)} merged groups, {len(pruned)} pruned",
            )
        )
    cols = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / cols)
    cell_w, cell_h = size[0] + GAP, size[1] + LABEL
    canvas = Image.new("RGB", (cell_w * cols, cell_h * rows), "white")
    text = ImageDraw.Draw(canvas)
    for i, (pixels, first, second) in enumerate(panels):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        canvas.paste(Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8)), (x, y))
        text.text((x + 4, y + size[1] + 6), first, fill="black")
        text.text((x + 4, y + size[1] + 20), second, fill="black")
    return canvas


__all__ = ["COLUMNS", "PANEL", "draw", "group_colour"]
