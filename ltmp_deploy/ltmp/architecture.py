"""Architectures: the JSON that names the ViT a checkpoint or a model description holds, and the
one function that builds a model from it.

An architecture arrives in files that may come from anyone, so nothing in it may choose what code
runs or which files are read. It names either a model registered with timm (``timm_model``) or one
of timm's Vision Transformer classes (``timm_class``), looked up in a table of those classes and
never imported by name. Its arguments (``kwargs`` or ``config``) must be plain JSON values, each
named by the constructor; arguments that make timm load weights or configurations
(``pretrained*``, ``checkpoint_path``, ``cache_dir``) are refused before anything is built.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from ltmp_deploy.errors import LTMPError, first_line

# The keys an architecture may have: a name or a class, and its arguments.
KEYS = ("timm_model", "timm_class", "kwargs", "config")
DESCRIBED = ("preprocessing", "labels")  # a description's other keys: checked where they are used
# create_model arguments that read weights or configurations from files or a hub.
LOADING = ("pretrained", "checkpoint_path", "cache_dir")


def supported_classes() -> dict[str, type]:
    """timm's Vision Transformer classes by qualified name: the only classes ``timm_class`` may name."""
    found: dict[str, type] = {}
    todo: list[type] = [VisionTransformer]
    while todo:
        cls = todo.pop()
        if cls.__module__.split(".")[0] == "timm":
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        todo.extend(cls.__subclasses__())
    return found


def _parameters(classes: list[type]) -> set[str]:
    """Argument names the constructors of ``classes`` (and their Vision Transformer bases) declare."""
    names: set[str] = set()
    for cls in classes:
        for base in cls.__mro__:
            if isinstance(base, type) and issubclass(base, VisionTransformer):
                params = inspect.signature(base.__init__).parameters.values()
                names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names - {"self"}


def _plain_json(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    return False


def check_architecture(architecture: Any, where: str = "") -> tuple[type | None, str | None, str, dict[str, Any]]:
    """``(class, name, key, arguments)`` of a checked architecture, or a one-line LTMPError.

    ``where``: a prefix for errors naming the file, e.g. ``"model.safetensors: "``."""
    if not isinstance(architecture, dict):
        raise LTMPError(f"{where}the architecture must be a JSON object, not {type(architecture).__name__}")
    unknown = sorted(set(architecture) - set(KEYS))
    if unknown:
        raise LTMPError(f"{where}architecture: unknown key {unknown[0]!r} (expected {', '.join(KEYS)})")
    name, qualname = architecture.get("timm_model"), architecture.get("timm_class")
    if (name is None) == (qualname is None):
        raise LTMPError(f"{where}architecture: give exactly one of 'timm_model' and 'timm_class'")
    key = "kwargs" if "kwargs" in architecture else "config"
    kwargs = architecture.get(key) or {}
    if not isinstance(kwargs, dict):
        raise LTMPError(f"{where}'{key}' must be a JSON object of model arguments, not {type(kwargs).__name__}")
    if name is not None:
        import ltmp_deploy.ltmp.embedded_vit  # noqa: F401  registers the embedded default with timm

        if not isinstance(name, str) or not timm.is_model(name):
            raise LTMPError(f"{where}timm_model {name!r}: not a timm model name (timm.list_models() lists them)")
        cls, allowed = None, _parameters(list(supported_classes().values()))
    else:
        cls = supported_classes().get(qualname) if isinstance(qualname, str) else None
        if cls is None:
            raise LTMPError(
                f"{where}timm_class {qualname!r}: not a timm Vision Transformer class "
                f"(expected one of {', '.join(sorted(supported_classes()))})"
            )
        allowed = _parameters([cls])
    _check_arguments(kwargs, allowed, f"{where}{key}")
    return cls, name, key, kwargs


def _check_arguments(kwargs: dict[str, Any], allowed: set[str], where: str) -> None:
    for arg, value in kwargs.items():
        if arg.startswith(LOADING):
            raise LTMPError(f"{where}: {arg!r} would make timm load files; pass weights with --weights instead")
        if arg not in allowed:
            raise LTMPError(f"{where}: unexpected keyword argument {arg!r} (not an argument of timm's ViT)")
        if not _plain_json(value):
            raise LTMPError(f"{where}: {arg!r} must be a plain JSON value, not {type(value).__name__}")


def build_model(architecture: dict[str, Any], source: str | os.PathLike | None = None) -> torch.nn.Module:
    """An unpatched timm model from ``{"timm_model": name, "kwargs": {...}}`` or
    ``{"timm_class": "module.Class", "config": {...}}`` (the authors' golden JSON shape), checked
    first by :func:`check_architecture`.

    ``source``: the file the architecture came from, named in errors."""
    where = f"{source}: " if source is not None else ""
    cls, name, key, kwargs = check_architecture(architecture, where)
    try:
        if name is not None:
            return timm.create_model(name, pretrained=False, **kwargs)
        return cls(**kwargs)
    except (RuntimeError, TypeError, AttributeError, ImportError, AssertionError, ValueError, KeyError) as err:
        # timm checks its arguments with assert (e.g. a width its heads do not divide)
        what = name or cls.__name__
        raise LTMPError(f"{where}timm cannot build {what} with {key} {kwargs}: {first_line(err)}") from err


def read_description(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model description JSON, read once: its checked architecture (``timm_class`` + ``config``, or
    ``timm_model`` + ``kwargs``) and what it says beside it (``preprocessing``, ``labels``)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LTMPError(f"{path}: not a readable model description JSON ({err})") from err
    if not isinstance(doc, dict) or not (doc.get("timm_model") or doc.get("timm_class")):
        raise LTMPError(f"{path}: a model description needs 'timm_model' or 'timm_class'")
    architecture = {k: doc[k] for k in KEYS if k in doc}
    check_architecture(architecture, f"{path}: ")
    return architecture, {k: doc[k] for k in DESCRIBED if k in doc}
