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

import enum
import functools
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ltmp_deploy.ltmp.onnx_ops import best_of, constants_length, leading, reshape_keep, take_rows, top_k, unit_rows

NEG_INF = float("-inf")


@dataclass
class Tokens:
    """The token state that flows from block to block, passed explicitly (never stashed)."""

    x: Tensor  # (B, N, C) features: size-weighted averages of the patches a token stands for
    # (B, N) how many input patches each token stands for; None before the first block, where
    # every token is one patch (attention then adds no bias and the merge needs no sizes, as in
    # ToMe). Between fixed-mode blocks a column (B, N, 1): the merge broadcasts sizes per
    # position, and a column spares a reshape there and one after the gather, in every block;
    # between threshold-mode blocks too, with ``valid``.
    size: Tensor | None
    valid: Tensor | None = None  # (B, N) or (B, N, 1) 1 real token, 0 padding/dead; None: all real
    source: Tensor | None = None  # (B, N, P) which input patches each token stands for


class Mode(str, enum.Enum):
    """How a patched model runs its blocks (docs/arithmetic.md#fixed-mode-and-threshold-mode).

    A ``str``, so a mode compares equal to its name and goes into JSON as it: ``Mode("fixed") ==
    "fixed"``, ``json.dumps(Mode.FIXED) == '"fixed"'``; formatted and repr'd as the plain name too.
    """

    OFF = "off"  # the unpatched model, timm's own blocks
    TRAIN = "train"  # threshold mode's decisions made soft, nothing removed
    THRESHOLD = "threshold"  # decisions by the learned thresholds, per image
    FIXED = "fixed"  # a schedule's static counts
    ORACLE = "oracle"  # timm's own blocks keeping a schedule's first k tokens, no decision

    __str__ = str.__str__
    __format__ = str.__format__

    def __repr__(self) -> str:
        return repr(self.value)

    @property
    def reduces(self) -> bool:
        """Whether blocks merge and prune (and so run LTMP's own attention)."""
        return self in (Mode.TRAIN, Mode.THRESHOLD, Mode.FIXED)

    @property
    def scheduled(self) -> bool:
        """Whether the token counts come from a fixed-mode schedule."""
        return self in (Mode.FIXED, Mode.ORACLE)


@dataclass
class Plan:
    """How one block reduces: the mode and its parameters."""

    mode: Mode  # a mode's name is taken too
    r: int = 0  # fixed: sources merged
    k: int = 0  # fixed / oracle: tokens left after pruning
    merge_threshold: Tensor | None = None
    prune_threshold: Tensor | None = None
    tau: float = 0.1  # train: temperature of the soft masks
    length: int = 0  # threshold / train: the model's token count, the longest a block sees (0: this block's)

    def __post_init__(self) -> None:
        self.mode = Mode(self.mode)


@dataclass
class Decision:
    """What one block did, per image, in the block's input positions."""

    kept: Tensor  # (B, K) input position of every output token; -1 for padding
    merge_dst: Tensor  # (B, Ns) for source s (input position 2s): its destination's input position, or -1
    n_in: Tensor  # (B,) valid tokens entering the block
    n_out: Tensor  # (B,) valid tokens leaving it
    length: int = 0  # tokens in the block's (padded) input
    source: Tensor | None = None  # (B, K, P) when tracked: the input patches of each output token
    soft_keep_in: Tensor | None = None  # train: (B,) mean-mask token count entering (with gradients)
    soft_keep_out: Tensor | None = None  # train: (B,) after merge and prune (with gradients)

    def merged(self) -> Tensor:
        """(B, length) True for every input token that merged into another."""
        flags = torch.zeros(
            self.merge_dst.shape[0], 2 * self.merge_dst.shape[1], dtype=torch.bool, device=self.kept.device
        )
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


def smallest_unique(key: Tensor, k: int | Tensor, dim: int = -1) -> Tensor:
    """Indices of the ``k`` smallest of distinct keys along ``dim``, in ascending order (a TopK in ONNX).

    Keys are small integers (< 2N), exact in float32; TensorRT 8.5 has no integer TopK.
    """
    return torch.topk(key.float(), k, dim=dim, largest=False, sorted=True).indices


def attention_received(attn: Tensor, keepdim: bool = False) -> Tensor:
    """Mean attention each key receives over heads and every query row: (B, N), or (B, 1, N).

    attn: (B, H, N, N) post-softmax. Reduced one axis at a time, queries first: ONNX Runtime's
    CPU kernels reduce (B, H, N, N) over both axes at once several times slower (an Einsum is
    slower too), and this sits in every block.
    """
    return attn.mean(dim=2).mean(dim=1, keepdim=keepdim)


def as_column(t: Tensor | None) -> Tensor | None:
    """Per-token values (B, N) as a column (B, N, 1); a column (or None) as it is."""
    return t if t is None or t.dim() == 3 else t[:, :, None]


def key_row(t: Tensor) -> Tensor:
    """Per-token values, (B, N) or a column (B, N, 1), as (B, 1, 1, N): one per key of attention."""
    return reshape_keep(t, 0, 1, 1, -1)


def prefix_importance(dtype: torch.dtype) -> float:
    """The importance prefix tokens carry in threshold mode and training: above every threshold.

    The largest finite value of ``dtype`` rather than +inf, because the merge masks importance
    by multiplying with 0/1 (a product, several times faster than a select on a CPU), and
    0 x inf is NaN.
    """
    return torch.finfo(dtype).max


def token_importance(attn: Tensor, valid: Tensor | None, num_prefix: int, keepdim: bool = False) -> Tensor:
    """Mean attention each key receives, over heads and valid query rows; prefix tokens get
    :func:`prefix_importance`.

    attn: (B, H, N, N) post-softmax; valid: (B, N) or a column. Padding queries are left out of
    the mean so that an image in a padded batch gets what it gets alone. Returns (B, N), or
    (B, 1, N) with ``keepdim``.
    """
    if valid is None:
        imp = attention_received(attn, keepdim=True)
    else:
        # Valid queries only: a (1 x N) @ (N x N) product per head instead of a masked copy of attn.
        valid = as_column(valid)
        imp = (key_row(valid) @ attn).mean(dim=1) / valid.sum(dim=1, keepdim=True)
    if num_prefix:  # a pad rather than a mask: a position mask needs the token count read back from the shape
        imp = torch.nn.functional.pad(imp[..., num_prefix:], (num_prefix, 0), value=prefix_importance(imp.dtype))
    return imp if keepdim else imp[:, 0]


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


def bipartite_match(metric: Tensor, num_prefix: int, every_position: Tensor) -> tuple[Tensor, Tensor]:
    """Best destination for every position by cosine similarity (see :func:`layout`), fixed mode.

    Returns ``(best, dst)``, both rows (B, 1, N): the similarity of each position's best
    destination and that destination's index among the destinations; ``every_position`` (N,),
    0 at sources and -inf elsewhere, masks every position that may not merge. The similarity
    matrix is destination-major (B, Nd, N), so that the best destination comes out as a row per
    image, the orientation in which the merge broadcasts per-source values; the static counts
    need no slicing of the sources and no mapping of source indices back to positions.
    """
    _, _, dst = layout(num_prefix)
    metric = unit_rows(metric)
    best, dst_idx = best_of(metric[:, dst] @ metric.transpose(1, 2), dim=1)
    return best + every_position, dst_idx


def merge_rows(x: Tensor, size: Tensor, moved: Tensor, x_merging: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``x`` (B, R, C) of sizes ``size`` (B, R, 1) absorb the merging rows ``x_merging`` (B, M, C).

    ``moved`` (B, R, M): how many patches row j takes from merging row i (0 where it takes none).
    Returns the new features, size-weighted means, and the new sizes (B, R, 1). Formed as
    ``x_j * (s_j / s'_j) + sum (s_i / s'_j) x_i`` directly: carrying x * size through the whole
    layout and dividing it back costs several passes over every token, for the same value
    (docs/arithmetic.md#merging-size-weighted-means).
    """
    new_size = size + moved.sum(dim=2, keepdim=True)
    return x * (size / new_size) + (moved / new_size) @ x_merging, new_size


def merge_and_prune(
    tokens: Tokens, metric: Tensor, imp: Tensor, num_prefix: int, plan: Plan, record: bool = True
) -> tuple[Tokens, Decision | None]:
    """One block's reduction: merge (size-weighted), then prune, then compact the tokens.

    The merged layout is [prefix, sources, destinations]: prefix tokens in front in their
    original order (so that a distillation token, an odd position, stays where the head reads
    it), then the sources and the destinations in their original orders
    (docs/arithmetic.md#order-after-merging). Survivors leave in that order.
    ``imp``: (B, N) or (B, 1, N); threshold and training modes take +inf for prefix tokens
    (:func:`token_importance`), fixed mode the plain mean (:func:`attention_received`) and keeps
    the prefix by itself. With ``record`` False no :class:`Decision` is built (None): nothing
    reads it when only the logits are wanted, and its bookkeeping is a dozen small kernels per
    block on a GPU.
    """
    if plan.mode == "fixed":
        return _fixed_merge_and_prune(tokens, metric, imp, num_prefix, plan, record)
    if plan.mode not in ("threshold", "train"):
        raise ValueError(f"no merging in mode {plan.mode!r}")
    return _threshold_merge_and_prune(tokens, metric, imp, num_prefix, plan, record)


@dataclass(frozen=True)
class _Positions:
    """Threshold mode's per-position constants for blocks of up to ``length`` tokens.

    A block's token count is only known at run time there, so the constants are made once for
    the longest block (the model's token count) and each block slices them to its own count: one
    Slice each in an exported graph, where computing them from the positions would take several
    nodes. Columns (N, 1) index receivers and rows (1, N) senders (see
    :func:`_threshold_merge_and_prune`).
    """

    length: int
    recv: Tensor  # (N, 1) 0 at destinations, -inf elsewhere
    send: Tensor  # (1, N) 0 at sources, -inf elsewhere
    pos: Tensor  # (N, 1) the position (int64, as TopK's indices)
    # (N, 1) rank in the merged layout [prefix, sources, destinations] as float, up to a shift of
    # the destinations that keeps the order: a key to sort survivors into output order.
    key: Tensor

    def sliced(self, like: Tensor) -> _Positions:
        """These constants for the block whose tokens are ``like`` (B, N, ...)."""
        recv, send = leading(self.recv, like, 0), leading(self.send, like, 1)
        return replace(self, recv=recv, send=send, pos=leading(self.pos, like, 0), key=leading(self.key, like, 0))


@functools.lru_cache(maxsize=64)
def _positions(length: int, num_prefix: int, device: torch.device, dtype: torch.dtype) -> _Positions:
    prefix, src, dst = layout(num_prefix)
    pos = list(range(length))
    sources, destinations = set(pos[src]), set(pos[dst])
    key = [0.0] * length
    for rank, p in enumerate(pos[prefix] + pos[src] + pos[dst]):
        key[p] = float(rank)
    return _Positions(
        length=length,
        recv=torch.tensor([[0.0] if p in destinations else [NEG_INF] for p in pos], dtype=dtype, device=device),
        send=torch.tensor([[0.0 if p in sources else NEG_INF for p in pos]], dtype=dtype, device=device),
        pos=torch.tensor(pos, dtype=torch.long, device=device)[:, None],
        key=torch.tensor(key, dtype=torch.float32, device=device)[:, None],
    )


def _block_positions(plan: Plan, x: Tensor, num_prefix: int) -> _Positions:
    """The per-position constants for the block whose tokens are ``x``."""
    return _positions(constants_length(plan.length, x), num_prefix, x.device, x.dtype).sliced(x)


def _threshold_merge_and_prune(
    tokens: Tokens, metric: Tensor, imp: Tensor, num_prefix: int, plan: Plan, record: bool
) -> tuple[Tokens, Decision | None]:
    """Threshold and training modes: every decision by threshold, token counts known at run time.

    Like fixed mode, the work is done in input positions, over the whole token axis, so no part
    is sliced out and reassembled: the similarity of every position to every other, masked to
    destinations down the rows and to sources across (each a bias, -inf where excluded, padding
    included); the merge as a receiver x sender matrix; survivors sorted into layout order by a
    per-position key. Per-sender values are rows (B, 1, N), per-receiver values and the token
    state columns (B, N, 1), so products broadcast without reshapes.
    """
    x, size, valid = tokens.x, as_column(tokens.size), as_column(tokens.valid)
    n = x.shape[1]
    t = _block_positions(plan, x, num_prefix)
    imp_row = imp[:, None, :] if imp.dim() == 2 else imp  # prefix tokens: prefix_importance
    live = None if valid is None else valid > 0.5  # (B, N, 1)

    m = unit_rows(metric)
    recv = t.recv if live is None else torch.where(live, t.recv, NEG_INF)
    best, dst = best_of(m @ m.transpose(1, 2) + recv, dim=1)  # (B, 1, N): each sender's best receiver
    best = best + (t.send if live is None else torch.where(live.transpose(1, 2), t.send, NEG_INF))
    merging, w = _merging(best, plan)  # (B, 1, N), False / 0 at every position that is no live source
    best_for = t.pos == dst  # (B, N, N): receiver j is sender i's best
    hit = (best_for & merging).to(x.dtype)  # 1 where receiver j takes sender i
    _, src, _ = layout(num_prefix)
    # In training every best pair is weighted by w, so that a source that stays gets the gradient
    # of merging too.
    assign = hit if w is None else torch.where(best_for, w, 0.0)
    moved = assign if size is None else assign * size.transpose(1, 2)  # patches j takes from i
    x, size = merge_rows(x, 1.0 if size is None else size, moved[:, :, src], x[:, src])

    # A receiver is as important as the most important token merged into it (importance is never
    # negative, so a 0 from the mask never wins).
    imp_col = torch.maximum(imp_row.transpose(1, 2), (hit * imp_row).amax(dim=2, keepdim=True))
    keep, keep_value = _keep(imp_col, _alive(merging, w, valid, live), plan, num_prefix, t)
    # Survivors first, in layout order, then the dead (keys stay distinct).
    key = torch.where(keep, t.key, t.key + t.length)
    idx = smallest_unique(key, n if plan.mode == "train" else padded_length(keep, t.pos), dim=1)  # (B, K, 1)
    source = None
    if tokens.source is not None:
        source = take_rows(tokens.source + assign[:, :, src] @ tokens.source[:, src], idx)
    out = Tokens(take_rows(x, idx), take_rows(size, idx), take_rows(keep_value, idx), source)
    if tokens.size is not None and tokens.size.dim() == 2:  # given as (B, N), returned so
        out.size, out.valid = out.size[..., 0], out.valid[..., 0]
    if not record:
        return out, None
    alive_in = torch.ones_like(imp_row[:, 0]) if valid is None else valid[..., 0]
    return out, _threshold_decision(out, alive_in, idx, torch.where(merging, dst, -1), plan, n)


def _merging(best: Tensor, plan: Plan) -> tuple[Tensor, Tensor | None]:
    """Which senders merge (booleans), and in training their straight-through weights (else None)."""
    if plan.mode == "threshold":
        return best > plan.merge_threshold, None
    w = straight_through(best, plan.merge_threshold, plan.tau)
    return w > 0.5, w


def _alive(merging: Tensor, w: Tensor | None, valid: Tensor | None, live: Tensor | None) -> Tensor:
    """(B, N, 1) the tokens left after merging (merged sources are dead): booleans in threshold
    mode (``w`` None), straight-through weights in training."""
    if w is None:
        merged = merging.transpose(1, 2)
        # Only live sources merge (the sender mask), so live and not merged is live xor merged: one op.
        return ~merged if live is None else live ^ merged
    alive = 1.0 - w.transpose(1, 2)
    return alive if valid is None else alive * valid


def _keep(imp: Tensor, alive: Tensor, plan: Plan, num_prefix: int, t: _Positions) -> tuple[Tensor, Tensor]:
    """Which tokens survive pruning: (B, N, 1) as booleans and as the validity they carry."""
    if plan.mode == "threshold":
        keep = alive & (imp > plan.prune_threshold)
        if num_prefix == 0:  # no class token to fall back on: the most important token stays
            top = torch.where(alive, imp, NEG_INF).argmax(dim=1, keepdim=True)
            keep = keep | (t.pos == top)
        return keep, keep.to(imp.dtype)
    keep_value = alive * straight_through(imp, plan.prune_threshold, plan.tau)
    return keep_value > 0.5, keep_value


def _threshold_decision(out: Tokens, alive_in: Tensor, idx: Tensor, merge_dst: Tensor, plan: Plan, n: int) -> Decision:
    """What a threshold-mode (or training) block did, in its input positions. ``alive_in``: (B, N)
    the block's valid inputs; ``merge_dst``: (B, 1, N) each merged source's destination, -1 elsewhere."""
    valid = as_column(out.valid)
    decision = Decision(
        kept=torch.where(valid > 0.5, idx, -1)[..., 0],
        merge_dst=merge_dst[:, 0, 0::2],  # every even position, prefix sources included
        n_in=alive_in.sum(dim=1),
        n_out=valid.sum(dim=(1, 2)),
        length=n,
        source=out.source,
    )
    if plan.mode == "train":
        decision.soft_keep_in, decision.soft_keep_out = decision.n_in, decision.n_out
    return decision


@dataclass(frozen=True)
class _FixedLayout:
    """Fixed mode's per-position constants for a block of ``n`` tokens (static shapes: exported
    graphs hold them as initializers)."""

    src_mask: Tensor  # (N,) 0 at every source, -inf elsewhere
    dst_pos: Tensor  # (Nd,) position of every destination
    dst_rank: Tensor  # (N, 1) index among the destinations, -1 for every other position
    # (N, 1) the importance a row takes from merges when it receives none: +inf for prefix tokens
    # (never pruned), -inf elsewhere (the maximum with its own importance leaves that)
    no_merge: Tensor
    slot: Tensor  # (N,) slot in the merged layout [prefix, sources, destinations], as float


@functools.lru_cache(maxsize=64)
def _fixed_layout(n: int, num_prefix: int, device: torch.device, dtype: torch.dtype) -> _FixedLayout:
    prefix, src, dst = layout(num_prefix)
    pos = list(range(n))
    src_pos, dst_pos = pos[src], pos[dst]
    dst_rank = [-1] * n
    for rank, p in enumerate(dst_pos):
        dst_rank[p] = rank
    slot = [0.0] * n
    for rank, p in enumerate(pos[prefix] + src_pos + dst_pos):
        slot[p] = float(rank)
    no_merge = [float("inf") if p < num_prefix else NEG_INF for p in pos]
    return _FixedLayout(
        src_mask=torch.tensor([0.0 if p in set(src_pos) else NEG_INF for p in pos], dtype=dtype, device=device),
        dst_pos=torch.tensor(dst_pos, dtype=torch.long, device=device),
        dst_rank=torch.tensor(dst_rank, dtype=torch.long, device=device)[:, None],
        no_merge=torch.tensor(no_merge, dtype=dtype, device=device)[:, None],
        slot=torch.tensor(slot, dtype=torch.float32, device=device),
    )


def _fixed_merge_and_prune(
    tokens: Tokens, metric: Tensor, imp: Tensor, num_prefix: int, plan: Plan, record: bool
) -> tuple[Tokens, Decision | None]:
    """Fixed mode: the ``r`` best-matching sources merge, the ``k`` most important tokens stay.

    The counts are static, so the work is written for the fewest operations per block, each a
    kernel launch at batch 1: only the ``r`` chosen source rows enter the merge (gathered once, by
    position), and the merge is computed over the whole token axis in input positions (rows that
    receive nothing come out unchanged: ``x * 1 + 0``), so no slicing into parts and no merged
    layout is built; survivors are put in layout order by sorting their slots (a constant per
    position), and each tensor is gathered once. Per-source values are rows (B, 1, r) and
    per-position values columns (B, N, 1), so every product broadcasts without a reshape.
    """
    x, size = tokens.x, tokens.size
    b, n = x.shape[0], x.shape[1]
    c = _fixed_layout(int(n), num_prefix, x.device, x.dtype)
    imp_row = imp[:, None, :] if imp.dim() == 2 else imp
    size_col = size if size is None or size.dim() == 3 else size[:, :, None]  # None: all ones
    if plan.r:
        merge = _fixed_merge(x, size_col, imp_row, metric, num_prefix, plan.r, c)
    else:
        merge = _FixedMerge(x, size_col, torch.maximum(imp_row.transpose(1, 2), c.no_merge))

    top = top_k(merge.imp_col, plan.k, dim=1)[1]  # (B, k, 1) the k most important live tokens...
    idx = top.gather(1, smallest_unique(c.slot[top], plan.k, dim=1))  # ...in layout order
    tokens = _fixed_survivors(tokens, merge, idx)
    if not record:
        return tokens, None
    return tokens, _fixed_decision(merge, idx, c, b, n, plan.k, tokens.source)


@dataclass
class _FixedMerge:
    """Fixed mode's merge, over the whole token axis in input positions."""

    x: Tensor  # (B, N, C) features after the merge (rows that receive nothing unchanged)
    size_col: Tensor | None  # (B, N, 1) sizes after the merge; None: every token still one patch
    imp_col: Tensor  # (B, N, 1) importance after the merge; -inf for merged sources, +inf for the prefix
    chosen_pos: Tensor | None = None  # (B, 1, r) positions of the merging sources, distinct
    dst_c: Tensor | None = None  # (B, 1, r) their destinations, as indices among the destinations
    hit: Tensor | None = None  # (B, N, r) position j receives chosen source i
    rows: Tensor | None = None  # (B, r, 1) ``chosen_pos`` as a column, to gather the chosen rows


def _fixed_merge(
    x: Tensor, size_col: Tensor | None, imp_row: Tensor, metric: Tensor, num_prefix: int, r: int, c: _FixedLayout
) -> _FixedMerge:
    """The ``r`` best-matching sources merge into their best destinations."""
    best, dst_idx = bipartite_match(metric, num_prefix, c.src_mask)  # rows (B, 1, N)
    best_c, chosen_pos = top_k(best, r)  # (B, 1, r) positions of the merging sources, distinct
    dst_c = dst_idx.gather(2, chosen_pos)
    hit = c.dst_rank == dst_c  # (B, N, r): position j receives chosen source i
    rows = chosen_pos.transpose(1, 2)  # (B, r, 1), to gather the chosen rows
    if size_col is None:  # every token one patch
        moved = hit.to(x.dtype)
    else:
        moved = torch.where(hit, size_col.transpose(1, 2).gather(2, chosen_pos), 0.0)
    x, size_col = merge_rows(x, 1.0 if size_col is None else size_col, moved, take_rows(x, rows))
    # A destination is as important as the most important token merged into it; merged
    # sources drop out (-inf: a plain ScatterElements, without a reduction, which every
    # TensorRT target imports). Importance is never negative, so -inf marks them apart.
    incoming = torch.where(hit, imp_row.gather(2, chosen_pos), c.no_merge).amax(dim=2, keepdim=True)
    imp_col = torch.maximum(imp_row.scatter(2, chosen_pos, best_c - float("inf")).transpose(1, 2), incoming)
    return _FixedMerge(x, size_col, imp_col, chosen_pos, dst_c, hit, rows)


def _fixed_survivors(tokens: Tokens, merge: _FixedMerge, idx: Tensor) -> Tokens:
    """The surviving positions ``idx``, gathered once from every tensor that rides along."""
    new_source = None
    if tokens.source is not None:
        source = tokens.source
        if merge.hit is not None:
            source = source + merge.hit.to(source.dtype) @ take_rows(source, merge.rows)
        new_source = take_rows(source, idx)
    new_size = None if merge.size_col is None else merge.size_col.gather(1, idx)
    if tokens.size is not None and tokens.size.dim() == 2:
        new_size = new_size[..., 0]
    return Tokens(take_rows(merge.x, idx), new_size, None, new_source)


def _fixed_decision(
    merge: _FixedMerge, idx: Tensor, c: _FixedLayout, b: int, n: int, k: int, source: Tensor | None
) -> Decision:
    """What a fixed-mode block did, in its input positions (see :func:`_decision`)."""
    x = merge.x
    merge_dst = torch.full((b, (n + 1) // 2), -1, dtype=torch.long, device=x.device)
    if merge.chosen_pos is not None:
        merge_dst = merge_dst.scatter(1, merge.chosen_pos[:, 0] // 2, c.dst_pos[merge.dst_c[:, 0]])
    return Decision(
        kept=idx[..., 0],
        merge_dst=merge_dst,
        n_in=x.new_full((b,), float(n)),
        n_out=torch.full((b,), k, device=x.device),
        length=n,
        source=source,
    )


def padded_length(keep: Tensor, slots: Tensor | None = None) -> int:
    """The largest kept count in the batch, as the shape of a NonZero output.

    Exporters turn this into a shape computation (Shape(NonZero(..))), which TensorRT treats
    as a shape tensor, rather than a value reduced from data and cast
    (docs/arithmetic.md#batches-in-threshold-mode). In eager PyTorch it is an ordinary int, read
    without ``.item()``.
    """
    if slots is None:
        slots = torch.arange(keep.shape[1], device=keep.device)
    used = slots < keep.sum(dim=1).max()  # slot s is used by some image
    return torch.nonzero(used).shape[0]


def slice_tokens(tokens: Tokens, k: int) -> Tokens:
    """The oracle's reduction: keep the first ``k`` tokens, with no decision at all."""
    return replace(
        tokens,
        x=tokens.x[:, :k],
        size=None if tokens.size is None else tokens.size[:, :k],
        valid=None if tokens.valid is None else tokens.valid[:, :k],
        source=None if tokens.source is None else tokens.source[:, :k],
    )
