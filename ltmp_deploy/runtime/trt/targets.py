"""The TensorRT versions this toolkit checks graphs against and builds engines for.

One table, read by the parser check (``trt/parser_check.py``) and the build presets
(``trt/presets.py``); importing it costs nothing (no onnx, no numpy), so the CLI can list it.
Keys are ordered oldest first: a feature "from X" holds for X and every later key. Targets are
compared through :func:`at_least`, never as strings ("10.13" < "8.5" as text, and "10" stands for
the 10.x releases after 10.13).
"""

from __future__ import annotations

import re

from ltmp_deploy.errors import LTMPError

#: key -> what it means. Each Jetson key is the TensorRT a JetPack release ships.
TRT_TARGETS: dict[str, str] = {
    "8.5": "TensorRT 8.5 (JetPack 5.1)",
    "8.6": "TensorRT 8.6 (JetPack 6.0)",
    "10.3": "TensorRT 10.3 (JetPack 6.1/6.2)",
    "10.13": "TensorRT 10.13 (JetPack 7.0/7.1, Jetson Thor)",
    "10": "TensorRT 10.x other than 10.3 and 10.13 (JetPack 7.2 ships 10.16)",
    "11": "TensorRT 11.0 to 11.3 (no JetPack; strongly typed: no FP16/INT8 flags, precision comes from the graph)",
    "11.4": "TensorRT 11.4 and later 11.x (11.4.1: JetPack 7.2.2+ on Jetson AGX Orin and Thor; strongly typed)",
}


def normalize_trt_version(version: str) -> str:
    """ "8.5.2.2", "v8502" / "v100300" (trtexec's banner) or "10.3.0.30-1+cuda12.5" (dpkg) -> dotted."""
    text = re.split(r"[-+~]", str(version).strip(), maxsplit=1)[0]
    banner = re.fullmatch(r"v?(\d{4,6})", text)
    if banner:  # trtexec prints major*1000+minor*100+patch for 8.x, major*10000+minor*100+patch for 10+
        n = int(banner.group(1))
        major = n // 10000 if n >= 10000 else n // 1000
        rest = n - major * (10000 if n >= 10000 else 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    if not re.fullmatch(r"\d+(\.\d+){1,3}", text):
        raise LTMPError(f"TensorRT version {version!r}: expected something like 10.3.0 (or trtexec's v100300)")
    return text


def trt_key(version: str) -> str:
    """The TRT_TARGETS key of an installed TensorRT version string ("10.3.0.30" -> "10.3")."""
    parts = normalize_trt_version(version).split(".")
    major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    if major == 8 and minor in (5, 6):
        return f"8.{minor}"
    if major == 10:
        return f"10.{minor}" if f"10.{minor}" in TRT_TARGETS else "10"
    if major == 11:
        return "11.4" if minor >= 4 else "11"
    raise LTMPError(f"TensorRT {version} is not a target of this toolkit (targets: {', '.join(TRT_TARGETS)})")


def at_least(target: str, first: str) -> bool:
    """True when ``target`` is the key ``first`` or a later one (a feature "from X" holds for both)."""
    keys = list(TRT_TARGETS)
    return keys.index(target) >= keys.index(first)


def strongly_typed_only(target: str) -> bool:
    """TensorRT 11 and later build strongly typed networks only: no FP16/INT8 builder flags."""
    return at_least(target, "11")


__all__ = ["TRT_TARGETS", "at_least", "normalize_trt_version", "strongly_typed_only", "trt_key"]
