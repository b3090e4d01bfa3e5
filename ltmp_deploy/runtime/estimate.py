"""Measured speed as money: images per second, cost per million images and the saving against the
unpatched model, per variant, backend and batch size, from a bench result and nothing else.

Images per second are the batch over the median of the timed calls (one stream, one machine, the
latency the bench measured); cost per million images is the machine's price per hour over the
images it serves in that hour. The saving against the unpatched model on the same backend and
batch is 1 - the median of the per-round latency ratios (the paired ratio the bench reports,
steadier than a ratio of two medians on a busy machine), with the range from their quartiles;
a day's saving is that fraction of the unpatched model's cost for the day. Every number is
recomputed here from the samples in the file. No torch: runs on a field install.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.bench import paired_samples
from ltmp_deploy.runtime.bench_results import UNPATCHED, find_record, read_bench
from ltmp_deploy.schemas import check

SCHEMA = "ltmp-deploy-estimate/1"
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class CostRow:
    backend: str
    batch: int
    variant: str
    flops_ratio: float
    images_per_s: float
    cost_per_million: float
    saving: float | None  # fraction of the unpatched model's cost saved (paired); None without an unpatched record
    saving_low: float | None  # from the upper quartile of the paired latency ratios
    saving_high: float | None  # from the lower quartile
    machine_hours_per_day: float | None = None
    cost_per_day: float | None = None
    saving_per_day: float | None = None


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise LTMPError(f"{name} {value}: must be a positive number")


def estimate(doc: dict[str, Any], price_per_hour: float, images_per_day: float | None = None) -> list[CostRow]:
    """One row per record of a checked bench document (see :func:`read_bench`), in its order."""
    _check_positive("--price-per-hour", price_per_hour)
    _check_positive("--images-per-day", images_per_day)
    rows = []
    for rec in doc["records"]:
        ips = rec["batch"] / (statistics.median(rec["samples_ms"]) / 1e3)
        cost = price_per_hour / (ips * SECONDS_PER_HOUR) * 1e6
        base = find_record(doc, rec["backend"], rec["batch"], UNPATCHED)
        saving = low = high = None
        if base is not None:
            median, q1, q3 = paired_samples(rec["samples_ms"], base["samples_ms"])
            saving, low, high = 1.0 - median, 1.0 - q3, 1.0 - q1
        per_day: dict[str, float | None] = {}
        if images_per_day is not None:
            hours = images_per_day / ips / SECONDS_PER_HOUR
            per_day = {"machine_hours_per_day": hours, "cost_per_day": hours * price_per_hour}
            if base is not None:
                base_ips = base["batch"] / (statistics.median(base["samples_ms"]) / 1e3)
                per_day["saving_per_day"] = saving * images_per_day / base_ips / SECONDS_PER_HOUR * price_per_hour
        rows.append(
            CostRow(
                rec["backend"],
                rec["batch"],
                rec["variant"],
                rec["flops_ratio"],
                ips,
                cost,
                saving,
                low,
                high,
                **per_day,
            )
        )
    return rows


def estimate_file(path: str | os.PathLike, price_per_hour: float, images_per_day: float | None = None) -> list[CostRow]:
    return estimate(read_bench(path), price_per_hour, images_per_day)


def _money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.4f}"


def _saving(row: CostRow) -> str:
    if row.saving is None:
        return "-"
    return f"{100 * row.saving:+.1f}% ({100 * row.saving_low:+.1f} to {100 * row.saving_high:+.1f})"


def cost_table(rows: Sequence[CostRow], price_per_hour: float, images_per_day: float | None = None) -> str:
    """A readable table (costs in the unit of the price)."""
    daily = images_per_day is not None
    head = (
        f"{'backend':<17} {'batch':>5} {'variant':<22} {'FLOPs':>6} {'images/s':>10} {'cost/1M img':>12} "
        f"{'saving vs unpatched':>27}"
    )
    if daily:
        head += f" {'machine-h/day':>13} {'cost/day':>10} {'saved/day':>10}"
    lines = [
        f"price {price_per_hour:g} per machine-hour"
        + (f", {images_per_day:g} images a day" if daily else "")
        + "; images/s and costs from each variant's median latency (one stream); the saving from the paired "
        "per-round ratios, quartiles in brackets (on a busy machine it can differ from the ratio of the costs)",
        head,
    ]
    for r in rows:
        line = (
            f"{r.backend:<17} {r.batch:>5} {r.variant:<22} {r.flops_ratio:>6.3f} {r.images_per_s:>10.1f} "
            f"{_money(r.cost_per_million):>12} {_saving(r):>27}"
        )
        if daily:
            line += f" {r.machine_hours_per_day:>13.2f} {_money(r.cost_per_day):>10} {_money(r.saving_per_day):>10}"
        lines.append(line)
    return "\n".join(lines)


def cost_document(
    rows: Sequence[CostRow], source: str, price_per_hour: float, images_per_day: float | None = None
) -> dict[str, Any]:
    doc = {
        "schema": SCHEMA,
        "source": source,
        "price_per_hour": price_per_hour,
        "images_per_day": images_per_day,
        "rows": [asdict(r) for r in rows],
    }
    return check(doc, "estimate", f"estimate of {source}")  # what is written follows the published schema
