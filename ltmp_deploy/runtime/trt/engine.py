"""Opening a TensorRT engine: its JSON sidecar, the version and GPU checks, deserialization.

An engine runs only on the TensorRT version and the GPU it was built with (unless it was built
version- or hardware-compatible). ``ltmp-deploy build`` writes ``ENGINE.json`` next to
``ENGINE`` with the TensorRT version, the GPU, preset, precision, schedule, the source ONNX's
hash and the ONNX metadata (key ``metadata``); this module compares the sidecar with what is
installed before TensorRT sees the bytes, so a mismatch gets a message that says which and what
to do, rather than TensorRT's log. Deserialization goes through Polygraphy's ``EngineFromBytes``.

TensorRT and Polygraphy's TensorRT backend are imported only when an engine is opened.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path
from typing import Any

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.formats import FileKind, sniff
from ltmp_deploy.runtime.parity.compare import quiet_polygraphy
from ltmp_deploy.runtime.trt.targets import normalize_trt_version
from ltmp_deploy.schemas import check

REBUILD = "rebuild it with `ltmp-deploy build` on this device"
TENSORRT_HINT = (
    "install TensorRT: JetPack ships it on a Jetson (python3-libnvinfer); elsewhere "
    "`pip install tensorrt` from NVIDIA's index (the ltmp-deploy[tensorrt] extra)"
)


def import_tensorrt(path: str | os.PathLike, advice: str = TENSORRT_HINT) -> Any:
    """The ``tensorrt`` module, or an LTMPError naming ``path`` (what needs it) and giving ``advice``."""
    try:
        import tensorrt
    except Exception as err:  # noqa: BLE001  (ImportError, or OSError from missing libnvinfer)
        raise LTMPError(f"{path}: TensorRT is not installed here ({type(err).__name__}); {advice}") from err
    return tensorrt


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None when ``import tensorrt`` fails."""
    try:
        return str(import_tensorrt("tensorrt").__version__)
    except LTMPError:
        return None


def sidecar_path(engine: str | os.PathLike) -> Path:
    """``ENGINE.json`` next to ``ENGINE``: written by ``ltmp-deploy build``, read before loading."""
    return Path(f"{os.fspath(engine)}.json")


def model_file_kind(path: str | os.PathLike) -> FileKind:
    """The kind of a model file. An engine is known by its plan magic; a file of no known kind that has
    the sidecar `ltmp-deploy build` writes is taken as an engine too, for TensorRT to judge, so an engine
    whose header the magic does not cover still opens."""
    kind = sniff(path)
    if kind is FileKind.UNKNOWN and sidecar_path(path).is_file():
        return FileKind.ENGINE
    return kind


def read_sidecar(engine: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of ``engine``, or {} when there is none (an engine built by trtexec by hand)."""
    path = sidecar_path(engine)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LTMPError(f"{path}: engine sidecar is not readable JSON ({err}); {REBUILD}") from err
    if not isinstance(doc, dict):
        raise LTMPError(f"{path}: engine sidecar is not a JSON object; {REBUILD}")
    return check(doc, "engine-sidecar", str(path))


def current_gpu() -> str | None:
    """Name of the current CUDA device ("NVIDIA H200", "Orin"), or None when it cannot be read.

    Asks the CUDA runtime that Polygraphy loads (``cudaGetDeviceProperties``: the name is the
    struct's first field, so no struct layout is needed), so neither torch nor pycuda is required.
    """
    try:
        with quiet_polygraphy():
            from polygraphy import cuda

            lib = cuda.wrapper().handle
        device = ctypes.c_int(0)
        if lib.cudaGetDevice(ctypes.byref(device)) != 0:
            return None
        props = ctypes.create_string_buffer(8192)  # larger than any cudaDeviceProp
        for symbol in ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties"):
            func = getattr(lib, symbol, None)
            if func is not None and func(props, device) == 0:
                return props.raw[:256].split(b"\0", 1)[0].decode("utf-8", "replace").strip() or None
    except Exception:  # noqa: BLE001  (no CUDA runtime, no device: nothing to compare)
        return None
    return None


def _gpu_key(name: Any) -> str:
    if isinstance(name, dict):
        name = name.get("name", "")
    key = " ".join(str(name).lower().split())
    return key[len("nvidia ") :] if key.startswith("nvidia ") else key


def _flag(sidecar: dict[str, Any], key: str) -> bool:
    value = sidecar.get(key)
    return bool(value) and str(value).lower() not in ("none", "false", "0")


def _release(version: Any) -> str:
    """major.minor.patch: trtexec's banner gives no build number, the Python bindings do."""
    try:
        return ".".join(normalize_trt_version(str(version)).split(".")[:3])
    except LTMPError:  # a sidecar edited by hand: compare the text as it is
        return str(version)


def check_compatible(engine: str | os.PathLike, sidecar: dict[str, Any], trt_version: str, gpu: str | None) -> None:
    """Refuse an engine whose sidecar names another TensorRT version or another GPU."""
    built_version = sidecar.get("tensorrt_version")
    if built_version and _release(built_version) != _release(trt_version) and not _flag(sidecar, "version_compatible"):
        raise LTMPError(
            f"{engine}: built with TensorRT {built_version}, but TensorRT {trt_version} is installed here; "
            f"an engine runs only on the TensorRT version that built it: {REBUILD}"
        )
    built_gpu = sidecar.get("gpu")
    if built_gpu and gpu and _gpu_key(built_gpu) != _gpu_key(gpu) and not _flag(sidecar, "hardware_compatibility"):
        shown = built_gpu.get("name") if isinstance(built_gpu, dict) else built_gpu
        raise LTMPError(f"{engine}: built for the GPU {shown}, but this device is {gpu}; {REBUILD}")


def load_engine(engine: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Deserialize ``engine`` (after the sidecar checks); returns (ICudaEngine, sidecar)."""
    path = Path(engine)
    trt = import_tensorrt(path)
    sidecar = read_sidecar(path)
    check_compatible(path, sidecar, trt.__version__, current_gpu())
    data = path.read_bytes()
    from polygraphy.backend.trt import EngineFromBytes

    built = f" (its sidecar says TensorRT {sidecar['tensorrt_version']})" if sidecar.get("tensorrt_version") else ""
    refusal = (
        f"{path}: TensorRT {trt.__version__} cannot deserialize this engine{built}: it is truncated or corrupt, "
        f"or was built by another TensorRT version or for another GPU; {REBUILD}"
    )
    try:
        with quiet_polygraphy():
            loaded = EngineFromBytes(data)()
    except Exception as err:  # noqa: BLE001  (PolygraphyException or TensorRT's RuntimeError)
        raise LTMPError(refusal) from err
    if not loaded:
        raise LTMPError(refusal)
    return loaded, sidecar


def engine_runner(engine: str | os.PathLike, name: str | None = None) -> tuple[Any, dict[str, Any]]:
    """A Polygraphy ``TrtRunner`` over the checked, deserialized engine, and its sidecar."""
    loaded, sidecar = load_engine(engine)
    from polygraphy.backend.trt import TrtRunner

    return TrtRunner(loaded, name=name), sidecar


def batch_range(trt_engine: Any, input_name: str, fixed: int | None) -> tuple[int, int | None]:
    """The batch sizes an engine takes: its fixed batch, or optimization profile 0's min..max."""
    if fixed is not None:
        return fixed, fixed
    try:
        low, _, high = trt_engine.get_tensor_profile_shape(input_name, 0)
        return int(low[0]), int(high[0])
    except Exception:  # noqa: BLE001  (TensorRT before 8.5 names profiles differently)
        return 1, None
