"""What the model threw away, from PyTorch: per block, which patches each surviving token stands for.

The source map the model tracks (``forward_ltmp(track_source=True)``) as one
:class:`~ltmp_deploy.runtime.patch_maps.PatchMap` per block: the maps the runtime composes from an
exported graph's decision outputs or reads back from an audit log, so ``ltmp_deploy.pictures`` draws
all three alike.
"""

from __future__ import annotations

import torch

from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.runtime.patch_maps import PatchMap, owner_of


def token_maps(model: LTMPVisionTransformer, image: torch.Tensor) -> list[PatchMap]:
    """Per block, which input patches each surviving token of ``image`` stands for (-1: pruned).
    ``image``: one preprocessed (3, H, W) tensor, on the model's device."""
    with torch.no_grad():
        out = model.forward_ltmp(image[None], track_source=True)
    maps = []
    for i, d in enumerate(out.decisions):
        kept = int(d.n_out[0].round())
        source = d.source[0][:kept] > 0.5  # (kept, P): rows past the kept tokens are padding
        maps.append(PatchMap(i, kept, owner_of(source.cpu().numpy())))
    return maps
