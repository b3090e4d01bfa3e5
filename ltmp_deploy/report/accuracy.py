"""The accuracy result file: per variant, accuracy and FLOPs (over one or more learning runs), and
the tokens each block keeps (mean and spread over images). The demo and
``benchmarks/accuracy_table.py`` write it; ``ltmp-deploy report`` reads it beside a bench result.

Schema ``ltmp-deploy-accuracy/1``, one JSON document::

    schema, created (UTC, ISO 8601), note
    model       the timm model name
    dataset     {name, split, images}: what the accuracy was measured on
    tokens      tokens entering the first block (unpatched), optional
    headline    the variant the report's headline is about, optional
    variants    [{name, method, label, flops_ratio, accuracy, accuracy_std, accuracy_stderr, images,
                  runs: [{seed, accuracy, flops_ratio}]}]
    tokens_per_block  {variant name: {mean: [per block], std: [...], q10: [...], q90: [...], images}}

``method`` is a bench variant kind (unpatched, ltmp-threshold, ltmp-fixed, tome, oracle) and
``name`` is ``method@label`` as in bench results, so a report can put a variant's accuracy beside
its latency. ``flops_ratio`` is the block FLOPs kept per image on the evaluated images (threshold
mode: their mean), ``accuracy`` the mean over ``runs`` and ``accuracy_std`` their standard
deviation (null for one run). ``images`` (optional) is how many images each run was scored on and
``accuracy_stderr`` (optional) the sampling error of ``accuracy`` on that many images: the binomial
standard error sqrt(p(1-p)/n), which on a site's few hundred held-out images is often larger than
the differences between variants. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import read_json, write_text_atomic
from ltmp_deploy.runtime.bench_results import KINDS, variant_name
from ltmp_deploy.schemas import check

SCHEMA = "ltmp-deploy-accuracy/1"


def sampling_error(accuracy: float, images: int) -> float:
    """The binomial standard error of an accuracy measured on ``images`` images: sqrt(p(1-p)/n)."""
    if images < 1:
        raise LTMPError(f"accuracy result: a sampling error needs at least 1 image, got {images}")
    return math.sqrt(accuracy * (1.0 - accuracy) / images)


def variant_entry(
    method: str, label: str | None, runs: Sequence[Mapping[str, Any]], *, images: int | None = None
) -> dict[str, Any]:
    """One variant from its runs, each ``{"seed": s, "accuracy": a, "flops_ratio": f}``; ``images``:
    how many images each run was scored on, which adds the sampling error of the accuracy."""
    if method not in KINDS:
        raise LTMPError(f"accuracy result: method {method!r} is not one of {', '.join(KINDS)}")
    if not runs:
        raise LTMPError(f"accuracy result: {variant_name(method, label)} has no runs")
    acc = [float(r["accuracy"]) for r in runs]
    mean = statistics.fmean(acc)
    sampled = {} if images is None else {"accuracy_stderr": sampling_error(mean, images), "images": int(images)}
    return {
        "name": variant_name(method, label),
        "method": method,
        "label": label,
        "flops_ratio": statistics.fmean(float(r["flops_ratio"]) for r in runs),
        "accuracy": mean,
        "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,
        **sampled,
        "runs": [
            {"seed": r.get("seed"), "accuracy": float(r["accuracy"]), "flops_ratio": float(r["flops_ratio"])}
            for r in runs
        ],
    }


def tokens_summary(keeps: np.ndarray) -> dict[str, Any]:
    """Tokens leaving each block over images, from an (images, blocks) array of counts (for
    threshold mode: the ``keeps`` of ``calibration.evaluate.per_image_counts``)."""
    keeps = np.asarray(keeps, dtype=float)
    if keeps.ndim != 2 or keeps.shape[0] == 0:
        raise LTMPError(f"tokens per block: expected counts of shape (images, blocks), got {keeps.shape}")
    return {
        "mean": keeps.mean(0).tolist(),
        "std": keeps.std(0).tolist(),
        "q10": np.quantile(keeps, 0.1, axis=0).tolist(),
        "q90": np.quantile(keeps, 0.9, axis=0).tolist(),
        "images": int(keeps.shape[0]),
    }


def accuracy_document(
    model: str,
    dataset: Mapping[str, Any],
    variants: Sequence[Mapping[str, Any]],
    *,
    tokens: int | None = None,
    tokens_per_block: Mapping[str, Mapping[str, Any]] | None = None,
    headline: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    doc = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "note": note,
        "model": model,
        "dataset": dict(dataset),
        "tokens": tokens,
        "headline": headline,
        "variants": [dict(v) for v in variants],
        "tokens_per_block": {k: dict(v) for k, v in (tokens_per_block or {}).items()},
    }
    return check_accuracy(doc)


def write_accuracy(path: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    check_accuracy(doc, str(path))
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    return Path(path)


def read_accuracy(path: str | os.PathLike) -> dict[str, Any]:
    return check_accuracy(read_json(path, "an accuracy result"), str(path))


def check_accuracy(doc: Any, where: str = "accuracy result") -> dict[str, Any]:
    """``doc`` if it follows the schema, else a one-line LTMPError."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise LTMPError(f"{where}: not an ltmp-deploy accuracy result (schema {found!r}, expected {SCHEMA!r})")
    check(doc, "accuracy-result", where)
    names = {v["name"] for v in doc["variants"]}
    for name, t in (doc.get("tokens_per_block") or {}).items():
        if len(t["std"]) != len(t["mean"]):
            raise LTMPError(f"{where}: tokens_per_block[{name!r}] needs per-block 'mean' and 'std' lists of one length")
    if doc.get("headline") is not None and doc["headline"] not in names:
        raise LTMPError(f"{where}: headline {doc['headline']!r} is not among its variants")
    return doc
