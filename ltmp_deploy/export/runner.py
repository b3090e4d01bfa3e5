"""The toolkit's PyTorch model as a Polygraphy runner: a Session's PyTorch backend, validate's reference, bench's.

Polygraphy's ``Comparator`` runs any list of runners on one data loader; this runner joins that
contract (activate, infer, deactivate, input metadata) so PyTorch is compared with ONNX Runtime
and TensorRT by the same machinery, and a Session and ``ltmp-deploy bench`` run it as they run
the others. It answers with the names the exported graph uses: ``logits`` and, with
``decisions=True``, ``block{i}_kept`` and ``block{i}_merge_dst``; host arrays in and out, the
model on whichever device it sits.

A Session opens a checkpoint on it, but the runtime never imports it by name (it runs where torch
is not installed): it finds this class through the ``ltmp_deploy.backends`` entry point group that
``pyproject.toml`` declares.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.checkpoint import load_checkpoint
from ltmp_deploy.ltmp.checkpoint import metadata as model_metadata
from ltmp_deploy.ltmp.device import exact_fp32, resolve_device
from ltmp_deploy.ltmp.patch import LTMPVisionTransformer
from ltmp_deploy.runtime.metadata import INPUT_NAME, OUTPUT_NAME, decision_output_names


class LTMPTorchRunner(BaseRunner):
    """Runs a toolkit checkpoint (a path, loaded on activation) or an LTMP model in eager PyTorch.

    ``mode``: run in this mode (fixed / threshold) rather than the checkpoint's own, e.g. the
    mode a graph was exported in. ``decisions``: also return every block's token decisions (without
    them the model runs as its plain ``forward`` does, recording none). ``device``: load a checkpoint
    onto this device (see :func:`~ltmp_deploy.ltmp.device.resolve_device`) and run it in plain fp32
    there, TF32 off, as a parity check's reference must; without it a checkpoint loads on the CPU
    and a model runs wherever it sits, as it is.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike, LTMPVisionTransformer],
        decisions: bool = True,
        mode: str | None = None,
        name: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(name=name, prefix="pytorch-runner")
        self._model, self._decisions, self._mode, self._place = model, decisions, mode, device
        self.model: LTMPVisionTransformer | None = None
        self._device: torch.device | None = None
        self._dtype: torch.dtype = torch.float32

    def activate_impl(self) -> None:
        if isinstance(self._model, (str, os.PathLike)):
            self.model = load_checkpoint(self._model, mode=self._mode)
        else:
            self.model = self._model
            if self._mode is not None and self.model.ltmp.mode != self._mode:
                self.model.ltmp_set_mode(self._mode)
        if self._place is not None:
            self.model.to(resolve_device(self._place))
        self.model.eval()
        param = next(self.model.parameters())
        self._device, self._dtype = param.device, param.dtype  # bench runs fp16 copies on CUDA

    @property
    def input_name(self) -> str:
        return INPUT_NAME

    @property
    def image_shape(self) -> tuple[int, int, int]:
        model = self._active()
        return (int(model.patch_embed.proj.in_channels), *(int(s) for s in model.patch_embed.img_size))

    @property
    def output_names(self) -> list[str]:
        names = [OUTPUT_NAME]
        return names + decision_output_names(len(self._active().blocks)) if self._decisions else names

    def metadata(self) -> dict[str, Any]:
        """What an export of this model would carry, so a Session reads checkpoints like graphs."""
        model = self._active()
        meta = {k: v for k, v in model_metadata(model).items() if k != "format"}
        meta.update(
            precision="fp32",
            input_name=INPUT_NAME,
            input_shape=["batch", *self.image_shape],
            num_blocks=len(model.blocks),
            num_prefix_tokens=int(model.num_prefix_tokens),
            decision_outputs=decision_output_names(len(model.blocks)),
        )
        if isinstance(self._model, (str, os.PathLike)):
            meta["checkpoint"] = Path(self._model).name
        return meta

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add(INPUT_NAME, dtype=DataType.FLOAT32, shape=(None, *self.image_shape))

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        model = self._active()
        images = feed_dict[INPUT_NAME]
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        start = time.perf_counter()
        # placed here (validate's reference): plain fp32 on CUDA too; else as the model's owner set it (bench)
        exact = exact_fp32(self._device) if self._place is not None else contextlib.nullcontext()
        with torch.inference_mode(), exact:
            out = model.forward_ltmp(x.to(self._device, self._dtype), record=self._decisions)
            # to the host: on CUDA this waits for the work, so the time covers it
            result: OrderedDict[str, np.ndarray] = OrderedDict(logits=out.logits.cpu().numpy())
            for i, d in enumerate(out.decisions):
                result[f"block{i}_kept"] = d.kept.cpu().numpy()
                result[f"block{i}_merge_dst"] = d.merge_dst.cpu().numpy()
        self.inference_time = time.perf_counter() - start
        return result

    def deactivate_impl(self) -> None:
        self.model, self._device = None, None

    def _active(self) -> LTMPVisionTransformer:
        if self.model is None:
            raise LTMPError(f"{self.name}: activate the runner first")
        return self.model


__all__ = ["LTMPTorchRunner"]
