"""FLOPs accounting, counted in multiply-accumulates (MACs) of matmuls, linears and convs.

Elementwise work (norms, softmax, GELU, masks) is not counted, which is what torch's
FlopCounterMode and fvcore count too; FLOPs = 2 x MACs when a number must match theirs.

Block MACs with ``n`` tokens entering and ``n'`` leaving, width ``d``, attention width ``a``
(``a = d`` for every ViT/DeiT) and MLP hidden width ``h`` (docs/arithmetic.md#flops-model):
attention ``4*n*d*a + 2*n^2*a`` (qkv 3nda, logits n^2 a, A@V n^2 a, proj nda), MLP ``2*n'*d*h``.
The reduction's own matmuls (cosine similarity and the merge assignment) are reported apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Union

import torch
from torch import Tensor

from ltmp_deploy.ltmp.reduce import Decision
from ltmp_deploy.ltmp.schedule import Schedule

Count = Union[int, float, Tensor]


@dataclass(frozen=True)
class Dims:
    dim: int
    attn_dim: int
    head_dim: int
    mlp_hidden: int
    depth: int
    num_patches: int
    num_prefix: int
    patch_macs: int  # per patch: in_chans * patch_h * patch_w * dim
    head_macs: int  # classifier(s) on the pooled features

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix


def model_dims(model: Any) -> Dims:
    blk = model.blocks[0]
    proj = model.patch_embed.proj
    heads = [m for m in (model.head, getattr(model, "head_dist", None)) if isinstance(m, torch.nn.Linear)]
    return Dims(
        dim=model.embed_dim,
        attn_dim=blk.attn.num_heads * blk.attn.head_dim,
        head_dim=blk.attn.head_dim,
        mlp_hidden=blk.mlp.fc1.out_features,
        depth=len(model.blocks),
        num_patches=model.patch_embed.num_patches,
        num_prefix=model.num_prefix_tokens,
        patch_macs=proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] * proj.out_channels,
        head_macs=sum(h.in_features * h.out_features for h in heads),
    )


def block_macs(dims: Dims, n_in: Count, n_out: Count) -> Count:
    """MACs of one block: attention over ``n_in`` tokens, MLP over ``n_out`` (ints or tensors)."""
    attention = 4 * n_in * dims.dim * dims.attn_dim + 2 * n_in * n_in * dims.attn_dim
    mlp = 2 * n_out * dims.dim * dims.mlp_hidden
    return attention + mlp


def reduction_macs(dims: Dims, n_in: Count, merging: Count | None = None) -> Count:
    """MACs of the merge/prune matmuls: the similarity, and the merge matmul that moves the
    merging sources' features into the destinations. Both modes compute over the whole token
    axis, where positions that are not sources, or receive nothing, come out masked or unchanged:
    threshold mode (``merging`` None) the odd positions, plus one padded row, against every
    position, then every even position weighted by its merge flag; fixed mode (``merging``: its r)
    the destinations against every position, then its r chosen sources alone."""
    if merging is None:
        return (n_in // 2 + 1) * n_in * dims.head_dim + n_in * ((n_in + 1) // 2) * dims.dim
    dests = n_in // 2 - dims.num_prefix // 2
    return n_in * dests * dims.head_dim + n_in * merging * dims.dim


@dataclass(frozen=True)
class FlopsReport:
    """Per-image MACs; ``ratio`` is patched block MACs over unpatched block MACs."""

    blocks: float
    reduction: float
    embed_and_head: float
    unpatched_blocks: float

    @property
    def total(self) -> float:
        return self.blocks + self.reduction + self.embed_and_head

    @property
    def unpatched_total(self) -> float:
        return self.unpatched_blocks + self.embed_and_head

    @property
    def ratio(self) -> float:
        return self.blocks / self.unpatched_blocks

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total, "unpatched_total": self.unpatched_total, "ratio": self.ratio}


def _report(
    dims: Dims, counts: list[tuple[Count, Count]], reduce: bool, merges: Sequence[int] | None = None
) -> FlopsReport:
    n = dims.num_tokens
    merging = merges if merges is not None else [None] * len(counts)
    return FlopsReport(
        blocks=float(sum(block_macs(dims, a, b) for a, b in counts)),
        reduction=float(sum(reduction_macs(dims, a, r) for (a, _), r in zip(counts, merging))) if reduce else 0.0,
        embed_and_head=float(dims.num_patches * dims.patch_macs + dims.head_macs),
        unpatched_blocks=float(dims.depth * block_macs(dims, n, n)),
    )


def unpatched_flops(model: Any) -> FlopsReport:
    dims = model_dims(model)
    return _report(dims, [(dims.num_tokens, dims.num_tokens)] * dims.depth, reduce=False)


def schedule_flops(model: Any, schedule: Schedule, reduce: bool = True) -> FlopsReport:
    """Per-image MACs of fixed mode (``reduce=False``: the oracle, same counts, no reduction)."""
    dims = model_dims(model)
    return _report(dims, schedule.token_counts(dims.num_tokens), reduce, schedule.merges)


def image_flops(model: Any, decisions: list[Decision]) -> list[FlopsReport]:
    """Per-image MACs from the decisions of a forward pass (each image at its own counts)."""
    dims = model_dims(model)
    n_in = torch.stack([d.n_in for d in decisions], dim=1).round().long().tolist()
    n_out = torch.stack([d.n_out for d in decisions], dim=1).round().long().tolist()
    return [_report(dims, list(zip(a, b)), reduce=True) for a, b in zip(n_in, n_out)]


def padded_flops_ratio(model: Any, decisions: list[Decision], images: int | None = None) -> float:
    """Block FLOPs of a threshold-mode batch over unpatched with every image at the batch's
    largest counts: what a padded batch computes (static schedules compute their own counts).
    ``images``: of a batch of the first ``images`` images only (an image's counts do not depend on
    the batch it runs in)."""
    dims = model_dims(model)
    n = dims.num_tokens
    kept = sum(
        block_macs(dims, int(d.n_in[:images].max().round()), int(d.n_out[:images].max().round())) for d in decisions
    )
    return float(kept / (dims.depth * block_macs(dims, n, n)))


def kept_flops_ratio(model: Any, decisions: list[Decision]) -> Tensor:
    """Differentiable fraction of the unpatched block MACs that the training masks keep.

    From the batch-mean token counts entering and leaving each block: ``r_flops`` of the budget loss
    (docs/arithmetic.md#budget-loss).
    """
    return flops_ratio_of_token_means(model, soft_token_means(decisions))


def soft_token_means(decisions: list[Decision]) -> Tensor:
    """(blocks, 2): the batch means of the soft token counts entering and leaving each block."""
    return torch.stack([torch.stack([d.soft_keep_in.mean(), d.soft_keep_out.mean()]) for d in decisions])


def flops_ratio_of_token_means(model: Any, means: Tensor) -> Tensor:
    """:func:`kept_flops_ratio` from :func:`soft_token_means` (of one batch, or averaged over processes)."""
    dims = model_dims(model)
    n = dims.num_tokens
    kept = sum(block_macs(dims, m_in, m_out) for m_in, m_out in means)
    return kept / (dims.depth * block_macs(dims, n, n))


def schedule_for_flops(model: Any, target: float) -> Schedule:
    """A fixed schedule keeping about ``target`` of the block MACs: the same keep ratio each block,
    half of the removed tokens merged and half pruned (a plain starting point, not a learned one)."""
    dims = model_dims(model)
    full = dims.depth * block_macs(dims, dims.num_tokens, dims.num_tokens)
    lo, hi = 0.0, 1.0
    for _ in range(50):  # bisect the per-block keep ratio
        mid = (lo + hi) / 2
        sched = _geometric(dims, mid)
        cost = sum(block_macs(dims, a, b) for a, b in sched.token_counts(dims.num_tokens))
        lo, hi = (mid, hi) if cost < target * full else (lo, mid)
    return _geometric(dims, hi)


def _geometric(dims: Dims, keep: float) -> Schedule:
    merges, keeps, n = [], [], dims.num_tokens
    for _ in range(dims.depth):
        patches = n - dims.num_prefix
        drop = patches - max(1, round(patches * keep))
        mergeable = (n + 1) // 2 - (dims.num_prefix + 1) // 2
        r = min(drop // 2, mergeable)
        k = n - drop
        merges.append(r)
        keeps.append(k)
        n = k
    return Schedule(tuple(merges), tuple(keeps))
