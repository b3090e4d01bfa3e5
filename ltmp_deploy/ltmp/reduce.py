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

Modes differ only in how the two decisions are taken (docs/arithmetic.md#fixed-mode-and-threshold-mode):

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

    LTMP breaks ties by lower index (docs/arithmetic.md#which-sources-merge). ONNX's TopK promises
    exactly that, so exported graphs use TopK; PyTorch's ``topk`` promises no order among equal
    values, so eager mode uses a stable sort, which the TorchScript exporter cannot express. Same
    answer, two spellings.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(score, k, dim=-1, largest=True, sorted=True).indices
    return torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :k]


def smallest_unique(key: Tensor, k: int | Tensor) -> Tensor:
    """Indices of the ``k`` smallest of distinct keys, in ascending order (a TopK in ONNX).

    Keys are small integers (< 2N), exact in float32; TensorRT 8.5 has no integer TopK.
    """
    return torch.topk(key.float(), k, dim=-1, largest=False, sorted=True).indices


def token_importance(attn: Tensor, valid: Optional[Tensor], num_prefix: int) -> Tensor:
    """Mean attention each key receives, over heads and valid query rows; prefix gets +inf.

    attn: (B, H, N, N) post-softmax. Padding queries are left out of the mean so that an image
    in a padded batch gets what it gets alone.
    """
    # Reduced one axis at a time, queries first: ONNX Runtime's CPU kernels reduce (B, H, N, N)
    # over both axes at once several times slower, and this sits in every block.
    if valid is None:
        imp = attn.mean(dim=2).mean(dim=1)
    else:
        # Valid queries only: a (1 x N) @ (N x N) product per head instead of a masked copy of attn.
        received = (valid[:, None, None, :] @ attn).mean(dim=1)[:, 0]
        imp = received / valid.sum(dim=-1, keepdim=True)
    pos = torch.arange(imp.shape[1], device=imp.device)
    return torch.where(pos < num_prefix, float("inf"), imp)


def layout(num_prefix: int) -> tuple[slice, slice, slice]:
    """Where the prefix, the sources and the destinations sit in a block's input.

    Sources are the even positions, destinations the odd ones, minus the prefix
    (docs/arithmetic.md#sources-destinations-and-key-similarity): a prefix token may neither merge
    nor receive a merge, and slicing the prefix out of the matching does that without a -inf mask
    over the similarity matrix.
    """
    first_src = num_prefix + num_prefix % 2
    first_dst = num_prefix + 1 - num_prefix % 2
    return slice(0, num_prefix), slice(first_src, None, 2), slice(first_dst, None, 2)


def bipartite_match(metric: Tensor, valid: Optional[Tensor], num_prefix: int, guard: bool = True) -> tuple[Tensor, Tensor]:
    """Best destination for every non-prefix source by cosine similarity (see :func:`layout`).

    Returns ``(best, dst)``: (B, Ns) similarity of each source's best destination (-inf where the
    source may not merge) and that destination's index among the destinations.
    """
    _, src, dst = layout(num_prefix)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    sim = metric[:, src] @ metric[:, dst].transpose(1, 2)
    if valid is not None:
        alive = valid > 0.5
        sim = torch.where(alive[:, src, None] & alive[:, None, dst], sim, NEG_INF)
    # A -inf column past the last destination: a block left with no destination at all would
    # reduce over an empty axis, an error in PyTorch and ONNX alike. Callers that know there is
    # a destination (fixed mode's token counts are static) leave it out.
    if guard:
        sim = torch.nn.functional.pad(sim, (0, 1), value=NEG_INF)
    best, dst_idx = sim.max(dim=-1)
    return best, dst_idx


def merging_sources(best: Tensor, plan: Plan) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Which sources merge: ``(w, chosen)``, one of them None.

    Where their number is static (fixed mode), ``chosen`` (B, r) lists the merging sources and the
    merge works on those r rows alone, instead of a dense (Nd x Ns) assignment that costs ~1% of
    the block's FLOPs at N=197 for r ~ 10. Elsewhere ``w`` (B, Ns) is 1 for every source that
    merges and 0 otherwise (straight-through in training), and every source takes part, weighted.
    """
    if plan.mode == "fixed":
        return None, top_indices(best, plan.r)  # (B, r), distinct
    if plan.mode == "threshold":
        return (best > plan.merge_threshold).to(best.dtype), None
    if plan.mode == "train":
        return straight_through(best, plan.merge_threshold, plan.tau), None
    raise ValueError(f"no merging in mode {plan.mode!r}")


class _GatherRowsND(torch.autograd.Function):
    """Export spelling of :func:`take_rows`: one GatherND with ``batch_dims=1``."""

    @staticmethod
    def forward(ctx, t: Tensor, idx: Tensor) -> Tensor:  # noqa: ANN001
        return _take_rows(t, idx)

    @staticmethod
    def symbolic(g, t, idx):  # noqa: ANN001, ANN205  (torch.onnx graph values)
        axes = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.long))
        return g.op("GatherND", t, g.op("Unsqueeze", idx, axes), batch_dims_i=1)


def _take_rows(t: Tensor, idx: Tensor) -> Tensor:
    b, n = t.shape[0], t.shape[1]
    rows = idx + torch.arange(0, b * n, n, device=idx.device)[:, None]
    return t.flatten(0, 1)[rows]


def take_rows(t: Tensor, idx: Tensor) -> Tensor:
    """``t[b, idx[b, j]]`` for every image: (B, N, ...) and (B, K) give (B, K, ...).

    Whole rows are copied: eager PyTorch indexes the batch flattened into rows (faster on a CPU
    than ``gather`` with the index expanded over the row), and exports use ONNX's GatherND with
    one batch dimension, which TensorRT imports from 8.2 on. Exported, ``gather`` would be an
    Expand materialised in int64 and a GatherElements that reads an index per element, slower in
    ONNX Runtime. Same rows either way.
    """
    if torch.onnx.is_in_onnx_export():
        return _GatherRowsND.apply(t, idx)
    return _take_rows(t, idx)


def merge_and_prune(tokens: Tokens, metric: Tensor, imp: Tensor, num_prefix: int, plan: Plan, record: bool = True) -> tuple[Tokens, Optional[Decision]]:
    """One block's reduction: merge (size-weighted), then prune, then compact the tokens.

    The merged layout is [prefix, sources, destinations]: prefix tokens in front in their
    original order (so that a distillation token, an odd position, stays where the head reads
    it), then the sources and the destinations in their original orders
    (docs/arithmetic.md#order-after-merging). Slot order is output order, so pruning only sorts slot indices.
    With ``record`` False no :class:`Decision` is built (None): nothing reads it when only the
    logits are wanted, and its bookkeeping is a dozen small kernels per block on a GPU.
    """
    x, size, valid = tokens.x, tokens.size, tokens.valid
    n = x.shape[1]
    device = x.device
    prefix, src, dst = layout(num_prefix)

    # Merge: decide once, then apply one assignment matrix to features, sizes and sources alike.
    # Reductions over sources or destinations get a -inf guard entry where either may be empty
    # (threshold mode's token counts are only known at run time).
    ns, nd = x[:, src].shape[1], x[:, dst].shape[1]
    guard = plan.mode != "fixed" or min(ns, nd, plan.r) == 0
    best, dst_idx = bipartite_match(metric, valid, num_prefix, guard=guard)
    w, chosen = merging_sources(best, plan)

    def merging(t: Tensor) -> Tensor:
        """The rows of source tensor ``t`` (B, Ns, ...) that take part in the merge."""
        if chosen is None:
            return t
        return take_rows(t, chosen) if t.dim() == 3 else t.gather(1, chosen)

    # (B, Nd, M): destination j receives merging source i. Built destination-major, as the merge
    # matmul and the max below consume it, so no transpose is needed.
    hit = torch.arange(nd, device=device)[:, None] == merging(dst_idx)[:, None, :]
    assign = hit.to(x.dtype)
    if chosen is None:
        assign = assign * w[:, None, :]
        hit = assign > 0.5

    # Only destinations change. Their features are the size-weighted mean of what they absorb,
    # computed on the destination rows alone: carrying x * size through the whole layout and
    # dividing it back costs several passes over every token, for the same value
    # (docs/arithmetic.md#merging-size-weighted-means).
    moved = assign * merging(size[:, src])[:, None, :]  # patches destination j takes from source i
    size_dst = size[:, dst] + moved.sum(dim=-1)
    x_dst = x[:, dst] * (size[:, dst] / size_dst)[..., None] + (moved / size_dst[..., None]) @ merging(x[:, src])

    def laid_out(t: Tensor, t_dst: Tensor, t_src: Optional[Tensor] = None) -> Tensor:
        """``t`` in the merged layout, with its destination rows (and source rows) replaced."""
        parts = [t[:, src] if t_src is None else t_src, t_dst]
        return torch.cat([t[:, prefix]] + parts if num_prefix else parts, dim=1)

    # A destination is as important as the most important token merged into it.
    imp_src = imp[:, src]
    incoming = torch.where(hit, merging(imp_src)[:, None, :], NEG_INF)
    if guard:
        incoming = torch.nn.functional.pad(incoming, (0, 1), value=NEG_INF)
    imp_dst = torch.maximum(imp[:, dst], incoming.max(dim=2).values)

    if plan.mode == "fixed":
        # Fixed mode never pads (valid is None), so only merged sources drop out: mark them in
        # the importance itself rather than build a validity vector that is all ones elsewhere.
        # A plain scatter (no reduction, distinct indices) is one ScatterElements, which every
        # TensorRT target imports.
        alive = None
        imp_src = imp_src.scatter(1, chosen, NEG_INF)
    else:
        alive_in = torch.ones_like(size) if valid is None else valid
        alive = laid_out(alive_in, alive_in[:, dst], alive_in[:, src] * (1.0 - w))
    idx, alive_out = _prune_order(laid_out(imp, imp_dst, imp_src), alive, plan, num_prefix)

    new_x = take_rows(laid_out(x, x_dst), idx)
    new_size = laid_out(size, size_dst).gather(1, idx)
    new_source = None
    if tokens.source is not None:
        source_dst = tokens.source[:, dst] + assign @ merging(tokens.source[:, src])
        new_source = take_rows(laid_out(tokens.source, source_dst), idx)

    tokens = Tokens(new_x, new_size, alive_out, new_source)
    if not record:
        return tokens, None
    decision = _decision(size, valid, num_prefix, idx, alive_out, w, chosen, dst_idx, plan)
    decision.source = new_source
    return tokens, decision


def _decision(size: Tensor, valid: Optional[Tensor], num_prefix: int, idx: Tensor, alive_out: Optional[Tensor],
              w: Optional[Tensor], chosen: Optional[Tensor], dst_idx: Tensor, plan: Plan) -> Decision:
    """What the block did, in its input positions (read by parity checks and the visualizer;
    exports drop it unless asked for decision outputs)."""
    (b, n), device = size.shape, idx.device
    alive_in = torch.ones_like(size) if valid is None else valid
    if w is None:  # fixed mode: its chosen sources (a sum of one-hots exports shorter than any())
        w = (chosen[:, :, None] == torch.arange(dst_idx.shape[1], device=device)).to(size.dtype).sum(dim=1)
    prefix, src, dst = layout(num_prefix)
    pos = torch.arange(n, device=device)
    kept = torch.cat([pos[prefix], pos[src], pos[dst]])[idx]
    n_out = torch.full((b,), idx.shape[1], device=device) if alive_out is None else alive_out.sum(dim=1)
    if alive_out is not None:
        kept = torch.where(alive_out > 0.5, kept, -1)
    # Every even position has an entry, prefix sources included (they never merge).
    merge_dst = torch.where(w > 0.5, 2 * dst_idx + dst.start, -1)
    if num_prefix:
        merge_dst = torch.cat([dst_idx.new_full((b, (num_prefix + 1) // 2), -1), merge_dst], dim=1)
    decision = Decision(kept=kept, merge_dst=merge_dst, n_in=alive_in.sum(dim=1), n_out=n_out, length=n)
    if plan.mode == "train":
        decision.soft_keep_in = alive_in.sum(dim=1)
        decision.soft_keep_out = alive_out.sum(dim=1)
    return decision


def _prune_order(imp: Tensor, alive: Optional[Tensor], plan: Plan, num_prefix: int) -> tuple[Tensor, Optional[Tensor]]:
    """Which merged-layout slots survive pruning, in output order; and their validity.

    Slot order is output order (see :func:`merge_and_prune`), so survivors are only sorted by
    slot. Returns ``(idx, valid)``: (B, K) slots to gather, and (B, K) validity (None in fixed
    mode, where every output token is real). Fixed mode passes no ``alive``: its dead slots
    (merged sources) already have importance -inf.
    """
    n = imp.shape[1]
    if plan.mode == "fixed":
        chosen = top_indices(imp, plan.k)  # the k most important live tokens...
        return chosen.gather(1, smallest_unique(chosen, plan.k)), None  # ...in slot order

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

    # Survivors first (in slot order), then the dead: the key stays unique.
    slot = torch.arange(n, device=imp.device)
    order_key = torch.where(keep, slot, slot + n)
    count = n if plan.mode == "train" else padded_length(keep)  # training removes nothing
    idx = smallest_unique(order_key, count)
    return idx, keep_value.gather(1, idx)


def padded_length(keep: Tensor) -> int:
    """The largest kept count in the batch, as the shape of a NonZero output.

    Exporters turn this into a shape computation (Shape(NonZero(..))), which TensorRT treats
    as a shape tensor, rather than a value reduced from data and cast
    (docs/arithmetic.md#batches-in-threshold-mode). In eager PyTorch it is an ordinary int, read
    without ``.item()``.
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
