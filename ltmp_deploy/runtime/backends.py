"""The three backends behind :class:`~ltmp_deploy.runtime.session.Session`.

Each opens one kind of file, told by its content (:mod:`ltmp_deploy.formats`), and answers the
same few questions (input name, dtype and shape, allowed batch sizes, output names, metadata) and
runs a checked batch to named outputs:

- ``onnxruntime``: an ONNX graph, in an InferenceSession opened by :func:`ort_session` (the one place), on the CPU
  or with the CUDA and TensorRT execution providers that ``onnxruntime-gpu`` brings;
- ``tensorrt``: an engine, through Polygraphy's ``EngineFromBytes`` and ``TrtRunner``;
- ``torch``: a toolkit checkpoint, through the toolkit's own Polygraphy runner. It lives with
  the PyTorch side of the toolkit (``ltmp_deploy.export.runner``), and this package finds it
  through the ``ltmp_deploy.backends`` entry point group, never by importing it: the field
  install has no torch.

Nothing here imports torch, timm or onnx; each backend imports its library when it is opened
and says what to pip install when that library is missing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np

from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.extras import FULL, ORT
from ltmp_deploy.formats import FileKind, expect
from ltmp_deploy.runtime.metadata import check_graph_file, decode
from ltmp_deploy.runtime.trt.engine import batch_range, engine_runner, model_file_kind, quiet_polygraphy

BACKENDS = ("onnxruntime", "tensorrt", "torch")
KIND_BACKEND = {FileKind.ONNX: "onnxruntime", FileKind.ENGINE: "tensorrt", FileKind.TOOLKIT_CHECKPOINT: "torch"}
# Execution providers in the order "auto" prefers them, when ONNX Runtime has them.
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PLUGIN_GROUP = "ltmp_deploy.backends"

# typing's generics, not the builtins': this alias is evaluated at import, and Python 3.8 (JetPack 5.1)
# cannot subscript tuple or dict.
Provider = Union[str, Tuple[str, Dict[str, Any]]]


def resolve_backend(path: Path, backend: str) -> str:
    """The backend for ``path``: from its content (:func:`model_file_kind`) for "auto", else checked against it."""
    if backend != "auto" and backend not in BACKENDS:
        raise LTMPError(f"backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    kind = model_file_kind(path)
    if kind not in KIND_BACKEND:
        expect(path, *KIND_BACKEND)  # raises: says what the file is and which kinds a Session opens
    natural = KIND_BACKEND[kind]
    if backend in ("auto", natural):
        return natural
    advice = {
        ("onnxruntime", "tensorrt"): "an engine runs only on TensorRT",
        ("torch", "tensorrt"): "an engine runs only on TensorRT",
        ("tensorrt", "onnxruntime"): (
            "build an engine first with `ltmp-deploy build`, "
            "or use the onnxruntime backend with providers=['TensorrtExecutionProvider']"
        ),
        (
            "torch",
            "onnxruntime",
        ): "a graph runs on ONNX Runtime or, once built, TensorRT; open the checkpoint for the torch backend",
        ("onnxruntime", "torch"): "export it first with `ltmp-deploy export`",
        ("tensorrt", "torch"): "export it with `ltmp-deploy export`, then build with `ltmp-deploy build`",
    }[(backend, natural)]
    raise LTMPError(f"{path}: the {backend} backend cannot open {kind.human}: {advice}")


def require(module: str, path: Path, hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as err:  # noqa: BLE001  (ImportError, or a broken install's OSError)
        raise LTMPError(f"{path}: needs {module}, which is not installed here ({type(err).__name__}); {hint}") from err


class Backend:
    """What a Session needs from a backend. Shapes use None for a dynamic dimension.

    A backend from the ``ltmp_deploy.backends`` entry point group answers the same attributes
    without subclassing this class (it is imported where this package may not import from).
    """

    name: str
    path: Path
    input_name: str
    input_dtype: np.dtype
    input_shape: tuple[int | None, ...]
    output_names: list[str]
    batch_range: tuple[int, int | None]
    metadata: dict[str, Any]
    providers: list[str] | None = None
    sidecar: dict[str, Any] | None = None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def static_dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape)


def shape_batch_range(shape: tuple[int | None, ...]) -> tuple[int, int | None]:
    return (1, None) if not shape or shape[0] is None else (shape[0], shape[0])


def choose_providers(ort: Any, requested: Sequence[Provider] | None, path: Path) -> list[Provider]:
    """``requested`` (checked against what is installed), or the best available in AUTO_PROVIDERS order."""
    available = list(ort.get_available_providers())
    if requested is None:
        return [p for p in AUTO_PROVIDERS if p in available] or available
    chosen: list[Provider] = []
    for item in requested:
        name = item[0] if isinstance(item, tuple) else item
        matches = [p for p in available if p == name] or [p for p in available if str(name).lower() in p.lower()]
        if not matches:
            hint = f"; {ORT}" if "CUDA" in str(name).upper() or "TENSORRT" in str(name).upper() else ""
            raise LTMPError(
                f"{path}: ONNX Runtime execution provider {name!r} is not available here (available: "
                f"{', '.join(available)}){hint}"
            )
        chosen.append((matches[0], item[1]) if isinstance(item, tuple) else matches[0])
    return chosen


def ort_session(path: Path, providers: Sequence[Provider] | None = None, threads: int | None = None) -> Any:
    """An ONNX Runtime InferenceSession, with one-line errors: the one place the toolkit opens one, so
    what bench times is what predict and validate run. ``threads``: intra-op threads (default: ONNX
    Runtime's, every core)."""
    ort = require("onnxruntime", path, ORT)
    chosen = choose_providers(ort, providers, path)
    check_graph_file(path)  # external weights outside its folder: refused before ONNX Runtime reads them
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as err:  # noqa: BLE001  (ONNX Runtime raises InvalidProtobuf, Fail, RuntimeException...)
        reason = first_line(err, 300)
        raise LTMPError(f"{path}: not a loadable ONNX graph, it may be truncated or corrupt ({reason})") from err


class OnnxruntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, providers: Sequence[Provider] | None = None, threads: int | None = None) -> None:
        self.path = path
        self.session = ort_session(path, providers, threads)
        self.providers = list(self.session.get_providers())
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise LTMPError(
                f"{path}: expected one image input, the graph has {len(inputs)}: {', '.join(i.name for i in inputs)}"
            )
        from polygraphy.datatype import DataType

        self.input_name = inputs[0].name
        self.input_dtype = np.dtype(DataType.to_dtype(DataType.from_dtype(inputs[0].type, "onnxruntime"), "numpy"))
        self.input_shape = static_dims(inputs[0].shape)
        self.batch_range = shape_batch_range(self.input_shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = decode(self.session.get_modelmeta().custom_metadata_map, str(path))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(None, {self.input_name: batch})
        except Exception as err:  # noqa: BLE001
            raise LTMPError(
                f"{self.path}: ONNX Runtime failed on a batch of shape {batch.shape}: {first_line(err, 300)}"
            ) from err
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self.session = None


class TensorrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path) -> None:
        from polygraphy.datatype import DataType

        self.path = path
        self.runner, self.sidecar = engine_runner(path, name=f"tensorrt:{path.name}")
        with quiet_polygraphy():
            self.runner.activate()
            meta = self.runner.get_input_metadata(use_numpy_dtypes=False)
        if len(meta) != 1:
            raise LTMPError(f"{path}: expected one image input, the engine has {len(meta)}: {', '.join(meta)}")
        ((self.input_name, (dtype, shape)),) = meta.items()
        self.input_dtype = np.dtype(DataType.to_dtype(DataType.from_dtype(dtype), "numpy"))
        self.input_shape = static_dims(shape)
        self.batch_range = batch_range(
            self.runner.engine, self.input_name, self.input_shape[0] if self.input_shape else None
        )
        engine = self.runner.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.output_names = [n for n in names if n != self.input_name]
        self.metadata = dict(self.sidecar.get("metadata") or {})
        if self.sidecar.get("precision"):
            self.metadata["engine_precision"] = self.sidecar["precision"]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            with quiet_polygraphy():
                outputs = self.runner.infer({self.input_name: batch}, check_inputs=False)
        except Exception as err:  # noqa: BLE001  (PolygraphyException or TensorRT's errors)
            raise LTMPError(
                f"{self.path}: TensorRT failed on a batch of shape {batch.shape}: {first_line(err, 300)}"
            ) from err
        return {k: np.array(v, copy=True) for k, v in outputs.items()}  # the runner reuses its buffers

    def close(self) -> None:
        if getattr(self, "runner", None) is not None and self.runner.is_active:
            with quiet_polygraphy():
                self.runner.deactivate()


def plugin_backend(name: str, path: Path) -> Backend:
    """The backend ``name`` from the ``ltmp_deploy.backends`` entry point group, opened on ``path``."""
    found = list(importlib.metadata.entry_points(group=PLUGIN_GROUP, name=name))
    if not found:
        missing = f"no {PLUGIN_GROUP} entry point {name!r}"
        raise LTMPError(f"{path}: the {name} backend is not installed here ({missing}); {FULL}")
    try:
        backend = found[0].load()
    except Exception as err:  # noqa: BLE001  (ImportError for torch or timm, or a broken install's OSError)
        missing = getattr(err, "name", None) or type(err).__name__
        raise LTMPError(f"{path}: the {name} backend needs {missing}, not installed here; {FULL}") from err
    return backend(path)


def open_backend(
    path: str | os.PathLike, backend: str = "auto", providers: Sequence[Provider] | None = None
) -> Backend:
    path = Path(path)
    if not path.is_file():
        raise LTMPError(f"{path}: no such file")
    name = resolve_backend(path, backend)
    if providers is not None and name != "onnxruntime":
        raise LTMPError(f"{path}: providers apply to the onnxruntime backend only, not {name}")
    if name == "onnxruntime":
        return OnnxruntimeBackend(path, providers)
    if name == "tensorrt":
        return TensorrtBackend(path)
    return plugin_backend(name, path)
