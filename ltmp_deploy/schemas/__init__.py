"""JSON Schemas of the files the toolkit writes, and the one check every reader runs.

Each format has a ``NAME.schema.json`` here (docs/formats.md lists them; other tools can
validate against the same files). :func:`check` validates a decoded document with the
``jsonschema`` library and turns the first problem into one line: the file, the field as a JSON
path, what is wrong. Readers decode JSON with :mod:`json`, so any spelling of a valid document
(spaces, indentation, key order) reads the same. Standard library and jsonschema only: the field
runtime reads these files without torch, on Python 3.8 too.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from ltmp_deploy.errors import LTMPError

HERE = Path(__file__).parent
PREFIX = "urn:ltmp-deploy:"  # each schema's $id is PREFIX + its file name's stem
FORMATS = (
    "audit-log",
    "bench-result",
    "accuracy-result",
    "estimate",
    "cost-model",
    "validation-report",
    "engine-sidecar",
    "checkpoint-metadata",
    "onnx-metadata",
)
_SHOWN = 60  # characters of an offending value quoted in a message


def schema_path(name: str) -> Path:
    """The schema file of format ``name`` (one of :data:`FORMATS`, or "common")."""
    return HERE / f"{name}.schema.json"


@functools.lru_cache(maxsize=None)  # noqa: UP033  (functools.cache is 3.9+; the field runtime runs on 3.8)
def _schemas() -> dict[str, Any]:
    return {PREFIX + name: json.loads(schema_path(name).read_text(encoding="utf-8")) for name in (*FORMATS, "common")}


# Parts of a format that are also handed over on their own (a preprocessing config to preprocess()).
FRAGMENTS = {"data-config": {"$ref": PREFIX + "common#/$defs/data_config"}}


@functools.lru_cache(maxsize=None)  # noqa: UP033  (functools.cache is 3.9+; the field runtime runs on 3.8)
def validator(name: str) -> Any:
    """A jsonschema validator of format ``name`` (or a fragment) that resolves the other schemas here, not online."""
    import jsonschema

    schemas = _schemas()
    schema = FRAGMENTS.get(name) or schemas[PREFIX + name]
    cls = jsonschema.validators.validator_for(schema)
    try:  # jsonschema >= 4.18 resolves references through a registry
        from referencing import Registry, Resource

        registry = Registry().with_resources((uri, Resource.from_contents(s)) for uri, s in schemas.items())
        return cls(schema, registry=registry)
    except ImportError:  # 4.17 (the last release without rpds-py, for old field devices)
        resolver = jsonschema.RefResolver(PREFIX + name, schema, store=dict(schemas))
        return cls(schema, resolver=resolver)


def problem(doc: Any, name: str) -> str | None:
    """What is wrong with ``doc`` as format ``name``, in words ("$.records[0].batch: ..."), or None."""
    from jsonschema.exceptions import best_match

    error = best_match(validator(name).iter_errors(doc))
    return None if error is None else _describe(error)


def plain(value: Any) -> Any:
    """``value`` with tuples as lists and mappings as dicts: how JSON would hand it over (timm's
    data configs hold tuples)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def check(doc: Any, name: str, where: str) -> Any:
    """``doc`` when it is a valid document of format ``name``; else a one-line LTMPError that starts
    with ``where`` (the file), then the field and what is wrong with it."""
    found = problem(doc, name)
    if found is not None:
        schema = "common.schema.json" if name in FRAGMENTS else schema_path(name).name
        raise LTMPError(f"{where}: {found} (not a valid {name} per the schema {schema})")
    return doc


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _field(path: Any) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(error: Any) -> str:
    """One line for a jsonschema ValidationError: the field, then what is wrong with it."""
    kind, value, instance = error.validator, error.validator_value, error.instance
    at = _field(error.absolute_path)
    if kind == "required":
        missing = next((k for k in value if isinstance(instance, dict) and k not in instance), value[0])
        return f"{_field([*error.absolute_path, missing])}: missing"
    if kind == "dependentRequired" and isinstance(instance, dict):
        needs = [(k, n) for k, names in value.items() if k in instance for n in names if n not in instance]
        if needs:
            return f"{_field([*error.absolute_path, needs[0][1]])}: missing (needed with {needs[0][0]!r})"
    if kind == "type":
        wanted = " or ".join(value) if isinstance(value, list) else value
        return f"{at}: {_short(instance)} is not of type {wanted}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": "below", "maximum": "above", "exclusiveMinimum": "not above"}
        words["exclusiveMaximum"] = "not below"
        return f"{at}: {_short(instance)} is out of range ({words[kind]} {value})"
    if kind in ("const", "enum"):
        allowed = _short(value) if kind == "const" else ", ".join(_short(v) for v in value)
        return f"{at}: {_short(instance)} is not {'one of ' if kind == 'enum' else ''}{allowed}"
    if kind in ("minItems", "maxItems", "minProperties", "minLength"):
        return f"{at}: {_short(instance)} has too few or too many entries ({kind} {value})"
    return f"{at}: {' '.join(error.message.split())[:200]}"


__all__ = ["FORMATS", "FRAGMENTS", "check", "plain", "problem", "schema_path", "validator"]
