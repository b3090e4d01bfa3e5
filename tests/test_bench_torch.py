"""benchmarks/bench_torch.py on a tiny ViT: the records it writes, and that a variant failing under
torch.compile (at its first call or while timed) is reported and leaves the rest of the run alone.
torch.compile itself is replaced by a stand-in: a real compile takes minutes on 2 cores."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch
from conftest import one_torch_thread, tiny_vit

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_torch.py"
VARIANTS = {"unpatched", "oracle", "ltmp-fixed", "ltmp-threshold"}


@pytest.fixture()
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_torch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.timm, "create_model", lambda name, pretrained=False: tiny_vit())
    config = getattr(getattr(torch, "_dynamo", None), "config", None)
    for name in (*module._RECOMPILE_LIMIT_NAMES, *module._FAIL_ON_LIMIT_NAMES):
        if config is not None and hasattr(config, name):  # restored after the test, where this torch has it
            monkeypatch.setattr(config, name, getattr(config, name))
    return module


def run(bench, tmp_path, *extra: str) -> dict:
    out = tmp_path / "bench.json"
    with one_torch_thread():
        bench.main(["--model", "tiny", "--rounds", "2", "--threads", "1", "--json", str(out), *extra])
    return json.loads(out.read_text())


def test_records_per_model_dtype_batch_variant(bench, tmp_path):
    result = run(bench, tmp_path, "--batch", "1", "3", "--dtype", "fp32", "bf16")
    records = result["records"]
    assert len(records) == 2 * 2 * 4
    assert {(r["dtype"], r["batch"]) for r in records} == {(d, b) for d in ("fp32", "bf16") for b in (1, 3)}
    for r in records:
        assert r["variant"] in VARIANTS and not r["compiled"]
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["img_per_s"] > 0
        assert 0 < r["flops_ratio"] <= 1
    unpatched = [r for r in records if r["variant"] == "unpatched"]
    assert all(r["vs_unpatched"] == 1.0 and r["flops_ratio"] == 1.0 for r in unpatched)
    fixed = [r for r in records if r["variant"] == "ltmp-fixed"]
    assert all(abs(r["flops_ratio"] - 0.5) < 0.1 for r in fixed)
    threshold = [r for r in records if r["variant"] == "ltmp-threshold"]
    assert all(r["flops_ratio_padded"] >= r["flops_ratio"] - 1e-9 for r in threshold)
    assert set(result["models"]) == {"tiny/fp32", "tiny/bf16"}
    assert not list(tmp_path.glob(".bench.json.*"))  # written atomically: no temporary left


def test_compile_failure_of_one_variant_is_reported_and_skipped(bench, tmp_path, monkeypatch):
    def fake_compile(model):
        def call(x):
            if model.ltmp.mode == "threshold":
                raise RuntimeError("data-dependent shape\nmore detail")
            return model(x)

        return call

    monkeypatch.setattr(bench.torch, "compile", fake_compile)
    result = run(bench, tmp_path, "--batch", "2", "3", "--compile")
    for batch in (2, 3):
        records = [r for r in result["records"] if r["batch"] == batch]
        assert {r["variant"] for r in records if r["compiled"]} == VARIANTS - {"ltmp-threshold"}
        assert {r["variant"] for r in records if not r["compiled"]} == VARIANTS
    failures = [n for n in result["notes"] if "torch.compile failed" in n]
    assert (
        len(failures) == 1 and "ltmp-threshold" in failures[0] and "data-dependent shape" in failures[0]
    )  # tried once
    assert all(r["vs_eager"] > 0 for r in result["records"] if r["compiled"])


def test_compiled_variant_failing_while_timed_falls_back_to_eager(bench, tmp_path, monkeypatch):
    calls = {"n": 0}

    def fake_compile(model):
        def call(x):
            calls["n"] += 1
            if calls["n"] > 4:  # the four compile calls pass; the timed rounds fail
                raise RuntimeError("recompiled")
            return model(x)

        return call

    monkeypatch.setattr(bench.torch, "compile", fake_compile)
    result = run(bench, tmp_path, "--batch", "1", "--compile")
    assert {r["variant"] for r in result["records"]} == VARIANTS
    assert not any(r["compiled"] for r in result["records"])
    assert any("timing eager only" in n for n in result["notes"])


def test_out_of_memory_skips_the_batch_and_goes_on(bench, tmp_path, monkeypatch):
    real = bench.interleaved

    def interleaved(calls, batch, **kwargs):
        if batch == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(calls, batch, **kwargs)

    monkeypatch.setattr(bench, "interleaved", interleaved)
    result = run(bench, tmp_path, "--batch", "1", "3", "2")
    assert sorted({r["batch"] for r in result["records"]}) == [1, 2]
    assert any("batch 3: out of GPU memory" in n for n in result["notes"])


@pytest.mark.parametrize("present", [(), ("cache_size_limit", "fail_on_cache_limit_hit"), ("recompile_limit",)])
def test_compile_limits_set_what_this_torch_has_and_say_what_it_lacks(bench, monkeypatch, present):
    # Stands in for torch builds that name, or hide, dynamo's recompile settings differently.
    config = types.SimpleNamespace(**{name: None for name in present})
    monkeypatch.setattr(torch, "_dynamo", types.SimpleNamespace(config=config), raising=False)
    notes = bench.set_compile_limits(64)
    assert {k: v for k, v in vars(config).items()} == {
        n: 64 if "limit" in n and "hit" not in n else True for n in present
    }
    assert len(notes) == 2 - len(present)
