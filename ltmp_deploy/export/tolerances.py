"""Parity tolerances: how close a backend must answer to PyTorch, by precision.

Shared by the check right after export (``export/validate.py``) and by ``ltmp-deploy validate``
(``runtime/validate.py``), so this module imports nothing: the runtime side has no torch.

- fp32: every logit within :data:`FP32_LOGIT_TOL` of PyTorch and identical token decisions.
- fp16, bf16, int8: top-1 agreement on at least :data:`LOW_PRECISION_TOP1` of the images, and
  every logit within the precision's entry of :data:`LOGIT_TOL` (absolute, on ViT-sized logits
  of magnitude ~10). Token decisions are reported but may legitimately differ where a score sits
  near a threshold.
"""

from __future__ import annotations

FP32_LOGIT_TOL = 1e-4
FP16_LOGIT_TOL = 5e-2  # fp16 graphs: logits agree to about this much on ViT-sized logits
FP16_TOP1 = 0.995
LOW_PRECISION_TOP1 = FP16_TOP1

# bf16 keeps 8 bits of mantissa (fp16: 11), so ~8x fp16's rounding; int8 (Q/DQ, per-tensor
# activations) is coarser still: its logits are only held to a loose bound, top-1 is the gate.
LOGIT_TOL = {"fp32": FP32_LOGIT_TOL, "fp16": FP16_LOGIT_TOL, "bf16": 4e-1, "int8": 1.0}
PRECISIONS = tuple(LOGIT_TOL)
