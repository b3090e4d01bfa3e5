"""runtime.bench: the arithmetic of interleaved timing (no timing is asserted)."""

import pytest

from ltmp_deploy.runtime.bench import Timing, interleaved, paired_ratio


def timing(name, samples):
    return Timing(name, sorted(samples)[len(samples) // 2], max(samples), len(samples), 1, tuple(samples))


def test_paired_ratio_cancels_rounds_that_ran_slow_for_everyone():
    # Round 2 ran 3x slower for both variants; a is 1.1x b in every round.
    b = timing("b", [10.0, 30.0, 10.0, 10.0, 30.0])
    a = timing("a", [11.0, 33.0, 11.0, 11.0, 33.0])
    median, q1, q3 = paired_ratio(a, b)
    assert median == pytest.approx(1.1) and q1 == pytest.approx(1.1) and q3 == pytest.approx(1.1)


def test_interleaved_keeps_samples_in_round_order():
    calls = []
    out = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, batch=1, rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up, then interleaved rounds
    assert len(out["a"].samples_ms) == 3 and out["a"].runs == 3


def test_paired_ratio_needs_samples():
    with pytest.raises(ValueError, match="no per-round samples"):
        paired_ratio(Timing("a", 1.0, 1.0, 1, 1), Timing("b", 1.0, 1.0, 1, 1))
