"""Which input patches each token stands for, block after block: the source map, in NumPy.

An export with ``--decisions`` gives, per block and image, the input position of every output
token (``kept``) and, for every even input position, the input position it merged into
(``merge_dst``), both padded with -1 (see ``ltmp.reduce.Decision``). Composed over the blocks
they say which patches each surviving token stands for, as PyTorch's tracked source map does
(``forward_ltmp(track_source=True)``, turned into the same maps by ``ltmp.token_maps``). Patches
are numbered row by row over the patch grid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ltmp_deploy.errors import LTMPError


@dataclass(frozen=True)
class PatchMap:
    """One block's outcome for one image.

    ``owner[p]``: the output token patch ``p`` now belongs to, -1 when no token stands for it
    any more (pruned, here or in an earlier block). Only which patches share an owner matters,
    not the owner's number. ``kept``: tokens leaving the block, prefix tokens included.
    """

    block: int
    kept: int
    owner: np.ndarray  # (P,) int64

    @property
    def pruned(self) -> list[int]:
        return np.flatnonzero(self.owner < 0).tolist()

    @property
    def groups(self) -> list[list[int]]:
        """Patches of every token that stands for more than one, in token order."""
        tokens, counts = np.unique(self.owner[self.owner >= 0], return_counts=True)
        return [np.flatnonzero(self.owner == t).tolist() for t in tokens[counts > 1]]

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block, "kept": self.kept, "pruned": self.pruned, "merged": self.groups}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], num_patches: int) -> PatchMap:
        """The inverse of :meth:`to_json`; untouched patches get owners of their own."""
        owner = np.arange(num_patches, dtype=np.int64) + num_patches
        try:
            owner[np.asarray(doc["pruned"], dtype=np.int64)] = -1
            for g, patches in enumerate(doc["merged"]):
                owner[np.asarray(patches, dtype=np.int64)] = g
            return cls(int(doc["block"]), int(doc["kept"]), owner)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise LTMPError(f"block entry {dict(doc)!r:.80}: not a block of {num_patches} patches ({err})") from err


def owner_of(source: np.ndarray) -> np.ndarray:
    """(K, P) bool source map -> (P,) the token holding each patch, -1 for none."""
    return np.where(source.any(axis=0), source.argmax(axis=0), -1).astype(np.int64)


def compose(
    kept: Sequence[np.ndarray], merge_dst: Sequence[np.ndarray], num_prefix: int, num_patches: int
) -> list[PatchMap]:
    """Per block, the patch map of one image from its (K,) ``kept`` and (S,) ``merge_dst`` rows."""
    source = np.zeros((num_prefix + num_patches, num_patches), dtype=bool)
    source[num_prefix + np.arange(num_patches), np.arange(num_patches)] = True
    maps = []
    for block, (k, m) in enumerate(zip(kept, merge_dst)):
        k, m = np.asarray(k), np.asarray(m)
        src = np.flatnonzero(m >= 0)
        dst, k = m[src], k[k >= 0]
        if max(dst.max(initial=-1), 2 * src.max(initial=-1), k.max(initial=-1)) >= len(source):
            raise LTMPError(
                f"block {block}: its decisions name token positions past the {len(source)} tokens entering it "
                f"({num_prefix} prefix tokens and {num_patches} patches expected)"
            )
        grown = source.copy()
        np.logical_or.at(grown, dst, source[2 * src])  # a destination also stands for what merged into it
        source = grown[k]
        maps.append(PatchMap(block, len(k), owner_of(source)))
    return maps


def image_maps(decisions: Sequence[Any], i: int, num_prefix: int, num_patches: int) -> list[PatchMap]:
    """The patch maps of image ``i`` of a batch's decisions (``Result.decisions``)."""
    return compose([d.kept[i] for d in decisions], [d.merge_dst[i] for d in decisions], num_prefix, num_patches)


def patch_grid(meta: Mapping[str, Any], where: str | os.PathLike) -> tuple[int, int]:
    """Rows and columns of patches, from a file's metadata."""
    grid = meta.get("patch_grid")
    if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
        raise LTMPError(f"{where}: its metadata has no patch_grid (an export by an older ltmp-deploy); export it again")
    return grid[0], grid[1]


__all__ = ["PatchMap", "compose", "image_maps", "owner_of", "patch_grid"]
