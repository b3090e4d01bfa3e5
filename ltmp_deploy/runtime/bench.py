"""Latency benchmarking: several variants timed interleaved, in one run, reported side by side.

Interleaving (A, B, C, A, B, C, ...) spreads drift (thermal, other processes) over every variant
alike, so ratios between variants stay meaningful on a busy or throttling machine. Numbers are
measurements of this run; nothing here decides pass or fail. No torch: runs on a field device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass
class Timing:
    name: str
    median_ms: float
    p90_ms: float
    runs: int
    batch: int
    samples_ms: tuple[float, ...] = ()  # in round order, for paired comparisons

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch / (self.median_ms / 1e3)

    def percentile_ms(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the per-round samples; ``percentile`` says which sample."""
        if not self.samples_ms:
            raise ValueError(f"{self.name} carries no per-round samples")
        return percentile(self.samples_ms, q)


def percentile(samples: Sequence[float], q: float) -> float:
    """The sample at rank ``int(q * n)`` of the sorted samples (the largest for ranks past the end):
    always a measured value, never an interpolation. With fewer than 1/(1-q) samples it is the
    slowest run."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    batch: int,
    rounds: int = 20,
    warmup: int = 2,
    on_round: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time each zero-argument callable ``rounds`` times, interleaved, after ``warmup`` calls.
    ``on_round`` is called after each round, outside the timed calls (a progress bar)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
        if on_round is not None:
            on_round()
    return {
        name: Timing(name, statistics.median(v), percentile(v, 0.9), len(v), batch, tuple(v))
        for name, v in samples.items()
    }


def table(timings: Mapping[str, Timing], baselines: tuple[str, ...] = ()) -> str:
    """A readable table: median, fastest and p90 latency, throughput, and the ratio of medians to
    each baseline. (Noise only ever adds time, so on a shared machine the fastest run is worth a
    look beside the median.)"""
    head = f"{'variant':<18} {'median ms':>10} {'min ms':>9} {'p90 ms':>9} {'img/s':>8}" + "".join(
        f" {'vs ' + b:>14}" for b in baselines
    )
    lines = [head]
    for t in timings.values():
        ratios = "".join(f" {t.median_ms / timings[b].median_ms:>14.3f}" for b in baselines if b in timings)
        fastest = f"{min(t.samples_ms):>9.2f}" if t.samples_ms else f"{'-':>9}"
        lines.append(f"{t.name:<18} {t.median_ms:>10.2f} {fastest} {t.p90_ms:>9.2f} {t.throughput:>8.1f}{ratios}")
    return "\n".join(lines)


def paired_ratio(a: Timing, b: Timing) -> tuple[float, float, float]:
    """Median and quartiles of a/b taken round by round (both timed in the same rounds).

    On a shared or throttling machine whole rounds run slow together; the ratio within a round
    cancels that, so it is steadier than the ratio of medians.
    """
    if not a.samples_ms or not b.samples_ms:
        raise ValueError(f"{a.name} and {b.name} carry no per-round samples")
    return paired_samples(a.samples_ms, b.samples_ms)


def paired_samples(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """:func:`paired_ratio` of two lists of per-round samples."""
    ratios = sorted(x / y for x, y in zip(a, b))
    if not ratios:
        raise ValueError("paired ratio of empty samples")
    # "inclusive": quartiles between measured ratios (the default extrapolates past them on few rounds)
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), quartiles[0], quartiles[2]
