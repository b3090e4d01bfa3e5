"""Opening a model file on its Polygraphy runner: the one way Session, predict, validate and bench run models.

Every backend is a Polygraphy runner (``polygraphy.backend.base.BaseRunner``: activate, infer,
deactivate, input metadata), opened by :func:`open_runner` from the file's content
(:mod:`ltmp_deploy.formats`) into a :class:`~ltmp_deploy.runtime.parity.compare.Target`: the runner and
what running and comparing it needs to know (input name, dtype and shape, allowed batch sizes,
output names, metadata). :func:`infer` runs one batch through it; ``Session.run`` (so ``predict``)
calls it, ``ltmp-deploy bench`` times it, and ``validate`` hands the same runners to Polygraphy's
``Comparator``.

- ``onnxruntime``: an ONNX graph, in an InferenceSession opened by :func:`ort_session` (the one place,
  with its provider and thread options), on :class:`~ltmp_deploy.runtime.onnxrt_runner.LeanOnnxrtRunner`
  (Polygraphy's ``OnnxrtRunner``);
- ``tensorrt``: an engine, through Polygraphy's ``EngineFromBytes`` and ``TrtRunner``;
- ``torch``: a toolkit checkpoint, on the toolkit's own Polygraphy runner. It lives with the PyTorch
  side of the toolkit (``ltmp_deploy.export.runner.LTMPTorchRunner``), and this package finds that
  runner class through the ``ltmp_deploy.backends`` entry point group, never by importing it: the
  field install has no torch. A runner class there takes ``(path, name=...)`` and answers
  ``output_names`` and ``metadata()`` besides Polygraphy's contract.

Nothing here imports torch, timm or onnx; each backend imports its library when it is opened
and says what to pip install when that library is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np

from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.extras import FULL, ORT
from ltmp_deploy.formats import FileKind, expect
from ltmp_deploy.runtime.metadata import check_graph_file, decode
from ltmp_deploy.runtime.parity.compare import Target, quiet_polygraphy
from ltmp_deploy.runtime.trt.engine import batch_range, engine_runner, model_file_kind

BACKENDS = ("onnxruntime", "tensorrt", "torch")
KIND_BACKEND = {FileKind.ONNX: "onnxruntime", FileKind.ENGINE: "tensorrt", FileKind.TOOLKIT_CHECKPOINT: "torch"}
# Execution providers in the order "auto" prefers them, when ONNX Runtime has them.
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PLUGIN_GROUP = "ltmp_deploy.backends"
LIBRARY = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT", "torch": "PyTorch"}

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


def ort_session(
    path: Path | bytes, providers: Sequence[Provider] | None = None, threads: int | None = None, file: str = ""
) -> Any:
    """An ONNX Runtime InferenceSession, with one-line errors: the one place the toolkit opens one, so
    what bench times is what predict and validate run. ``path``: the graph file, or the serialised graph
    (named ``file`` in messages) as export checks it before writing it. ``threads``: intra-op threads
    (default: ONNX Runtime's, every core)."""
    where = file or str(path)
    ort = require("onnxruntime", where, ORT)
    chosen = choose_providers(ort, providers, where)
    if not isinstance(path, bytes):
        check_graph_file(path)  # external weights outside its folder: refused before ONNX Runtime reads them
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=chosen)
    except Exception as err:  # noqa: BLE001  (ONNX Runtime raises InvalidProtobuf, Fail, RuntimeException...)
        reason = first_line(err, 300)
        raise LTMPError(f"{where}: not a loadable ONNX graph, it may be truncated or corrupt ({reason})") from err


def open_runner(
    path: str | os.PathLike,
    backend: str = "auto",
    providers: Sequence[Provider] | None = None,
    threads: int | None = None,
) -> Target:
    """``path`` on its runner, activated, and what running it needs to know: the one way the toolkit opens a
    model file to run it (Session, predict, validate, bench). ``threads``: ONNX Runtime's intra-op threads."""
    path = Path(path)
    if not path.is_file():
        raise LTMPError(f"{path}: no such file")
    name = resolve_backend(path, backend)
    if providers is not None and name != "onnxruntime":
        raise LTMPError(f"{path}: providers apply to the onnxruntime backend only, not {name}")
    if name == "onnxruntime":
        return graph_target(path, providers, threads)
    if name == "tensorrt":
        return _tensorrt(path)
    return _plugin(name, path)


def infer(target: Target, batch: np.ndarray) -> dict[str, np.ndarray]:
    """One checked batch through the target's runner, to named host arrays: what Session.run, and so predict,
    runs, and what bench times."""
    try:
        if target.backend == "tensorrt":
            with quiet_polygraphy():
                outputs = target.runner.infer({target.input_name: batch}, check_inputs=False)
            return {k: np.array(v, copy=True) for k, v in outputs.items()}  # the runner reuses its buffers
        return target.runner.infer({target.input_name: batch}, check_inputs=False)
    except LTMPError:
        raise
    except Exception as err:  # noqa: BLE001  (ONNX Runtime's, TensorRT's, PyTorch's or Polygraphy's errors)
        library = LIBRARY.get(target.backend, target.backend)
        raise LTMPError(
            f"{target.file}: {library} failed on a batch of shape {batch.shape}: {first_line(err, 300)}"
        ) from err


def close(target: Target) -> None:
    """Deactivate the target's runner (frees what activation took: a TensorRT context, a checkpoint's weights)."""
    if target.runner is None or not target.runner.is_active:
        return
    if target.backend != "tensorrt":  # nothing to hush, and nothing to import: a Session may close at exit
        target.runner.deactivate()
        return
    with quiet_polygraphy():
        target.runner.deactivate()


@contextlib.contextmanager
def _activated(runner: Any) -> Iterator[None]:
    """``runner`` activated; deactivated again if reading it fails (Polygraphy warns of runners left active)."""
    with quiet_polygraphy():
        runner.activate()
    try:
        yield
    except BaseException:
        with quiet_polygraphy():
            runner.deactivate()
        raise


def _input(runner: Any, path: Path, what: str) -> tuple[str, np.dtype, tuple[int | None, ...]]:
    """The one image input of an active runner, from Polygraphy's input metadata: name, numpy dtype, shape."""
    from polygraphy.datatype import DataType

    with quiet_polygraphy():
        meta = runner.get_input_metadata(use_numpy_dtypes=False)
    if len(meta) != 1:
        raise LTMPError(f"{path}: expected one image input, {what} has {len(meta)}: {', '.join(meta)}")
    ((name, (dtype, shape)),) = meta.items()
    return name, np.dtype(DataType.to_dtype(DataType.from_dtype(dtype), "numpy")), static_dims(shape)


def graph_target(
    source: Path | bytes, providers: Sequence[Provider] | None = None, threads: int | None = None, file: str = ""
) -> Target:
    """A graph file (or a serialised graph named ``file``) on ONNX Runtime, opened by :func:`ort_session`."""
    from ltmp_deploy.runtime.onnxrt_runner import LeanOnnxrtRunner

    where = Path(file or str(source))
    session = ort_session(source, providers, threads, str(where))
    used = list(session.get_providers())
    meta = decode(session.get_modelmeta().custom_metadata_map, str(where))
    short = "+".join(p.replace("ExecutionProvider", "") for p in used)
    runner = LeanOnnxrtRunner(session, name=f"onnxruntime[{short}] {where.name}")
    with _activated(runner):
        name, dtype, shape = _input(runner, where, "the graph")
    outputs = list(runner.output_names)
    return Target(
        runner,
        "onnxruntime",
        str(where),
        meta,
        shape,
        shape_batch_range(shape),
        meta.get("precision") or "fp32",
        input_name=name,
        input_dtype=dtype,
        output_names=outputs,
        providers=used,
    )


def _tensorrt(path: Path) -> Target:
    runner, sidecar = engine_runner(path, name=f"tensorrt {path.name}")
    with _activated(runner):
        name, dtype, shape = _input(runner, path, "the engine")
        engine = runner.engine
        span = batch_range(engine, name, shape[0] if shape else None)
        outputs = [n for n in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors)) if n != name]
    meta = dict(sidecar.get("metadata") or {})
    if sidecar.get("precision"):
        meta["engine_precision"] = sidecar["precision"]
    precision = sidecar.get("precision") or meta.get("precision") or "fp32"
    return Target(
        runner,
        "tensorrt",
        str(path),
        meta,
        shape,
        span,
        precision,
        input_name=name,
        input_dtype=dtype,
        output_names=outputs,
        sidecar=sidecar,
    )


def _plugin(name: str, path: Path) -> Target:
    """``path`` on the runner class the ``ltmp_deploy.backends`` entry point ``name`` names."""
    found = list(importlib.metadata.entry_points(group=PLUGIN_GROUP, name=name))
    if not found:
        missing = f"no {PLUGIN_GROUP} entry point {name!r}"
        raise LTMPError(f"{path}: the {name} backend is not installed here ({missing}); {FULL}")
    try:
        runner_class = found[0].load()
    except Exception as err:  # noqa: BLE001  (ImportError for torch or timm, or a broken install's OSError)
        missing = getattr(err, "name", None) or type(err).__name__
        raise LTMPError(f"{path}: the {name} backend needs {missing}, not installed here; {FULL}") from err
    runner = runner_class(path, name=f"{name} {path.name}")
    with _activated(runner):  # a checkpoint's weights load here
        input_name, dtype, shape = _input(runner, path, "the model")
        meta = runner.metadata()
        outputs = list(runner.output_names)
    return Target(
        runner,
        name,
        str(path),
        meta,
        shape,
        shape_batch_range(shape),
        meta.get("precision") or "fp32",
        input_name=input_name,
        input_dtype=dtype,
        output_names=outputs,
    )
