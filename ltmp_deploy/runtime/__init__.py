"""The runtime, the whole field install: one Session over ONNX Runtime and TensorRT (and PyTorch,
whose backend the torch side registers as a plugin), predict and its audit log, parity (parity/),
TensorRT checks, plans and builds (trt/), INT8 quantization (int8/), Triton repositories,
inspection and timing. Imports neither torch nor timm, nor the toolkit's torch side (a field
device has neither)."""

from ltmp_deploy.runtime.session import BlockDecisions, Result, Session

__all__ = ["BlockDecisions", "Result", "Session"]
