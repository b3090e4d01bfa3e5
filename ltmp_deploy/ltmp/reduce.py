"""The LTMP arithmetic: bipartite matching, merge and prune, as functions over tensors.

One implementation serves every mode and every backend. It is written with operations that
export to ONNX as TopK, Gather, MatMul, comparisons and elementwise ops, so eager PyTorch and
the exported graph compute the same thing:

- no boolean-mask indexing (shapes would depend on data in a way exporters cannot express),
- no ``.item()`` / ``.tolist()`` on data, no Python loops over images,
- no ``scatter_reduce``: merging is a matmul with a one-hot source->destination assignment.

A block's reduction is decided once (which sources merge where, which tokens stay, in which
order) and the decision is applied to every tensor that rides along: features, sizes, validity
and the source map (as ToMe does with its ``merge`` closures).

Modes differ only in how the two decisions are taken (see LTMP_SPEC.md):

- ``fixed``: the ``r`` best-matching sources merge and the ``k`` most important tokens stay:
  static counts, so static shapes.
- ``threshold``: a source merges iff its best similarity exceeds the merge threshold, a token
  stays iff its importance exceeds the prune threshold. A batch is padded to its largest kept
  count; padding sits after the valid tokens and is marked invalid.
- ``train``: the threshold decisions made soft (straight-through sigmoid), nothing removed: dead
  tokens move to the end with validity 0, so the next block sees the same order as inference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

NEG_INF = float("-inf")


@dataclass
class Tokens:
    """The token state that flows from block to block, passed explicitly (never stashed)."""

    x: Tensor  # (B, N, C) features: size-weighted averages of the patches a token stands for
    size: Tensor  # (B, N) how many input patches each token stands for
    valid: Optional[Tensor] = None  # (B, N) 1 real token, 0 padding/dead; None: all real
    source: Optional[Tensor] = None  # (B, N, P) which input patches each token stands for


@dataclass
class Plan:
    """How one block reduces: the mode and its parameters."""

    mode: str  # "fixed" | "threshold" | "train" | "oracle" | "off"
    r: int = 0  # fixed: sources merged
    k: int = 0  # fixed / oracle: tokens left after pruning
    merge_threshold: Optional[Tensor] = None
    prune_threshold: Optional[Tensor] = None
    tau: float = 0.1  # train: temperature of the soft masks


@dataclass
class Decision:
    """What one block did, per image, in the block's input positions."""

    kept: Tensor  # (B, K) input position of every output token; -1 for padding
    merge_dst: Tensor  # (B, Ns) for source s (input position 2s): its destination's input position, or -1
    n_in: Tensor  # (B,) valid tokens entering the block
    n_out: Tensor  # (B,) valid tokens leaving it
    length: int = 0  # tokens in the block's (padded) input
    source: Optional[Tensor] = None  # (B, K, P) when tracked: the input patches of each output token
    soft_keep_in: Optional[Tensor] = None  # train: (B,) mean-mask token count entering (with gradients)
    soft_keep_out: Optional[Tensor] = None  # train: (B,) after merge and prune (with gradients)

    def merged(self) -> Tensor:
        """(B, length) True for every input token that merged into another."""
        flags = torch.zeros(self.merge_dst.shape[0], 2 * self.merge_dst.shape[1], dtype=torch.bool, device=self.kept.device)
        flags[:, 0::2] = self.merge_dst >= 0
        return flags[:, : self.length]

    def pruned(self) -> Tensor:
        """(B, length) True for every real input token that neither stayed nor merged."""
        pos = torch.arange(self.length, device=self.kept.device)
        real = pos[None, :] < self.n_in.round()[:, None]
        stayed = (self.kept[:, :, None] == pos).any(dim=1)
        return real & ~stayed & ~self.merged()


def straight_through(score: Tensor, threshold: Tensor, tau: float) -> Tensor:
    """Hard 0/1 decision ``score > threshold`` forward, sigmoid gradient backward."""
    soft = torch.sigmoid((score - threshold) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


def top_indices(score: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries along the last axis, ties to the lower index.

    LTMP_SPEC.md breaks ties by lower index. ONNX's TopK promises exactly that, so exported
    graphs use TopK; PyTorch's ``topk`` promises no order among equal values, so eager mode uses
    a stable sort, which the TorchScript exporter cannot express. Same answer, two spellings.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(score, k, dim=-1, largest=True, sorted=True).indices
    return torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :k]


def smallest_unique(key: Tensor, k: int | Tensor) -> Tensor:
    """Indices of the ``k`` smallest of distinct keys, in ascending order (a TopK in ONNX).

    Keys are small integers (< 3N), exact in float32; TensorRT 8.5 has no integer TopK.
    """
    return torch.topk(key.float(), k, dim=-1, largest=False, sorted=True).indices


def token_importance(attn: Tensor, valid: Optional[Tensor], num_prefix: int) -> Tensor:
    """Mean attention each key receives, over heads and valid query rows; prefix gets +inf.

    attn: (B, H, N, N) post-softmax. Padding queries are left out of the mean so that an image
    in a padded batch gets what it gets alone.
    """
    # Reduced one axis at a time, queries first: ONNX Runtime's CPU kernels reduce (B, H, N, N)
    # over both axes at once ~5x slower (measured at N=197), and this sits in every block.
    if valid is None:
        imp = attn.mean(dim=2).mean(dim=1)
    else:
        # Valid queries only: a (1 x N) @ (N x N) product per head instead of a masked copy of attn.
        received = (valid[:, None, None, :] @ attn).mean(dim=1)[:, 0]
        imp = received / valid.sum(dim=-1, keepdim=True)
    pos = torch.arange(imp.shape[1], device=imp.device)
    return torch.where(pos < num_prefix, float("inf"), imp)


def bipartite_match(metric: Tensor, valid: Optional[Tensor], num_prefix: int, guard: bool = True) -> tuple[Tensor, Tensor]:
    """Best destination (odd positions) for every source (even positions) by cosine similarity.

    Returns ``(best, dst)``: (B, Ns) similarity of each source's best destination (-inf where the
    source may not merge) and that destination's index among the destinations.
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    src, dst = metric[:, ::2], metric[:, 1::2]
    sim = src @ dst.transpose(1, 2)

    n = metric.shape[1]
    pos = torch.arange(n, device=metric.device)
    src_ok, dst_ok = pos[::2] >= num_prefix, pos[1::2] >= num_prefix
    allowed = src_ok[None, :, None] & dst_ok[None, None, :]
    if valid is not None:
        alive = valid > 0.5
        allowed = allowed & alive[:, ::2, None] & alive[:, 1::2, None].transpose(1, 2)
    sim = torch.where(allowed, sim, NEG_INF)
    # A -inf column past the last destination: a block left with one token has no destination
    # at all, and a reduction over an empty axis is an error in PyTorch and ONNX alike. Callers
    # that know there is a destination (fixed mode: static token counts) leave it out.
    if guard:
        sim = torch.nn.functional.pad(sim, (0, 1), value=NEG_INF)
    best, dst_idx = sim.max(dim=-1)
    return best, dst_idx


def merge_weights(best: Tensor, plan: Plan) -> Tensor:
    """(B, Ns) 1 for every source that merges, 0 otherwise (straight-through in training)."""
    if plan.mode == "fixed":
        chosen = top_indices(best, plan.r)  # (B, r), distinct
        ns = best.shape[1]
        hit = chosen[:, :, None] == torch.arange(ns, device=best.device)
        return hit.to(best.dtype).sum(dim=1)  # exactly 0 or 1: a sum exports shorter than any()
    if plan.mode == "threshold":
        return (best > plan.merge_threshold).to(best.dtype)
    if plan.mode == "train":
        return straight_through(best, plan.merge_threshold, plan.tau)
    raise ValueError(f"no merging in mode {plan.mode!r}")


def _layout_order_key(n: int, num_prefix: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Input position and order key of each slot of the merged layout [sources, destinations].

    Order after merging (LTMP_SPEC.md): unmerged sources in their original order, then the
    destinations in theirs. Prefix tokens are kept in front in their original order, so that a
    distillation token at position 1 (a destination) stays where the head reads it.
    """
    pos = torch.arange(n, device=device)
    orig = torch.cat([pos[::2], pos[1::2]])
    key = torch.where(orig < num_prefix, orig - n, pos)
    return orig, key.float()  # float: the key feeds a TopK (see smallest_unique)


def merge_and_prune(tokens: Tokens, metric: Tensor, imp: Tensor, num_prefix: int, plan: Plan) -> tuple[Tokens, Decision]:
    """One block's reduction: merge (size-weighted), then prune, then compact the tokens."""
    x, size, valid = tokens.x, tokens.size, tokens.valid
    b, n, c = x.shape
    device = x.device

    # Merge: decide once, then apply one assignment matmul to features, sizes and sources alike.
    best, dst_idx = bipartite_match(metric, valid, num_prefix, guard=not (plan.mode == "fixed" and n >= 2))
    w = merge_weights(best, plan)
    # (B, Nd, Ns): destination j receives source i. Built destination-major, as the merge
    # matmul and the max below consume it, so no transpose is needed.
    assign = (torch.arange(n // 2, device=device)[:, None] == dst_idx[:, None, :]).to(x.dtype) * w[:, None, :]

    carried = [x * size[..., None], size[..., None]]
    if tokens.source is not None:
        carried.append(tokens.source)
    payload = torch.cat(carried, dim=-1)
    src_payload, dst_payload = payload[:, ::2], payload[:, 1::2]
    dst_payload = dst_payload + assign @ src_payload

    # A destination is as important as the most important token merged into it.
    imp_src, imp_dst = imp[:, ::2], imp[:, 1::2]
    incoming = torch.where(assign > 0.5, imp_src[:, None, :], NEG_INF)
    imp_dst = torch.maximum(imp_dst, incoming.max(dim=2).values)

    alive_in = torch.ones_like(size) if valid is None else valid
    merged = torch.cat([src_payload, dst_payload], dim=1)
    if plan.mode == "fixed":
        # Fixed mode never pads (valid is None), so only merged sources drop out: mark them in
        # the importance itself rather than build a validity vector that is all ones elsewhere.
        alive = None
        imp_merged = torch.cat([torch.where(w > 0.5, NEG_INF, imp_src), imp_dst], dim=1)
    else:
        alive = torch.cat([alive_in[:, ::2] * (1.0 - w), alive_in[:, 1::2]], dim=1)
        imp_merged = torch.cat([imp_src, imp_dst], dim=1)

    orig, key = _layout_order_key(n, num_prefix, device)
    idx, alive_out = _prune_order(imp_merged, alive, key, plan, num_prefix)

    merged = merged.gather(1, idx[:, :, None].expand(-1, -1, merged.shape[-1]))
    x_sum, new_size = merged[..., :c], merged[..., c]
    new_source = merged[..., c + 1:] if tokens.source is not None else None
    new_x = x_sum / new_size[..., None]

    n_out = alive_out.sum(dim=1) if alive_out is not None else torch.full((b,), idx.shape[1], device=device)
    kept = orig[idx]
    if alive_out is not None:
        kept = torch.where(alive_out > 0.5, kept, -1)
    merge_dst = torch.where(w > 0.5, 2 * dst_idx + 1, -1)
    decision = Decision(
        kept=kept,
        merge_dst=merge_dst,
        n_in=alive_in.sum(dim=1),
        n_out=n_out,
        length=n,
        source=new_source,
    )
    if plan.mode == "train":
        decision.soft_keep_in = alive_in.sum(dim=1)
        decision.soft_keep_out = alive_out.sum(dim=1)
    return Tokens(new_x, new_size, alive_out, new_source), decision


def _prune_order(imp: Tensor, alive: Optional[Tensor], key: Tensor, plan: Plan, num_prefix: int) -> tuple[Tensor, Optional[Tensor]]:
    """Which merged-layout slots survive pruning, in output order; and their validity.

    Returns ``(idx, valid)``: (B, K) slots to gather, and (B, K) validity (None in fixed mode,
    where every output token is real). Fixed mode passes no ``alive``: its dead slots (merged
    sources) already have importance -inf.
    """
    n = imp.shape[1]
    if plan.mode == "fixed":
        chosen = top_indices(imp, plan.k)  # the k most important live tokens...
        order = smallest_unique(key[chosen], plan.k)  # ...in output order
        return chosen.gather(1, order), None

    if plan.mode == "threshold":
        keep = (alive > 0.5) & (imp > plan.prune_threshold)
        if num_prefix == 0:  # no class token to fall back on: the most important token stays
            top = torch.where(alive > 0.5, imp, NEG_INF).argmax(dim=1, keepdim=True)
            keep = keep | (torch.arange(n, device=imp.device)[None, :] == top)
        keep_value = keep.to(imp.dtype)
    elif plan.mode == "train":
        keep_value = alive * straight_through(imp, plan.prune_threshold, plan.tau)
        keep = keep_value > 0.5
    else:
        raise ValueError(f"no pruning in mode {plan.mode!r}")

    # Survivors first (in output order), then the dead; both slots and key stay unique.
    order_key = torch.where(keep, key, key + 2 * n)
    if plan.mode == "train":
        count = n  # nothing is removed while learning; dead tokens only move to the end
    else:
        count = padded_length(keep)
    idx = smallest_unique(order_key, count)
    return idx, keep_value.gather(1, idx)


def padded_length(keep: Tensor) -> int:
    """The largest kept count in the batch, as the shape of a NonZero output.

    Exporters turn this into a shape computation (Shape(NonZero(..))), which TensorRT treats
    as a shape tensor, rather than a value reduced from data and cast (see DESIGN.md). In eager
    PyTorch it is an ordinary int, read without ``.item()``.
    """
    counts = keep.sum(dim=1)  # (B,)
    slots = torch.arange(keep.shape[1], device=keep.device)
    used = (counts[:, None] > slots[None, :]).any(dim=0)
    return torch.nonzero(used).shape[0]


def slice_tokens(tokens: Tokens, k: int) -> Tokens:
    """The oracle's reduction: keep the first ``k`` tokens, with no decision at all."""
    return replace(
        tokens,
        x=tokens.x[:, :k],
        size=tokens.size[:, :k],
        valid=None if tokens.valid is None else tokens.valid[:, :k],
        source=None if tokens.source is None else tokens.source[:, :k],
    )
