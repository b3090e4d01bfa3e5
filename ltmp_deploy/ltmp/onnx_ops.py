"""The operations whose exported spelling differs from their eager one, and nothing else.

The LTMP arithmetic (``ltmp.reduce``, ``ltmp.block``) calls these as ordinary functions. Each gives
the same values in eager PyTorch and in an exported graph, but is written twice: eagerly for speed
or for a tie rule PyTorch only promises one way, and, while ``torch.onnx`` traces, as the one ONNX
node (an ``autograd.Function`` with a ``symbolic``) that the TorchScript exporter would otherwise
spell as a chain of several, or with a token count frozen at the traced example's.
"""

from __future__ import annotations

import torch
from torch import Tensor


def exporting() -> bool:
    """Whether ``torch.onnx`` is tracing the current call."""
    return torch.onnx.is_in_onnx_export()


def constants_length(length: int, like: Tensor) -> int:
    """The token count per-position constants are made for: ``length`` (the model's token count),
    else the count of ``like`` (B, N, ...). An export must give ``length``: ``like``'s count is the
    traced example's, which the graph would keep for every input."""
    if exporting() and not length:
        raise ValueError("exporting threshold mode needs Plan.length, the model's token count")
    return length or int(like.shape[1])


def top_k(score: Tensor, k: int, dim: int = -1, largest: bool = True) -> tuple[Tensor, Tensor]:
    """The ``k`` largest (or smallest) entries along ``dim`` and their indices, sorted, ties to the lower index.

    LTMP breaks ties by lower index (docs/arithmetic.md#which-sources-merge). ONNX's TopK promises
    exactly that, so exported graphs use TopK; PyTorch's ``topk`` promises no order among equal
    values, so eager mode uses a stable sort, which the TorchScript exporter cannot express. Same
    answer, two spellings.
    """
    if exporting():
        return torch.topk(score, k, dim=dim, largest=largest, sorted=True)
    values, indices = torch.sort(score, dim=dim, descending=largest, stable=True)
    return values.narrow(dim, 0, k), indices.narrow(dim, 0, k)


def best_of(score: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The largest entry along ``dim`` (kept as a size-1 axis) and its index, ties to the lower index.

    ``max`` returns the first maximal index, as TopK does; exported as one TopK (k = 1) rather
    than the ReduceMax and ArgMax pair ``max`` becomes.
    """
    if exporting():
        return torch.topk(score, 1, dim=dim, largest=True, sorted=True)
    return score.max(dim=dim, keepdim=True)


def _unit_rows(t: Tensor) -> Tensor:
    return t / t.norm(dim=-1, keepdim=True)


class _UnitRowsLp(torch.autograd.Function):
    """Export spelling of :func:`unit_rows`: one LpNormalization instead of ReduceL2 and Div."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # noqa: ANN001
        return _unit_rows(t)

    @staticmethod
    def symbolic(g, t):  # noqa: ANN001, ANN205  (torch.onnx graph values)
        return g.op("LpNormalization", t, axis_i=-1, p_i=2)


def unit_rows(t: Tensor) -> Tensor:
    """``t`` with every row (last axis) scaled to unit L2 norm."""
    return _UnitRowsLp.apply(t) if exporting() else _unit_rows(t)


def _reshape_keep(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    return t.reshape([t.shape[i] if d == 0 else d for i, d in enumerate(shape)])


class _ReshapeKeep(torch.autograd.Function):
    """Export spelling of :func:`reshape_keep`: one Reshape with a constant shape."""

    @staticmethod
    def forward(ctx, t: Tensor, shape: tuple[int, ...]) -> Tensor:  # noqa: ANN001
        return _reshape_keep(t, shape)

    @staticmethod
    def symbolic(g, t, shape):  # noqa: ANN001, ANN205  (torch.onnx graph values)
        return g.op("Reshape", t, g.op("Constant", value_t=torch.tensor(shape, dtype=torch.long)))


def reshape_keep(t: Tensor, *shape: int) -> Tensor:
    """``t`` reshaped to ``shape``, where a 0 keeps that axis of ``t`` (ONNX's Reshape rule) and one
    entry is -1.

    Exported as one Reshape with a constant shape: with a data-dependent token count (threshold
    mode) a reshape to sizes read from the tensor would be a chain of four nodes, in every block.
    """
    return _ReshapeKeep.apply(t, tuple(shape)) if exporting() else _reshape_keep(t, shape)


class _Leading(torch.autograd.Function):
    """Export spelling of :func:`leading`: a Slice whose end is read from ``like``'s shape."""

    @staticmethod
    def forward(ctx, table: Tensor, like: Tensor, axis: int) -> Tensor:  # noqa: ANN001
        return table.narrow(axis, 0, like.shape[1])

    @staticmethod
    def symbolic(g, table, like, axis):  # noqa: ANN001, ANN205  (torch.onnx graph values)
        def const(v: int):  # noqa: ANN202
            return g.op("Constant", value_t=torch.tensor([v], dtype=torch.long))

        n = g.op("Slice", g.op("Shape", like), const(1), const(2))
        return g.op("Slice", table, const(0), n, const(axis))


def leading(table: Tensor, like: Tensor, axis: int) -> Tensor:
    """The first ``like.shape[1]`` entries of a constant ``table`` along ``axis``.

    A block's token count in threshold mode is a run-time value of exported graphs, which
    slicing with ``[:n]`` would freeze at the count of the example the exporter traced.
    """
    return _Leading.apply(table, like, axis) if exporting() else table.narrow(axis, 0, like.shape[1])


def _take_rows(t: Tensor, idx: Tensor) -> Tensor:
    b, n = t.shape[0], t.shape[1]
    rows = idx[..., 0] + torch.arange(0, b * n, n, device=idx.device)[:, None]
    return t.flatten(0, 1)[rows]


class _GatherRowsND(torch.autograd.Function):
    """Export spelling of :func:`take_rows`: one GatherND with ``batch_dims=1``."""

    @staticmethod
    def forward(ctx, t: Tensor, idx: Tensor) -> Tensor:  # noqa: ANN001
        return _take_rows(t, idx)

    @staticmethod
    def symbolic(g, t, idx):  # noqa: ANN001, ANN205  (torch.onnx graph values)
        out = g.op("GatherND", t, idx, batch_dims_i=1)
        rank = t.type().dim()
        if rank is not None:  # how many rows is a run-time value: a traced count would be folded into constants
            out.setType(t.type().with_sizes([None] * rank))
        return out


def take_rows(t: Tensor, idx: Tensor) -> Tensor:
    """``t[b, idx[b, j, 0]]`` for every image: (B, N, ...) and (B, K, 1) give (B, K, ...).

    Whole rows are copied: eager PyTorch indexes the batch flattened into rows (faster on a CPU
    than ``gather`` with the index expanded over the row), and exports use ONNX's GatherND with
    one batch dimension, which TensorRT imports from 8.2 on. Exported, ``gather`` would be an
    Expand materialised in int64 and a GatherElements that reads an index per element, slower in
    ONNX Runtime. Same rows either way.
    """
    return _GatherRowsND.apply(t, idx) if exporting() else _take_rows(t, idx)
