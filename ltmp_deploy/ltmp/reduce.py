"""The LTMP arithmetic: bipartite matching, merge and prune, as functions over tensors.

One implementation serves every mode and every backend. It is written with operations that
export to ONNX as TopK, Gather, MatMul, comparisons and elementwise ops, so eager PyTorch and
the exported graph compute the same thing:

- no boolean-mask indexing (shapes would depend on data in a way exporters cannot express),
- no ``.item()`` / ``.tolist()`` on data, no Python loops over images,
- no ``scatter_reduce``: merging is a matmul with a one-hot source->destination assignment.

A block's reduction is decided in two halves, which sources merge where (:class:`Merge`), then
which tokens stay in which order (:class:`Keep`, from the importance the merges carry), and each
half is applied by its one ``apply`` to every tensor that rides along: features, sizes, validity
and the source map (as ToMe does with its ``merge`` closures). The operations whose exported
spelling differs from their eager one live in ``ltmp.onnx_ops``.

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
import torch.nn.functional as F
from torch import Tensor

from ltmp_deploy.ltmp.onnx_ops import best_of, constants_length, leading, reshape_keep, take_rows, top_k, unit_rows

NEG_INF = float("-inf")


@dataclass
class Tokens:
    """The token state that flows from block to block, passed explicitly (never stashed).

    Per-token values are columns (B, N, 1) from block to block: the merge broadcasts them per
    position, and a column needs no reshape there nor after a gather. The model's output
    (``LTMPOutput.tokens``) hands sizes and validity out as rows (B, N).
    """

    x: Tensor  # (B, N, C) features: size-weighted averages of the patches a token stands for
    # (B, N, 1) how many input patches each token stands for; None before the first block, where
    # every token is one patch (attention then adds no bias and the merge needs no sizes, as in ToMe)
    size: Tensor | None
    valid: Tensor | None = None  # (B, N, 1) 1 real token, 0 padding/dead; None: all real
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
        """Whether the token counts come from a schedule: the same for every image, static shapes."""
        return self in (Mode.FIXED, Mode.ORACLE)

    @property
    def soft(self) -> bool:
        """Whether decisions are straight-through masks and nothing is removed (training)."""
        return self is Mode.TRAIN


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
    # train: temperature of the prune mask, in units of importance (None: ``tau``, the reference recipe).
    # Importance averages 1/N, so at ``tau`` the mask is flat across tokens: see LearnConfig.prune_tau.
    prune_tau: float | None = None

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
    """Hard 0/1 decision ``score > threshold`` forward, sigmoid gradient backward; in fp32 whatever
    ``score`` is (bf16 under autocast): a threshold moves by steps of 1e-5, finer than bf16 resolves."""
    soft = torch.sigmoid((score.float() - threshold.float()) / tau)
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


def key_row(t: Tensor) -> Tensor:
    """Per-token values, a column (B, N, 1), as (B, 1, 1, N): one per key of attention."""
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

    attn: (B, H, N, N) post-softmax; valid: (B, N, 1). Padding queries are left out of
    the mean so that an image in a padded batch gets what it gets alone. Returns (B, N), or
    (B, 1, N) with ``keepdim``.
    """
    if valid is None:
        imp = attention_received(attn, keepdim=True)
    else:
        # Valid queries only: a (1 x N) @ (N x N) product per head instead of a masked copy of attn.
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


@dataclass
class Merge:
    """Which input rows merge into which positions: the first half of a block's decision.

    ``into`` (B, N, M) says how much of merging row ``m`` each position takes, and ``at`` which
    input rows the merging ones are. Fixed mode: ``into`` booleans, the columns the ``r`` chosen
    sources, ``at`` their positions (B, r, 1) and ``at_row`` the same as a row (B, 1, r). Threshold
    mode and training: ``into`` weights (0/1 flags; training's straight-through weights), the
    columns every even position, ``at`` the slice of those.
    """

    into: Tensor
    at: slice | Tensor
    at_row: Tensor | None = None

    def rows(self, t: Tensor) -> Tensor:
        """The merging rows of ``t`` (B, N, ...)."""
        return t[:, self.at] if isinstance(self.at, slice) else take_rows(t, self.at)

    def weights(self, dtype: torch.dtype) -> Tensor:
        """(B, N, M) how much of merging row ``m`` position ``j`` takes."""
        return self.into.to(dtype)

    def moved(self, size: Tensor) -> Tensor:
        """(B, N, M) how many patches position ``j`` takes from merging row ``m``, of sizes ``size``."""
        if isinstance(self.at, slice):
            return self.into * self.rows(size).transpose(1, 2)
        return torch.where(self.into, size.transpose(1, 2).gather(2, self.at_row), 0.0)

    def apply(self, tokens: Tokens) -> Tokens:
        """Every tensor that rides along, merged: features as size-weighted means, sizes and the source
        map as sums (validity is the keep step's)."""
        x, size, source = tokens.x, tokens.size, tokens.source
        moved = self.weights(x.dtype) if size is None else self.moved(size)
        x, size = merge_rows(x, 1.0 if size is None else size, moved, self.rows(x))
        if source is not None:
            source = source + self.weights(source.dtype) @ self.rows(source)
        return Tokens(x, size, tokens.valid, source)


@dataclass
class Keep:
    """Which positions leave the block, in output order: the second half of a block's decision."""

    idx: Tensor  # (B, K, 1) input position of every output token
    valid: Tensor | None = None  # (B, N, 1) the validity each position leaves with; None: static counts, all real

    def rows(self, t: Tensor | None) -> Tensor | None:
        return None if t is None else take_rows(t, self.idx)

    def apply(self, tokens: Tokens) -> Tokens:
        """Every tensor that rides along, gathered at the kept positions.

        With static counts (fixed mode) a size column is gathered element-wise (one GatherElements,
        which needs no Expand for a column); with counts known at run time by whole rows, whose
        exported GatherND keeps no traced count. The order of the gathers is the order of the
        exported nodes (and of their names), so each mode keeps the one its graphs have always had.
        """
        source = self.rows(tokens.source)
        if self.valid is None:
            size = None if tokens.size is None else tokens.size.gather(1, self.idx)
            return Tokens(self.rows(tokens.x), size, None, source)
        return Tokens(self.rows(tokens.x), self.rows(tokens.size), self.rows(self.valid), source)


@dataclass
class Reduction:
    """One block's whole decision: the merges (None when the block merges nothing) and the survivors."""

    merge: Merge | None
    keep: Keep

    def apply(self, tokens: Tokens) -> Tokens:
        """Every tensor that rides along, merged and then gathered at the kept positions."""
        return self.keep.apply(tokens if self.merge is None else self.merge.apply(tokens))


def merge_and_prune(
    tokens: Tokens, metric: Tensor, imp: Tensor | None, num_prefix: int, plan: Plan, record: bool = True
) -> tuple[Tokens, Decision | None]:
    """One block's reduction: merge (size-weighted), then prune, then compact the tokens.

    The mode's rule takes the whole decision first (:class:`Reduction`): which rows merge where
    (:class:`Merge`), then, from the importance the merges carry, which positions stay and in which
    order (:class:`Keep`); one ``apply`` then carries it out on every tensor that rides along, the
    same in both modes. The merged layout is
    [prefix, sources, destinations]: prefix tokens in front in their original order (so that a
    distillation token, an odd position, stays where the head reads it), then the sources and the
    destinations in their original orders (docs/arithmetic.md#order-after-merging). Survivors leave
    in that order.

    ``tokens``: sizes and validity as columns (B, N, 1), or None. ``imp``: (B, N) or (B, 1, N);
    threshold and training modes take :func:`prefix_importance` for prefix tokens
    (:func:`token_importance`), fixed mode the plain mean (:func:`attention_received`) and keeps the
    prefix by itself, and None where the block only merges (:func:`merges_only`). With ``record`` False
    no :class:`Decision` is built (None): nothing reads it when only the logits are wanted, and its
    bookkeeping is a dozen small kernels per block on a GPU.
    """
    if not plan.mode.reduces:
        raise ValueError(f"no merging in mode {plan.mode!r}")
    imp_row = imp[:, None, :] if imp is not None and imp.dim() == 2 else imp
    rule = (_FixedRule if plan.mode.scheduled else _ThresholdRule)(tokens, metric, imp_row, num_prefix, plan)
    reduction = Reduction(rule.merge, rule.keep())
    out = reduction.apply(tokens)
    return out, rule.decision(reduction.keep, out) if record else None


@dataclass(frozen=True)
class _Positions:
    """Threshold mode's per-position constants for blocks of up to ``length`` tokens.

    A block's token count is only known at run time there, so the constants are made once for
    the longest block (the model's token count) and each block slices them to its own count: one
    Slice each in an exported graph, where computing them from the positions would take several
    nodes. Columns (N, 1) index receivers and rows (1, N) senders (see :class:`_ThresholdRule`).
    """

    length: int
    recv: Tensor  # (N, 1) 0 at destinations, -inf elsewhere
    send: Tensor  # (1, N) 0 at sources, -inf elsewhere
    pos: Tensor  # (N, 1) the position (int64, as TopK's indices)
    # (N, 1) the rank among the odd positions of every odd position, -1 at even ones: receiver j is the
    # best of a sender whose best-receiver index (an index among the odd rows) equals it.
    half: Tensor
    # (N, 1) rank in the merged layout [prefix, sources, destinations] as float, up to a shift of
    # the destinations that keeps the order: a key to sort survivors into output order.
    key: Tensor

    def sliced(self, like: Tensor) -> _Positions:
        """These constants for the block whose tokens are ``like`` (B, N, ...)."""
        return replace(
            self,
            recv=leading(self.recv, like, 0),
            send=leading(self.send, like, 1),
            pos=leading(self.pos, like, 0),
            half=leading(self.half, like, 0),
            key=leading(self.key, like, 0),
        )


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
        recv=torch.tensor([0.0 if p in destinations else NEG_INF for p in pos], dtype=dtype, device=device)[:, None],
        send=torch.tensor([[0.0 if p in sources else NEG_INF for p in pos]], dtype=dtype, device=device),
        pos=torch.tensor(pos, dtype=torch.long, device=device)[:, None],
        half=torch.tensor([p // 2 if p % 2 else -1 for p in pos], dtype=torch.long, device=device)[:, None],
        key=torch.tensor(key, dtype=torch.float32, device=device)[:, None],
    )


class _ThresholdRule:
    """Threshold mode and training: every decision by threshold, token counts known at run time.

    Like fixed mode, the work is done in input positions, over the whole token axis, so no part
    is sliced out and reassembled: the similarity of every odd position (destinations are odd) to
    every position, masked to destinations down the rows and to sources across (each a bias, -inf
    where excluded, padding included); the merge as a matrix of every position by every even
    position (sources are even); survivors sorted into layout order by a per-position key.
    Per-sender values are rows (B, 1, N), per-receiver values and the token state columns
    (B, N, 1), so products broadcast without reshapes. Training (``soft``) weights every decision
    by its straight-through mask and removes nothing.
    """

    def __init__(self, tokens: Tokens, metric: Tensor, imp_row: Tensor, num_prefix: int, plan: Plan) -> None:
        x, valid = tokens.x, tokens.valid
        self.plan, self.num_prefix, self.valid, self.soft = plan, num_prefix, valid, plan.mode.soft
        self.n = x.shape[1]
        self.imp_row = imp_row  # (B, 1, N); prefix tokens: prefix_importance
        self.live = live = None if valid is None else valid > 0.5  # (B, N, 1)

        m = unit_rows(metric)
        t = self.t = _positions(constants_length(plan.length, x), num_prefix, x.device, x.dtype).sliced(x)
        recv = t.recv if live is None else torch.where(live, t.recv, NEG_INF)
        # Destinations are odd positions, so only those rows can receive. One more position, a zero
        # row never chosen (-inf), is padded after the last: a block left with a single token has no
        # odd position otherwise, and a TopK over an empty axis fails.
        m_recv = F.pad(m, (0, 0, 0, 1))[:, 1::2]
        recv = F.pad(recv, (0, 0, 0, 1), value=NEG_INF)[..., 1::2, :]
        # (B, 1, N): each sender's best receiver, as an index among the odd positions
        best, self.dst_half = best_of(m_recv @ m.transpose(1, 2) + recv, dim=1)
        best = best + (t.send if live is None else torch.where(live.transpose(1, 2), t.send, NEG_INF))
        # Which senders merge (False / 0 at every position that is no live source), and in
        # training their straight-through weights.
        if self.soft:
            self.w = straight_through(best, plan.merge_threshold, plan.tau)
            self.merging = self.w > 0.5
        else:
            self.w, self.merging = None, best > plan.merge_threshold
        # Only even positions are sources: the merge matrix is built over those columns alone, sliced
        # while they are rows (B, 1, N) rather than out of a (B, N, N) matrix. The prefix tokens among
        # them never merge (their column stays 0), and position 0 keeps the column count above 0.
        senders = slice(0, None, 2)
        best_for = t.half == self.dst_half[:, :, senders]  # (B, N, Ns): receiver j is sender i's best
        self.hit = (best_for & self.merging[:, :, senders]).to(x.dtype)  # 1 where receiver j takes sender i
        # In training every best pair is weighted by w, so that a source that stays gets the
        # gradient of merging too.
        w = None if self.w is None else torch.where(best_for, self.w[:, :, senders], 0.0)
        self.merge = Merge(self.hit if w is None else w, senders)

    def keep(self) -> Keep:
        """Survivors first, in layout order, then (in training) the dead; padding marked invalid."""
        t, imp_row = self.t, self.imp_row
        # A receiver is as important as the most important token merged into it (importance is never
        # negative, so a 0 from the mask never wins).
        carried = (self.hit * imp_row[:, :, self.merge.at]).amax(dim=2, keepdim=True)
        imp_col = torch.maximum(imp_row.transpose(1, 2), carried)
        keep, keep_value = self._pruned(imp_col, self._alive())
        key = torch.where(keep, t.key, t.key + t.length)  # keys stay distinct
        return Keep(smallest_unique(key, self.n if self.soft else padded_length(keep, t.pos), dim=1), keep_value)

    def _alive(self) -> Tensor:
        """(B, N, 1) the tokens left after merging (merged sources are dead): booleans, or
        straight-through weights in training."""
        if self.w is None:
            merged = self.merging.transpose(1, 2)
            # Only live sources merge (the sender mask), so live and not merged is live xor merged: one op.
            return ~merged if self.live is None else self.live ^ merged
        alive = 1.0 - self.w.transpose(1, 2)
        return alive if self.valid is None else alive * self.valid

    def _pruned(self, imp: Tensor, alive: Tensor) -> tuple[Tensor, Tensor]:
        """Which tokens survive pruning: (B, N, 1) as booleans and as the validity they carry."""
        plan = self.plan
        if self.soft:
            tau = plan.tau if plan.prune_tau is None else plan.prune_tau
            keep_value = alive * straight_through(imp, plan.prune_threshold, tau)
            return keep_value > 0.5, keep_value
        keep = alive & (imp > plan.prune_threshold)
        if self.num_prefix == 0:  # no class token to fall back on: the most important token stays
            top = torch.where(alive, imp, NEG_INF).argmax(dim=1, keepdim=True)
            keep = keep | (self.t.pos == top)
        return keep, keep.to(imp.dtype)

    def decision(self, keep: Keep, out: Tokens) -> Decision:
        """What the block did, in its input positions."""
        alive_in = torch.ones_like(self.imp_row[:, 0]) if self.valid is None else self.valid[..., 0]
        merge_dst = torch.where(self.merging, 2 * self.dst_half + 1, -1)  # (B, 1, N)
        decision = Decision(
            kept=torch.where(out.valid > 0.5, keep.idx, -1)[..., 0],
            merge_dst=merge_dst[:, 0, 0::2],  # every even position, prefix sources included
            n_in=alive_in.sum(dim=1),
            n_out=out.valid.sum(dim=(1, 2)),
            length=self.n,
            source=out.source,
        )
        if self.soft:
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


class _FixedRule:
    """Fixed mode: the ``r`` best-matching sources merge, the ``k`` most important tokens stay.

    The counts are static, so the work is written for the fewest operations per block, each a
    kernel launch at batch 1: only the ``r`` chosen source rows enter the merge (gathered once, by
    position), and the merge is computed over the whole token axis in input positions (rows that
    receive nothing come out unchanged: ``x * 1 + 0``), so no slicing into parts and no merged
    layout is built; survivors are put in layout order by sorting their slots (a constant per
    position), and each tensor is gathered once. Per-source values are rows (B, 1, r) and
    per-position values columns (B, N, 1), so every product broadcasts without a reshape.
    """

    def __init__(self, tokens: Tokens, metric: Tensor, imp_row: Tensor, num_prefix: int, plan: Plan) -> None:
        x = tokens.x
        self.b, self.n, self.k = x.shape[0], x.shape[1], plan.k
        self.c = _fixed_layout(int(self.n), num_prefix, x.device, x.dtype)
        self.imp_row = imp_row  # (B, 1, N); None when the block only merges (:func:`merges_only`)
        self.merge: Merge | None = None
        if plan.r:
            best, dst_idx = bipartite_match(metric, num_prefix, self.c.src_mask)  # rows (B, 1, N)
            self.best = best  # each position's best similarity, -inf off the sources
            # (B, 1, r) the merging sources' positions (distinct) and their destinations, as indices
            # among the destinations
            self.best_c, self.chosen_pos = top_k(best, plan.r)
            self.dst_c = dst_idx.gather(2, self.chosen_pos)
            hit = self.c.dst_rank == self.dst_c  # (B, N, r): position j receives chosen source i
            self.merge = Merge(hit, self.chosen_pos.transpose(1, 2), self.chosen_pos)

    def keep(self) -> Keep:
        """The ``k`` most important live tokens, in layout order."""
        c, imp_row = self.c, self.imp_row
        if imp_row is None:
            return Keep(self._unmerged())
        if self.merge is None:
            imp_col = torch.maximum(imp_row.transpose(1, 2), c.no_merge)
        else:
            # A destination is as important as the most important token merged into it; merged
            # sources drop out (-inf: a plain ScatterElements, without a reduction, which every
            # TensorRT target imports). Importance is never negative, so -inf marks them apart.
            incoming = torch.where(self.merge.into, imp_row.gather(2, self.chosen_pos), c.no_merge)
            incoming = incoming.amax(dim=2, keepdim=True)
            dropped = imp_row.scatter(2, self.chosen_pos, self.best_c - float("inf"))
            imp_col = torch.maximum(dropped.transpose(1, 2), incoming)
        top = top_k(imp_col, self.k, dim=1)[1]  # (B, k, 1) the k most important live tokens...
        return Keep(top.gather(1, smallest_unique(c.slot[top], self.k, dim=1)))  # ...in layout order

    def _unmerged(self) -> Tensor:
        """(B, k, 1) every position that no chosen source left, in layout order: a block that only merges
        (``k = n - r``) keeps every live token, which is what the ``k`` most important give there, so it
        needs neither the importance nor the carried maxima. The chosen sources are marked by scattering a
        value above every similarity (which is at most 1; -inf off the sources) onto the matching's row, and
        sort after every other position's slot."""
        chosen = self.best.scatter(2, self.chosen_pos, self.best_c + 4.0) > 2.0  # (B, 1, N)
        key = torch.where(chosen, self.c.slot + self.n, self.c.slot)
        return smallest_unique(key, self.k, dim=2).transpose(1, 2)

    def decision(self, keep: Keep, out: Tokens) -> Decision:
        """What the block did, in its input positions."""
        b, n, device = self.b, self.n, out.x.device
        merge_dst = torch.full((b, (n + 1) // 2), -1, dtype=torch.long, device=device)
        if self.merge is not None:
            merge_dst = merge_dst.scatter(1, self.chosen_pos[:, 0] // 2, self.c.dst_pos[self.dst_c[:, 0]])
        return Decision(
            kept=keep.idx[..., 0],
            merge_dst=merge_dst,
            n_in=out.x.new_full((b,), float(n)),
            n_out=torch.full((b,), self.k, device=device),
            length=n,
            source=out.source,
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


def merges_only(plan: Plan, n: int) -> bool:
    """Whether a fixed-mode block merges but prunes nothing (``r > 0``, ``k = n - r``): every token left
    after merging stays, so the block needs no importance (:func:`merge_and_prune` takes None for it)."""
    return plan.mode is Mode.FIXED and plan.r > 0 and plan.k == n - plan.r


def passes_through(plan: Plan, n: int) -> bool:
    """Whether a fixed-mode block neither merges nor prunes (``r = 0``, ``k = n``): it then skips
    the decision (importance, TopK, sort) and only puts its tokens in layout order."""
    return plan.mode is Mode.FIXED and plan.r == 0 and plan.k == n


@functools.lru_cache(maxsize=64)
def _layout_order(n: int, num_prefix: int, device: torch.device) -> Tensor:
    prefix, src, dst = layout(num_prefix)
    pos = list(range(n))
    return torch.tensor(pos[prefix] + pos[src] + pos[dst], dtype=torch.long, device=device)


def pass_through(tokens: Tokens, num_prefix: int, record: bool = True) -> tuple[Tokens, Decision | None]:
    """A fixed-mode block that keeps all its ``n`` tokens: what :func:`merge_and_prune` leaves then,
    the tokens in layout order [prefix, sources, destinations] (every slot kept, sorted by slot),
    taken by one constant permutation instead of an importance, a TopK and a sort. The order
    matters: it decides which tokens later blocks pair as sources and destinations."""
    x = tokens.x
    b, n = x.shape[0], int(x.shape[1])
    order = _layout_order(n, num_prefix, x.device)
    out = Tokens(
        x.index_select(1, order),
        None if tokens.size is None else tokens.size.index_select(1, order),
        None,
        None if tokens.source is None else tokens.source.index_select(1, order),
    )
    if not record:
        return out, None
    decision = Decision(
        kept=order.expand(b, -1),
        merge_dst=torch.full((b, (n + 1) // 2), -1, dtype=torch.long, device=x.device),
        n_in=x.new_full((b,), float(n)),
        n_out=torch.full((b,), n, device=x.device),
        length=n,
        source=out.source,
    )
    return out, decision
