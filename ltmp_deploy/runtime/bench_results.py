"""The bench result file (``ltmp-deploy bench`` writes it, ``estimate`` and ``report`` read it).

One JSON document, schema ``ltmp-deploy-bench/1``::

    schema, created (UTC, ISO 8601), command, note
    model      {name, tokens, depth, macs_unpatched (per image, whole model)}
    machine    {cpu, logical_cores, usable_cores, threads, load_average_start/end, os,
                gpu (or null), versions {python, numpy, torch, timm, onnxruntime, onnx, ...}}
    config     {batches, rounds, warmup, targets, threshold_target, opset, backends}
    images     what the timed images were (held-out images of a folder, the digits, seeded random images)
    variants   {name: {kind, label, mode, schedule [[r, k], ...] or null, oracle (name or null),
                       flops_ratio (block FLOPs kept, per image), macs_per_image,
                       thresholds {merge, prune} (threshold mode) or null}}
    skipped    [{backend, reason}]  (backends asked for that could not run here)
    records    one per (backend, batch, variant): every timed call in samples_ms (round order),
               the statistics of those samples, the block FLOPs kept on the images timed
               (flops_ratio; flops_ratio_padded: what a padded threshold-mode batch computes), and
               the per-round paired ratios to unpatched and to the variant's oracle (median, q1, q3).

Every statistic in a record is computed from its ``samples_ms`` by :func:`latency_stats`; readers
that turn results into money (``estimate``) recompute from the samples rather than trust them.
No torch here: the field runtime reads these files.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import read_json
from ltmp_deploy.runtime.bench import percentile
from ltmp_deploy.schemas import check

SCHEMA = "ltmp-deploy-bench/1"

# Variant kinds; a variant's name is the kind, or kind@label (label: a FLOPs target or where the
# schedule came from, e.g. "ltmp-fixed@0.5", "ltmp-fixed@calibrated").
UNPATCHED = "unpatched"
ORACLE = "oracle"
FIXED = "ltmp-fixed"
THRESHOLD = "ltmp-threshold"
TOME = "tome"
KINDS = (UNPATCHED, ORACLE, FIXED, THRESHOLD, TOME)

# Record fields, in the order the CSV writes them (samples_ms goes to its own CSV).
STAT_FIELDS = ("runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "throughput_img_s")
PAIRED_FIELDS = ("vs_unpatched", "vs_unpatched_q1", "vs_unpatched_q3", "vs_oracle", "vs_oracle_q1", "vs_oracle_q3")
RECORD_FIELDS = (
    "backend",
    "batch",
    "variant",
    "kind",
    "label",
    "oracle",
    "flops_ratio",
    "flops_ratio_padded",
    *STAT_FIELDS,
    *PAIRED_FIELDS,
)


def variant_name(kind: str, label: str | None = None) -> str:
    return kind if label is None else f"{kind}@{label}"


def latency_stats(samples_ms: Sequence[float], batch: int) -> dict[str, float]:
    """The statistics a record carries, each taken from the measured samples (never interpolated)."""
    p50 = statistics.median(samples_ms)
    return {
        "runs": len(samples_ms),
        "p50_ms": p50,
        "p90_ms": percentile(samples_ms, 0.9),
        "p99_ms": percentile(samples_ms, 0.99),
        "mean_ms": statistics.fmean(samples_ms),
        "min_ms": min(samples_ms),
        "max_ms": max(samples_ms),
        "throughput_img_s": batch / (p50 / 1e3),
    }


def read_bench(path: str | os.PathLike) -> dict[str, Any]:
    """A bench result from ``path``, checked; a one-line LTMPError for anything else."""
    return check_bench(read_json(path, "a bench result"), str(path))


def check_bench(doc: Any, where: str = "bench result") -> dict[str, Any]:
    """``doc`` if it is a whole bench result whose statistics match its samples, else LTMPError."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise LTMPError(
            f"{where}: not an ltmp-deploy bench result (schema {found!r}, expected {SCHEMA!r}; "
            "write one with `ltmp-deploy bench`)"
        )
    check(doc, "bench-result", where)
    variants, records = doc["variants"], doc["records"]
    for i, rec in enumerate(records):
        _check_record(rec, variants, f"{where}: record {i}")
    return doc


def _check_record(rec: Any, variants: dict[str, Any], where: str) -> None:
    if not isinstance(rec, dict) or any(k not in rec for k in RECORD_FIELDS) or "samples_ms" not in rec:
        missing = [k for k in (*RECORD_FIELDS, "samples_ms") if not isinstance(rec, dict) or k not in rec]
        raise LTMPError(f"{where}: missing fields {', '.join(missing[:4])}")
    samples, batch = rec["samples_ms"], rec["batch"]
    if not isinstance(batch, int) or batch < 1:
        raise LTMPError(f"{where}: batch {batch!r} is not a positive integer")
    if not isinstance(samples, list) or not samples or not all(_positive(s) for s in samples):
        raise LTMPError(f"{where}: samples_ms must be a non-empty list of positive latencies")
    if rec["variant"] not in variants:
        raise LTMPError(f"{where}: variant {rec['variant']!r} is not among the result's variants")
    for key, value in latency_stats(samples, batch).items():
        if not _positive(rec[key]) or not math.isclose(rec[key], value, rel_tol=1e-9):
            raise LTMPError(f"{where}: {key} {rec[key]!r} does not follow from its samples ({value!r})")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def find_record(doc: dict[str, Any], backend: str, batch: int, variant: str) -> dict[str, Any] | None:
    for rec in doc["records"]:
        if rec["backend"] == backend and rec["batch"] == batch and rec["variant"] == variant:
            return rec
    return None


def backends(doc: dict[str, Any]) -> list[str]:
    """The backends with records, in the order they were timed."""
    return list(dict.fromkeys(rec["backend"] for rec in doc["records"]))


def batches(doc: dict[str, Any]) -> list[int]:
    return sorted({rec["batch"] for rec in doc["records"]})


# Quartiles of the per-round ratios wider than +-10% of the median: run to run, such figures moved
# by more than the differences between variants on a busy shared machine.
NOISY_SPREAD = 0.10


def ratio_spread(rec: dict[str, Any], key: str = "vs_unpatched") -> float | None:
    """Half the quartile range of a record's per-round ratios, relative to their median."""
    median, q1, q3 = rec.get(key), rec.get(f"{key}_q1"), rec.get(f"{key}_q3")
    if not all(isinstance(v, (int, float)) for v in (median, q1, q3)) or median <= 0:
        return None
    return (q3 - q1) / 2 / median


def noisy_records(doc: dict[str, Any], limit: float = NOISY_SPREAD) -> list[tuple[dict[str, Any], float]]:
    """(record, spread) of every record whose ratio to unpatched spreads more than ``limit``."""
    found = []
    for rec in doc["records"]:
        spread = ratio_spread(rec)
        if spread is not None and spread > limit:
            found.append((rec, spread))
    return found


def noise_warning(doc: dict[str, Any], limit: float = NOISY_SPREAD) -> str | None:
    """One line saying which figures are noise, or None when every spread is within ``limit``."""
    noisy = noisy_records(doc, limit)
    if not noisy:
        return None
    rec, spread = max(noisy, key=lambda item: item[1])
    threads = doc.get("machine", {}).get("threads")
    advice = (
        f"the {threads} threads compete with whatever else runs: rerun with --threads 1 and more --rounds"
        if isinstance(threads, int) and threads > 1
        else "the machine was busy: rerun when it is quiet, or with more --rounds"
    )
    return (
        f"{len(noisy)} of {len(doc['records'])} figures are noise: their per-round ratios spread more than "
        f"+-{limit:.0%} (worst: {rec['variant']} on {rec['backend']}, batch {rec['batch']}, +-{spread:.0%}); " + advice
    )
