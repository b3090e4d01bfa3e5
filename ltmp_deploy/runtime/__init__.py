"""The runtime: one Session over ONNX Runtime, TensorRT and PyTorch, engine building, parity
of engines and graphs against an ONNX graph, and benchmarks. Imports neither torch nor timm
(a field device has neither)."""

from ltmp_deploy.runtime.session import BlockDecisions, Result, Session

__all__ = ["BlockDecisions", "Result", "Session"]
