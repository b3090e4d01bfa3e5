"""The LTMP transformer block: timm's ``Block`` with merge and prune between attention and MLP.

Blocks of a patched model have their ``__class__`` swapped to :class:`LTMPBlock`; weights,
LayerScale, DropPath and the MLP are timm's own. Attention is recomputed here from the timm
attention module's weights because LTMP needs what fused attention hides: the post-softmax
matrix (for importance) and the keys (for matching), plus proportional attention.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ltmp_deploy.ltmp.onnx_ops import reshape_keep
from ltmp_deploy.ltmp.reduce import (
    Decision,
    Mode,
    Plan,
    Tokens,
    attention_received,
    key_row,
    merge_and_prune,
    merges_only,
    pass_through,
    passes_through,
    slice_tokens,
    token_importance,
)


class Threshold(nn.Module):
    """One learned scalar; named like the authors' ``merge_masker`` / ``prune_masker``."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor([float(value)]))


def proportional_attention(
    attn: nn.Module, x: Tensor, size: Tensor | None, valid: Tensor | None, soft: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """timm ``Attention`` with ``log(size)`` added to the logits of every key.

    Invalid keys (padding, or tokens already removed in training) get no attention: in
    inference by a -inf bias before the softmax; in training by a multiplicative mask after
    it, so the straight-through gradient reaches the mask (as DynamicViT's masked softmax).
    ``size`` and ``valid``: columns (B, N, 1), or None (every token one patch; every token real).
    Returns the output, the post-softmax matrix (B, H, N, N) and the head-averaged keys.
    """
    heads, head_dim = attn.num_heads, attn.head_dim
    # (B, 3H, N, D) split into three along the head axis: the same q, k and v as timm's permute and
    # unbind, exported without a Squeeze each.
    q, k, v = reshape_keep(attn.qkv(x), 0, 0, -1, head_dim).transpose(1, 2).split(heads, dim=1)
    q, k = attn.q_norm(q), attn.k_norm(k)

    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if size is not None or (valid is not None and not soft):  # None: one patch each, log 1 = 0
        bias = size.log() if size is not None else torch.zeros_like(valid)
        if valid is not None and not soft:
            bias = torch.where(valid > 0.5, bias, float("-inf"))
        logits = logits + key_row(bias)
    probs = logits.softmax(dim=-1)
    if valid is not None and soft:
        probs = probs * key_row(valid)
        probs = probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-12)

    out = reshape_keep((attn.attn_drop(probs) @ v).transpose(1, 2), 0, 0, -1)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    # The keys averaged over heads, as a (1 x H) @ (H x N*D) product: ONNX Runtime's ReduceMean
    # over the head axis of (B, H, N, D) is several times slower, and an Einsum slower too.
    metric = reshape_keep(k.new_full((1, heads), 1.0 / heads) @ reshape_keep(k, 0, 0, -1), 0, -1, head_dim)
    return out, probs, metric


class LTMPBlock(Block):
    """Behaviour swapped onto a timm ``Block``: forward takes and returns the token state."""

    merge_masker: Threshold
    prune_masker: Threshold

    def forward(
        self, tokens: Tokens, plan: Plan, num_prefix: int, record: bool = True
    ) -> tuple[Tokens, Decision | None]:  # type: ignore[override]
        if not plan.mode.reduces:
            # timm's own (fused) attention: the oracle is a plain ViT that sees fewer tokens.
            x = tokens.x + self.drop_path1(self.ls1(self.attn(self.norm1(tokens.x))))
            tokens = Tokens(x, tokens.size, tokens.valid, tokens.source)
            decision = None
            if plan.mode is Mode.ORACLE:
                tokens = slice_tokens(tokens, plan.k)
        else:
            out, probs, metric = proportional_attention(
                self.attn, self.norm1(tokens.x), tokens.size, tokens.valid, plan.mode.soft
            )
            tokens = Tokens(tokens.x + self.drop_path1(self.ls1(out)), tokens.size, tokens.valid, tokens.source)
            if passes_through(plan, int(tokens.x.shape[1])):  # nothing to decide: skip the importance
                tokens, decision = pass_through(tokens, num_prefix, record)
            else:
                if merges_only(plan, int(tokens.x.shape[1])):  # every token left after merging stays
                    imp = None
                elif plan.mode.scheduled:  # no padding, and the reduction keeps the prefix by itself
                    imp = attention_received(probs, keepdim=True)
                else:
                    imp = token_importance(probs, tokens.valid, num_prefix, keepdim=True)
                tokens, decision = merge_and_prune(tokens, metric, imp, num_prefix, plan, record)

        y = self.norm2(tokens.x)
        y = token_rows(self.mlp, y) if plan.mode is Mode.THRESHOLD else self.mlp(y)
        x = tokens.x + self.drop_path2(self.ls2(y))
        return Tokens(x, tokens.size, tokens.valid, tokens.source), decision


def token_rows(module: nn.Module, x: Tensor) -> Tensor:
    """A token-wise ``module`` that keeps the width (the MLP) applied to ``x`` (B, N, C) as one (B*N, C) matrix.

    Where the token count is known only at run time (threshold mode), ONNX Runtime fuses neither
    of the MLP's 3-D MatMuls with its bias Add; on a matrix the exporter writes each Linear as one
    Gemm. Reshaping there and back costs two Reshapes and a Shape, which alias their input.
    """
    return module(x.reshape(-1, int(x.shape[-1]))).view_as(x)
