"""What the model threw away, from PyTorch: per block, which patches each surviving token stands for.

The source map the model tracks (``forward_ltmp(track_source=True)``) turned into one owner map
per block; ``ltmp_deploy.runtime.visualize`` draws it, as it draws the maps composed from an
exported graph's decision outputs or read back from an audit log.
"""

from __future__ import annotations

from typing import Any

import torch

from ltmp_deploy.ltmp.patch import LTMPVisionTransformer


def token_maps(model: LTMPVisionTransformer, image: torch.Tensor) -> list[dict[str, Any]]:
    """Per block: ``owner`` (P,) the output token each patch now belongs to (-1: pruned), and the
    block's counts. ``image``: one preprocessed (3, H, W) tensor, on the model's device."""
    with torch.no_grad():
        out = model.forward_ltmp(image[None], track_source=True)
    maps = []
    for i, d in enumerate(out.decisions):
        source = d.source[0]  # (K, P)
        slots = torch.arange(source.shape[0], device=source.device)
        valid = slots < int(d.n_out[0].round())
        owner = torch.where(valid[:, None] & (source > 0.5), slots[:, None], -1).max(dim=0).values.cpu()
        maps.append(
            {
                "block": i,
                "owner": owner.numpy(),
                "kept": int(d.n_out[0].round()),
                "merged": int(d.merged()[0].sum()),
                "pruned": int(d.pruned()[0].sum()),
            }
        )
    return maps
