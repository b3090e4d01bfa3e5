"""Model surgery: give a timm VisionTransformer LTMP in place, keeping weights, head and pooling.

As ToMe does, the patch swaps ``__class__`` of the model and of its blocks; nothing is copied.
Unlike ToMe, no per-call state is stashed on the model: the token state is passed from block to
block explicitly, so a patched model exports to ONNX and gives the same answer on every call.
What *is* kept on the model is configuration: the mode and the fixed-mode schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from ltmp_deploy.errors import LTMPError, UnsupportedModelError
from ltmp_deploy.ltmp.block import LTMPBlock, Threshold
from ltmp_deploy.ltmp.reduce import Decision, Mode, Plan, Tokens
from ltmp_deploy.ltmp.schedule import Schedule

MODES = tuple(m.value for m in Mode)
POOLS = ("token", "avg")
INITIAL_MERGE_THRESHOLD = 0.9  # the reference recipe's starting values (docs/arithmetic.md#training-the-thresholds)
INITIAL_PRUNE_THRESHOLD = 0.0


@dataclass
class LTMPConfig:
    """Configuration carried by a patched model (not per-call state)."""

    mode: Mode = Mode.THRESHOLD
    schedule: Schedule | None = None
    tau: float = 0.1
    prune_tau: float | None = None  # training's prune-mask temperature (None: tau); set by learning, not saved
    architecture: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None  # class names, in class order
    # Where the thresholds or schedule were learned: {"folder": absolute path, "split": ...}; kept in
    # checkpoints (not exports), so later measurements without data can use real images.
    learned_on: dict[str, str] | None = None


@dataclass
class LTMPOutput:
    logits: Tensor
    decisions: list[Decision]
    tokens: Tokens  # the state after the last block (before the final norm); sizes and validity as rows (B, N)


class LTMPVisionTransformer(VisionTransformer):
    """Behaviour mixed into a timm VisionTransformer (or subclass) by :func:`apply_patch`."""

    ltmp: LTMPConfig

    @property
    def ltmp_num_tokens(self) -> int:
        return self.patch_embed.num_patches + self.num_prefix_tokens

    def ltmp_set_mode(self, mode: str, schedule: Schedule | None = None) -> LTMPVisionTransformer:
        """Switch between train / threshold / fixed (and off / oracle) at run time."""
        if mode not in MODES:
            raise LTMPError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        mode = Mode(mode)
        schedule = schedule if schedule is not None else self.ltmp.schedule
        if mode.scheduled:
            if schedule is None:
                raise LTMPError(
                    f"mode {mode!r} needs a schedule: make one with `ltmp-deploy calibrate CHECKPOINT --data DATA` "
                    "(or --flops-target F) and use the checkpoint it writes"
                )
            schedule.validate(len(self.blocks), self.ltmp_num_tokens, self.num_prefix_tokens)
        self.ltmp.mode, self.ltmp.schedule = mode, schedule
        return self

    def ltmp_thresholds(self) -> tuple[list[float], list[float]]:
        merge = [float(b.merge_masker.threshold.detach()[0]) for b in self.blocks]
        prune = [float(b.prune_masker.threshold.detach()[0]) for b in self.blocks]
        return merge, prune

    def ltmp_set_thresholds(self, merge: list[float], prune: list[float]) -> None:
        if len(merge) != len(self.blocks) or len(prune) != len(self.blocks):
            raise LTMPError(
                f"expected {len(self.blocks)} merge and prune thresholds, got {len(merge)} and {len(prune)}"
            )
        with torch.no_grad():
            for b, m, p in zip(self.blocks, merge, prune):
                b.merge_masker.threshold.fill_(float(m))
                b.prune_masker.threshold.fill_(float(p))

    def ltmp_plans(self) -> list[Plan]:
        mode = Mode(self.ltmp.mode)  # a plain name when assigned directly
        schedule = self.ltmp.schedule if mode.scheduled else None
        plans = []
        for i, blk in enumerate(self.blocks):
            r, k = (schedule.merges[i], schedule.keeps[i]) if schedule is not None else (0, 0)
            thresholds = blk.merge_masker.threshold, blk.prune_masker.threshold
            plans.append(Plan(mode, r, k, *thresholds, self.ltmp.tau, self.ltmp_num_tokens, self.ltmp.prune_tau))
        return plans

    def forward_ltmp(self, x: Tensor, track_source: bool = False, record: bool = True) -> LTMPOutput:
        """Logits plus every block's decisions; with ``track_source``, the source map too.

        ``record=False`` skips building the decisions (``decisions`` comes back empty): the plain
        ``forward`` does, as only the logits leave it.
        """
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        b, n, _ = x.shape
        source = None
        if track_source:
            # Prefix tokens stand for no patch; patch token i stands for patch i.
            patches = n - self.num_prefix_tokens
            source = torch.cat(
                [x.new_zeros(self.num_prefix_tokens, patches), torch.eye(patches, dtype=x.dtype, device=x.device)]
            )
            source = source.expand(b, -1, -1)
        tokens = Tokens(x, None, None, source)  # every token one patch (see Tokens.size)

        decisions = []
        for blk, plan in zip(self.blocks, self.ltmp_plans()):
            tokens, decision = blk(tokens, plan, self.num_prefix_tokens, record)
            if decision is not None:
                decisions.append(decision)
        logits = self._ltmp_head(self.norm(tokens.x), tokens.valid)
        # Per-token values leave the model as rows (B, N).
        size = x.new_ones(b, n) if tokens.size is None else tokens.size[..., 0]
        valid = None if tokens.valid is None else tokens.valid[..., 0]
        return LTMPOutput(logits, decisions, replace(tokens, size=size, valid=valid))

    def _ltmp_head(self, x: Tensor, valid: Tensor | None) -> Tensor:
        if self.global_pool != "avg":
            return self.forward_head(x)  # the class token (and distillation token) sit in front
        patches = x[:, self.num_prefix_tokens :]
        if valid is None:
            pooled = patches.mean(dim=1)
        else:  # padding and dead tokens are left out of the mean
            weight = valid[:, self.num_prefix_tokens :]
            pooled = (patches * weight).sum(dim=1) / weight.sum(dim=1)
        return self.head(self.head_drop(self.fc_norm(pooled)))

    def forward_features(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[override]
        return self.norm(self.forward_ltmp(x, record=False).tokens.x)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[override]
        return self.forward_ltmp(x, record=False).logits


_PATCHED_CLASSES: dict[type, type] = {}


def _patched_class(cls: type) -> type:
    """One LTMP subclass per timm class, so a DeiT-distilled keeps its own head."""
    if cls not in _PATCHED_CLASSES:
        _PATCHED_CLASSES[cls] = type(f"LTMP{cls.__name__}", (LTMPVisionTransformer, cls), {})
    return _PATCHED_CLASSES[cls]


def model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def check_supported(model: nn.Module) -> None:
    """Raise UnsupportedModelError naming the model and the reason when LTMP cannot patch it."""
    name = model_name(model)
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(
            f"{name}: LTMP patches timm VisionTransformer models (ViT, DeiT), not {type(model).__name__}"
        )
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in POOLS:
        raise UnsupportedModelError(
            f"{name}: global_pool {model.global_pool!r} is not supported (use one of {', '.join(POOLS)})"
        )
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (Block, LTMPBlock):
            raise UnsupportedModelError(f"{name}: block {i} is a {type(blk).__name__}; LTMP knows timm's Block only")
        if type(blk.attn) is not Attention or getattr(blk.attn, "gate", None) is not None:
            raise UnsupportedModelError(
                f"{name}: block {i} uses {type(blk.attn).__name__}; LTMP knows timm's plain Attention only"
            )


def apply_patch(
    model: VisionTransformer,
    *,
    mode: str = "threshold",
    schedule: Schedule | None = None,
    merge_threshold: float = INITIAL_MERGE_THRESHOLD,
    prune_threshold: float = INITIAL_PRUNE_THRESHOLD,
    architecture: dict[str, Any] | None = None,
) -> LTMPVisionTransformer:
    """Give ``model`` LTMP in place and return it. Already-patched models keep their thresholds."""
    check_supported(model)
    if not isinstance(model, LTMPVisionTransformer):
        architecture = architecture or default_architecture(model)
        model.__class__ = _patched_class(type(model))
        for blk in model.blocks:
            blk.__class__ = LTMPBlock
            blk.merge_masker = Threshold(merge_threshold)
            blk.prune_masker = Threshold(prune_threshold)
            blk.to(next(model.parameters()).device)
        model.ltmp = LTMPConfig(architecture=architecture)
    elif architecture is not None:
        model.ltmp.architecture = architecture
    model.ltmp_set_mode(mode, schedule)
    return model  # type: ignore[return-value]


def default_architecture(model: nn.Module) -> dict[str, Any]:
    """How to rebuild ``model``: its timm name when timm made it, else its class and the
    constructor arguments read back from its modules (checked again when a checkpoint is saved)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    sizes = {"num_classes": int(model.num_classes), "img_size": list(model.patch_embed.img_size)}
    if cfg.get("architecture") and timm.is_model(cfg["architecture"]):
        return {"timm_model": cfg["architecture"], "kwargs": sizes}
    blk = model.blocks[0]
    config = {
        **sizes,
        "patch_size": list(model.patch_embed.patch_size),
        "in_chans": model.patch_embed.proj.in_channels,
        "global_pool": model.global_pool,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": blk.attn.num_heads,
        "mlp_ratio": blk.mlp.fc1.out_features / model.embed_dim,
        "qkv_bias": blk.attn.qkv.bias is not None,
        "qk_norm": not isinstance(blk.attn.q_norm, nn.Identity),
        "init_values": 1e-5 if not isinstance(blk.ls1, nn.Identity) else None,
        "class_token": model.cls_token is not None,
        "reg_tokens": int(getattr(model, "num_reg_tokens", 0)),
        "no_embed_class": bool(model.no_embed_class),
        "pre_norm": not isinstance(model.norm_pre, nn.Identity),
        "fc_norm": not isinstance(model.fc_norm, nn.Identity),
    }
    original = type(model).__mro__[2] if isinstance(model, LTMPVisionTransformer) else type(model)
    return {"timm_class": f"{original.__module__}.{original.__qualname__}", "config": config}
