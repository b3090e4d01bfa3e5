"""Top-1 agreement of the project's own INT8 (Q/DQ) graphs with their fp32 graphs, on the embedded model.

The trained digits base model ($LTMP_DEPLOY_CACHE, trained on first use), exported in fixed mode
(schedule at half the block FLOPs) and threshold mode (thresholds bisected to the same), quantized
by ``quantize_int8`` with the INT8 calibration batch ``calibrate --int8-calib`` writes (64 images of
the val split, sampled across classes), and both run in ONNX Runtime on the CPU over the whole
digits test split. Prints a Markdown table for benchmarks/results/.

    LTMP_DEPLOY_CACHE=/tmp/exp/cache PYTHONPATH=. python benchmarks/int8_agreement.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ltmp_deploy.calibration.thresholds import thresholds_for_flops
from ltmp_deploy.data.datasets import sample_batch
from ltmp_deploy.data.digits import DigitsDataset
from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint
from ltmp_deploy.export.onnx_export import export_onnx
from ltmp_deploy.ltmp.checkpoint import create_model
from ltmp_deploy.ltmp.flops import schedule_for_flops
from ltmp_deploy.runtime.int8.quantize import quantize_int8
from ltmp_deploy.runtime.parity.tolerances import gates

TARGET = 0.5
CALIBRATION_IMAGES = 64


def logits(path: Path, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(["logits"], {"images": images[i : i + 32]})[0] for i in range(0, len(images), 32)]
    )


def main() -> None:
    torch.set_num_threads(1)
    base = default_base_checkpoint()
    val, test = DigitsDataset("val"), DigitsDataset("test")
    calib = sample_batch(val, CALIBRATION_IMAGES)
    images = np.stack([np.asarray(test[i][0], dtype=np.float32) for i in range(len(test))])
    labels = np.array([int(test[i][1]) for i in range(len(test))])
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for mode in ("fixed", "threshold"):
            model = create_model(MODEL_NAME, weights=base)
            if mode == "fixed":
                model.ltmp_set_mode("fixed", schedule_for_flops(model, TARGET))
            else:
                thresholds_for_flops(model, torch.from_numpy(calib), TARGET)
                model.ltmp_set_mode("threshold")
            fp32 = export_onnx(model, work / f"{mode}.onnx").path
            int8 = quantize_int8(fp32, work / f"{mode}.int8.onnx", calib).path
            ref, got = logits(fp32, images), logits(int8, images)
            agree = float((ref.argmax(1) == got.argmax(1)).mean())
            rows.append(
                f"| {mode} | {len(images)} | {agree:.4f} | {int((ref.argmax(1) != got.argmax(1)).sum())} | "
                f"{(ref.argmax(1) == labels).mean():.4f} | {(got.argmax(1) == labels).mean():.4f} | "
                f"{np.abs(ref - got).max():.3f} |"
            )
    print(f"base model: {base.name}; INT8 gate (ltmp_deploy.runtime.parity.tolerances): {gates('int8')}")
    print("| mode | test images | top-1 agreement | disagreeing | fp32 accuracy | int8 accuracy | max abs logit diff |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
