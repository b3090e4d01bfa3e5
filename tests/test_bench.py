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


def _record(variant: str, median: float, q1: float, q3: float) -> dict:
    return {"variant": variant, "backend": "onnxruntime-cpu", "batch": 1,
            "vs_unpatched": median, "vs_unpatched_q1": q1, "vs_unpatched_q3": q3}  # fmt: skip


def test_noise_is_named_when_quartiles_spread_past_ten_percent():
    from ltmp_deploy.runtime.bench_results import noise_warning, noisy_records, ratio_spread

    tight, wide = _record("ltmp-fixed@0.5", 0.60, 0.58, 0.62), _record("tome@0.5", 0.50, 0.35, 0.60)
    assert ratio_spread(tight) == pytest.approx(0.0333, abs=1e-3)
    doc = {"records": [tight, wide, _record("unpatched", 1.0, 1.0, 1.0)], "machine": {"threads": 2}}
    assert [rec["variant"] for rec, _ in noisy_records(doc)] == ["tome@0.5"]
    line = noise_warning(doc)
    assert "1 of 3 figures are noise" in line and "tome@0.5" in line and "+-25%" in line and "--threads 1" in line
    assert noise_warning({"records": [tight], "machine": {"threads": 1}}) is None
    assert noise_warning({"records": [{**wide, "vs_unpatched": None}]}) is None  # nothing to judge


def test_the_markdown_result_carries_the_noise_warning():
    from bench_runs import tiny_bench_doc

    from ltmp_deploy.bench.tables import markdown

    doc = tiny_bench_doc()
    for rec in doc["records"]:
        if rec["vs_unpatched"] is not None:
            rec["vs_unpatched_q1"] = rec["vs_unpatched_q3"] = rec["vs_unpatched"]
    assert "**Warning:**" not in markdown(doc)
    rec = next(r for r in doc["records"] if r["variant"] != "unpatched")
    rec["vs_unpatched_q1"], rec["vs_unpatched_q3"] = rec["vs_unpatched"] * 0.7, rec["vs_unpatched"] * 1.3
    assert f"**Warning:** 1 of {len(doc['records'])} figures are noise" in markdown(doc)
