"""Shared fixtures: tiny timm ViTs of every supported shape, and the authors' golden model."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"

# Tests run on 2 cores; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@contextlib.contextmanager
def one_torch_thread():
    """Tests share 2 cores with other jobs; one torch thread is much faster than two contending."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_vit(kind: str = "vit", seed: int = 0, **kwargs):
    """A small timm ViT (32x32, patch 8: 16 patches) of the given kind, in eval mode."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=5)
    if kind == "vit":
        cls = VisionTransformer
    elif kind == "distilled":
        cls = VisionTransformerDistilled
    elif kind == "registers":
        cls, args["reg_tokens"] = VisionTransformer, 4
    elif kind == "avg":
        cls, args["global_pool"], args["class_token"] = VisionTransformer, "avg", False
    elif kind == "layerscale":
        cls, args["init_values"], args["qk_norm"] = VisionTransformer, 0.1, True
    else:
        raise ValueError(kind)
    args.update(kwargs)
    model = cls(**args).eval()
    # Peak the attention, as the golden model does, so decisions are clear-cut and varied.
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * blk.attn.attn_dim] *= 4.0
    return model


def tiny_ltmp(mode: str = "threshold", kind: str = "vit"):
    """A patched tiny ViT whose thresholds merge and prune a varying amount (fixed mode: a
    schedule at half the block FLOPs)."""
    from ltmp_deploy.ltmp.flops import schedule_for_flops
    from ltmp_deploy.ltmp.patch import apply_patch

    model = apply_patch(tiny_vit(kind))
    n = model.ltmp_num_tokens
    model.ltmp_set_thresholds([0.6, 0.5, 0.4], [0.6 / n, 0.8 / n, 1.0 / n])
    if mode == "fixed":
        model.ltmp_set_mode("fixed", schedule_for_flops(model, 0.5))
    return model


def random_images(n: int, seed: int):
    """``n`` random 32x32 images with labels among 5 classes, seeded: a dataset for the tiny models."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g))


def learn_tiny(data, device=None, batch_size: int = 8, **config):
    """A tiny threshold-mode model after one seeded learning epoch on ``data`` (``config``: more of
    ``LearnConfig``'s fields), and its history."""
    from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds

    torch.manual_seed(0)
    model = tiny_ltmp("threshold")
    cfg = LearnConfig(
        target=0.5, epochs=1, batch_size=batch_size, lr_merge=0.05, lr_prune=0.02, check_images=batch_size, **config
    )
    history = learn_thresholds(model, data, None, cfg, progress=False, device=device)
    return model, history


MODEL_KINDS = ["vit", "distilled", "registers", "avg", "layerscale"]


@pytest.fixture
def golden_model():
    from ltmp_deploy.ltmp.checkpoint import create_model

    return create_model(str(GOLDEN / "ltmp_vit_64px.json"), reference_checkpoint=GOLDEN / "ltmp_vit_64px.safetensors")


@pytest.fixture
def golden_expected():
    data = np.load(GOLDEN / "ltmp_vit_64px_expected.npz")
    return {k: data[k] for k in data.files}
