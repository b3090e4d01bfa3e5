"""Validation right after export: ONNX Runtime against PyTorch on sample images.

Compared: logits (fp32: max |diff| <= 1e-4; fp16: top-1 agreement >= 99.5% and a documented
logit tolerance) and every block's token decisions (kept and merged indices), naming the first
block where they diverge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import onnx
import torch

from ltmp_deploy.export.metadata import decision_output_names
from ltmp_deploy.export.tolerances import FP16_LOGIT_TOL, FP16_TOP1, FP32_LOGIT_TOL  # shared with runtime/validate.py


@dataclass
class ValidationReport:
    precision: str
    images: int
    max_abs_diff: float
    top1_agreement: float
    decisions_identical: Optional[bool]
    first_divergent_block: Optional[int] = None
    tolerance: float = FP32_LOGIT_TOL
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.precision == "fp32":
            return self.max_abs_diff <= self.tolerance and self.decisions_identical is not False
        return self.top1_agreement >= FP16_TOP1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        lines = [
            f"{'PASS' if self.ok else 'FAIL'}: {self.precision}, {self.images} images",
            f"  max |logit diff| {self.max_abs_diff:.3g} (tolerance {self.tolerance:g})",
            f"  top-1 agreement {self.top1_agreement:.1%}",
        ]
        if self.decisions_identical is not None:
            where = "" if self.decisions_identical else f", first divergence in block {self.first_divergent_block}"
            lines.append(f"  token decisions {'identical' if self.decisions_identical else 'differ'}{where}")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


def sample_images(model: Any, count: int) -> torch.Tensor:
    """The embedded digits when the model takes them, seeded random images otherwise."""
    from ltmp_deploy.data.digits import IMAGE_SIZE, NUM_CLASSES, digits_arrays

    size = tuple(model.patch_embed.img_size)
    if size == (IMAGE_SIZE, IMAGE_SIZE) and model.num_classes == NUM_CLASSES and model.patch_embed.proj.in_channels == 3:
        images, _ = digits_arrays("test")
        return torch.from_numpy(np.ascontiguousarray(images[:count])).float()
    g = torch.Generator().manual_seed(0)
    return torch.randn(count, model.patch_embed.proj.in_channels, *size, generator=g)


def compare_decisions(expected: list[np.ndarray], got: list[np.ndarray]) -> tuple[bool, Optional[int]]:
    """Identical per-block decisions? Arrays alternate kept / merge_dst per block."""
    for i, (e, g) in enumerate(zip(expected, got)):
        if e.shape != g.shape or not np.array_equal(e, g):
            return False, i // 2
    return True, None


def compare_with_torch(graph: onnx.ModelProto, model: Any, images: torch.Tensor, fp16: bool) -> ValidationReport:
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = images.numpy().astype(np.float16 if fp16 else np.float32)
    names = [o.name for o in session.get_outputs()]
    got = session.run(None, {"images": feed})
    with torch.no_grad():
        out = model.forward_ltmp(images)
    expected_logits = out.logits.numpy()
    logits = got[names.index("logits")].astype(np.float32)
    report = ValidationReport(
        precision="fp16" if fp16 else "fp32",
        images=len(images),
        max_abs_diff=float(np.abs(logits - expected_logits).max()),
        top1_agreement=float((logits.argmax(-1) == expected_logits.argmax(-1)).mean()),
        decisions_identical=None,
        tolerance=FP16_LOGIT_TOL if fp16 else FP32_LOGIT_TOL,
    )
    decision_names = decision_output_names(len(model.blocks))
    if all(n in names for n in decision_names):
        expected = []
        for d in out.decisions:
            expected += [d.kept.numpy(), d.merge_dst.numpy()]
        report.decisions_identical, report.first_divergent_block = compare_decisions(
            expected, [got[names.index(n)] for n in decision_names]
        )
    if fp16:
        report.notes.append("fp16 graph: decisions may legitimately differ where scores are near a threshold")
    return report
