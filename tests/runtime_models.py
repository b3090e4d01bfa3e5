"""Small exported models shared by test_runtime.py and test_validate.py, made once per process.

A tiny ViT (32x32, patch 8, 3 blocks, 5 classes) with thresholds that merge and prune a varying
amount, saved as a toolkit checkpoint and exported: each export takes seconds on 2 cores, so each
file is built once (lru_cache) into one temporary folder and reused by every test.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

from conftest import one_torch_thread, tiny_ltmp

_FOLDER = Path(tempfile.mkdtemp(prefix="ltmp-runtime-tests-"))
atexit.register(shutil.rmtree, _FOLDER, True)


@functools.cache
def checkpoint(mode: str) -> Path:
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    return save_checkpoint(tiny_ltmp(mode), _FOLDER / f"{mode}.safetensors")


@functools.cache
def exported(mode: str, batch: int | None = None, decisions: bool = True, fp16: bool = False) -> SimpleNamespace:
    """Checkpoint and ONNX graph of the tiny model in ``mode``."""
    from ltmp_deploy.export.onnx_export import export_onnx

    ckpt = checkpoint(mode)
    name = f"{mode}_b{batch or 'dyn'}{'_dec' if decisions else ''}{'_fp16' if fp16 else ''}.onnx"
    with one_torch_thread():
        onnx_path = export_onnx(ckpt, _FOLDER / name, batch=batch, decisions=decisions, fp16=fp16).path
    return SimpleNamespace(checkpoint=ckpt, onnx=onnx_path, folder=_FOLDER)
