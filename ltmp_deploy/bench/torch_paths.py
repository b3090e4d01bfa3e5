"""The other ways PyTorch can run a variant: torch.compile'd and replayed from a CUDA graph.

``--compile`` times a ``torch.compile``'d copy of the model (backend ``<torch backend>+compile``),
``--cuda-graph`` every variant captured once per batch size in a CUDA graph and replayed
(``torch-cuda+graph``): no Python and no kernel launches per call, how a fixed-shape model is
served from PyTorch when launches dominate. Both are timed as the eager runner is, host to host:
each call copies the host batch to the device, runs, and copies the logits back (which waits for
the GPU), so the three paths differ only in how the model runs. Threshold mode cannot be captured
(its padded token count is read back to the host): it is skipped with that reason. A variant that
fails to compile or capture is skipped with its error and not tried again at later batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ltmp_deploy.bench.variants import Variant
from ltmp_deploy.errors import first_line
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.runtime.bench_results import THRESHOLD

COMPILED = "+compile"
GRAPHED = "+graph"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
NO_CAPTURE = "threshold mode cannot be captured in a CUDA graph: its padded token count is read back to the host"

# Dynamo's recompile settings have no public API. The limit was called cache_size_limit before
# torch 2.6 and recompile_limit since; some builds (seen in a 2.14.1 wheel) do not expose it at all,
# and reading a missing one raises AttributeError. Each is set only where this torch has it.
_RECOMPILE_LIMIT_NAMES = ("recompile_limit", "cache_size_limit")
_FAIL_ON_LIMIT_NAMES = ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit")


def paths(backend: str, compile_backend: str | None, cuda_graph: bool) -> list[str]:
    """The suffixes of the extra ways ``backend`` runs the variants ("+compile", "+graph")."""
    if not backend.startswith("torch"):
        return []
    return [COMPILED] * (compile_backend is not None) + [GRAPHED] * (cuda_graph and backend == "torch-cuda")


def set_compile_limits(limit: int) -> list[str]:
    """Allow ``limit`` recompiles per model and fail rather than silently run eager past it.

    Returns notes for the settings this torch does not have, so a run says what it could not set."""
    config = getattr(getattr(torch, "_dynamo", None), "config", None)
    notes = []
    for names, value, why in (
        (_RECOMPILE_LIMIT_NAMES, limit, "the default recompile limit applies"),
        (_FAIL_ON_LIMIT_NAMES, True, "a variant past the limit may run eager under its compiled name"),
    ):
        name = next((n for n in names if config is not None and hasattr(config, n)), None)
        if name is None:
            notes.append(f"note: torch {torch.__version__} has no dynamo setting {names[0]}: {why}")
        else:
            setattr(config, name, value)
    return notes


class TorchPaths:
    """One model on one device and dtype, compiled once (``compile_backend``), timed along ``paths``.

    ``failed`` maps (path, variant name) to why it cannot run; such a variant is not tried again."""

    def __init__(self, model: LTMPVisionTransformer, compile_backend: str | None) -> None:
        self.model = model
        self.param = next(model.parameters())
        self.compiled = torch.compile(model, backend=compile_backend) if compile_backend is not None else None
        self.failed: dict[tuple[str, str], str] = {}

    def calls(self, path: str, variants: Sequence[Variant], images: np.ndarray) -> dict[str, Callable[[], object]]:
        """One zero-argument call per variant that runs on ``path`` at this batch; compiles or captures
        here, so the timed rounds never do."""
        out = {}
        for v in variants:
            if (path, v.name) in self.failed:
                continue
            if path == GRAPHED and v.kind == THRESHOLD:
                self.failed[path, v.name] = NO_CAPTURE
                continue
            try:
                out[v.name] = self._compiled_call(v, images) if path == COMPILED else self._graphed_call(v, images)
            except Exception as exc:  # one variant failing to compile or capture never stops the run
                what = "torch.compile" if path == COMPILED else "CUDA graph capture"
                self.failed[path, v.name] = (
                    f"{what} failed at batch {len(images)}: {type(exc).__name__}: " + (first_line(exc)[:240])
                )
        return out

    def _compiled_call(self, variant: Variant, images: np.ndarray) -> Callable[[], object]:
        model, compiled, param = self.model, self.compiled, self.param
        host = torch.from_numpy(images)

        def run() -> Any:
            variant.apply(model)
            with torch.inference_mode():
                return compiled(host.to(param.device, param.dtype)).cpu()

        run()  # compiles (or recompiles for this batch size) here
        return run

    def _graphed_call(self, variant: Variant, images: np.ndarray) -> Callable[[], object]:
        model = variant.apply(self.model)
        host = torch.from_numpy(images)
        # the streams and the graph on the model's GPU (--device cuda:N), not the current device
        with torch.inference_mode(), torch.cuda.device(self.param.device):
            static_x = host.to(self.param.device, self.param.dtype)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
                for _ in range(3):
                    model(static_x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = model(static_x)

        def run() -> Any:
            # static_x is an inference tensor: written in inference mode only
            with torch.inference_mode(), torch.cuda.device(static_x.device):
                static_x.copy_(host)
                graph.replay()
                return static_out.cpu()

        return run
