"""Parity gates: how close a backend must answer to its reference, by precision.

The one set of gates for every parity check: the check right after export and ``ltmp-deploy
validate`` both judge through :mod:`ltmp_deploy.runtime.parity.compare`, on a device with torch or
without it, so this module imports nothing heavy.

- fp32: every logit within :data:`FP32_LOGIT_TOL` of the reference and identical token
  decisions in every block.
- fp16, bf16, int8: top-1 agreement on at least the precision's entry of :data:`TOP1` of the
  images, and every logit within its entry of :data:`LOGIT_TOL` (absolute, on ViT-sized logits
  of magnitude ~10). Token decisions are reported but not gated: a score that sits near a
  threshold may legitimately flip.

The INT8 entries are set so the project's own Q/DQ graphs (``quantize_int8`` with the batch of
``calibrate --int8-calib``) pass: benchmarks/int8_agreement.py measures them on the embedded
model, and benchmarks/results/int8-agreement.md holds the figures.
"""

from __future__ import annotations

from ltmp_deploy.errors import LTMPError

FP32_LOGIT_TOL = 1e-4
FP16_LOGIT_TOL = 5e-2  # fp16 graphs: logits agree to about this much on ViT-sized logits
LOW_PRECISION_TOP1 = 0.995
INT8_TOP1 = 0.97
INT8_LOGIT_TOL = 2.5

# bf16 keeps 8 bits of mantissa (fp16: 11), so ~8x fp16's rounding; int8 (Q/DQ, per-tensor
# activations) is coarser still: its logits are only held to a loose bound, and an image whose
# two best classes are close may change its top-1.
LOGIT_TOL = {"fp32": FP32_LOGIT_TOL, "fp16": FP16_LOGIT_TOL, "bf16": 4e-1, "int8": INT8_LOGIT_TOL}
TOP1 = {"fp16": LOW_PRECISION_TOP1, "bf16": LOW_PRECISION_TOP1, "int8": INT8_TOP1}
PRECISIONS = tuple(LOGIT_TOL)


def gates(precision: str) -> dict[str, float]:
    """The bounds a backend of ``precision`` is held to: ``logit_abs`` always, ``top1`` below fp32."""
    if precision not in LOGIT_TOL:
        raise LTMPError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return {"logit_abs": LOGIT_TOL[precision], **({"top1": TOP1[precision]} if precision in TOP1 else {})}


def decisions_gated(precision: str) -> bool:
    """Whether token decisions must be identical: only in fp32, where no score flips by rounding."""
    return precision == "fp32"
