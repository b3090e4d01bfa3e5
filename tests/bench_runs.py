"""One real ``ltmp-deploy bench`` run on a tiny ViT, shared by the bench, estimate and report tests
(exporting every variant takes most of the time, so it runs once per test session)."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import torch
from conftest import one_torch_thread

TARGETS = ("0.75", "0.5")
BATCHES = (1, 2, 8)
ROUNDS = 2
BACKENDS = ("torch-cpu", "onnxruntime-cpu", "torch-cuda")
NOTE = "tiny test model; the CPU is shared"
VARIANTS = {
    "unpatched",
    "oracle@0.75",
    "ltmp-fixed@0.75",
    "tome@0.75",
    "oracle@0.5",
    "ltmp-fixed@0.5",
    "tome@0.5",
    "oracle@threshold",
    "ltmp-threshold@0.5",
}


def tiny_checkpoint(folder: Path, num_classes: int = 5, img_size: int = 32) -> Path:
    """A toolkit checkpoint of a small ViT (32x32 in patches of 8: 17 tokens; 3 blocks) with peaked attention."""
    from ltmp_deploy.ltmp.checkpoint import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model(
        "vit_tiny_patch16_224",
        img_size=img_size,
        patch_size=8,
        embed_dim=48,
        depth=3,
        num_heads=3,
        num_classes=num_classes,
    )
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * blk.attn.attn_dim] *= 4.0  # as tests/conftest.py's tiny_vit
    size = "" if img_size == 32 else f"-{img_size}px"
    return save_checkpoint(model, folder / f"tiny{num_classes}{size}.safetensors")


@functools.cache
def tiny_bench() -> Path:
    """The output folder of one bench run (bench.json, CSVs, Markdown, plots, RESULTS.md)."""
    from ltmp_deploy.cli import main

    folder = Path(tempfile.mkdtemp(prefix="ltmp-test-bench-"))
    checkpoint = tiny_checkpoint(folder)
    (folder / "pages").mkdir()
    with one_torch_thread():
        rc = main(
            [
                "bench",
                str(checkpoint),
                "--targets",
                *TARGETS,
                "--batch",
                *map(str, BATCHES),
                "--rounds",
                str(ROUNDS),
                "--warmup",
                "1",
                "--threads",
                "1",
                "--backends",
                *BACKENDS,
                "--note",
                NOTE,
                "--results-md",
                str(folder / "pages" / "RESULTS.md"),
                "-o",
                str(folder / "out"),
            ]
        )
    assert rc == 0
    return folder


def tiny_bench_doc() -> dict:
    return json.loads((tiny_bench() / "out" / "bench.json").read_text())
