"""``ltmp-deploy bench --dtype / --compile / --cuda-graph`` (what benchmarks/bench_torch.py timed before it was
folded into bench): the options reach the run, torch.compile'd variants are timed or skipped with the reason, and
what cannot run here is refused in one line. torch.compile runs for real with its ``eager`` backend (Dynamo traces
every variant; inductor's code generation takes minutes per variant on 2 cores and is left to the GPU check,
benchmarks/device_check.sh)."""

from __future__ import annotations

import json
import types

import pytest
import torch
from bench_runs import tiny_checkpoint
from conftest import one_torch_thread

from ltmp_deploy.bench.torch_paths import _FAIL_ON_LIMIT_NAMES, _RECOMPILE_LIMIT_NAMES, set_compile_limits
from ltmp_deploy.cli import main

pytestmark = pytest.mark.slow
VARIANTS = {"unpatched", "oracle@0.5", "ltmp-fixed@0.5", "tome@0.5"}


@pytest.fixture()
def dynamo_limits(monkeypatch):
    """bench sets Dynamo's recompile limits; they are restored after the test, where this torch has them."""
    config = getattr(getattr(torch, "_dynamo", None), "config", None)
    for name in (*_RECOMPILE_LIMIT_NAMES, *_FAIL_ON_LIMIT_NAMES):
        if config is not None and hasattr(config, name):
            monkeypatch.setattr(config, name, getattr(config, name))


def bench(tmp_path, *extra: str) -> int:
    checkpoint = tiny_checkpoint(tmp_path)
    args = ["bench", str(checkpoint), "--targets", "0.5", "--no-threshold", "--batch", "2", "--rounds", "2"]
    with one_torch_thread():
        return main([*args, "--warmup", "1", "--threads", "1", "-o", str(tmp_path / "out"), *extra])


def test_compiled_variants_are_timed_or_skipped_with_the_reason(tmp_path, dynamo_limits):
    assert bench(tmp_path, "--backends", "torch-cpu", "--compile", "eager") == 0
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert doc["config"]["compile"] == "eager" and doc["config"]["dtype"] == "fp32" and not doc["config"]["cuda_graph"]
    assert "--compile eager" in doc["command"]
    eager = {r["variant"] for r in doc["records"] if r["backend"] == "torch-cpu"}
    compiled = {r["variant"] for r in doc["records"] if r["backend"] == "torch-cpu+compile"}
    failed = {s["variant"]: s["reason"] for s in doc["skipped"] if s["backend"] == "torch-cpu+compile"}
    assert eager == VARIANTS and compiled | set(failed) == VARIANTS and not compiled & set(failed)
    assert "unpatched" in compiled  # timm's own blocks compile
    assert all(r.startswith("torch.compile failed at batch 2: ") for r in failed.values())
    # ratios against the compiled unpatched model
    assert all(r["vs_unpatched"] > 0 for r in doc["records"] if r["backend"] == "torch-cpu+compile")
    assert "torch-cpu+compile" in (tmp_path / "out" / "bench.md").read_text()


def test_no_tome_leaves_tome_out_and_says_so_in_the_command(tmp_path):
    # What the GPU check's compile step runs: ToMe compiles as long as fixed mode there.
    assert bench(tmp_path, "--backends", "torch-cpu", "--no-tome") == 0
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert {r["variant"] for r in doc["records"]} == VARIANTS - {"tome@0.5"}
    assert doc["config"]["tome"] is False and "--no-tome" in doc["command"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--dtype", "fp16"), "--dtype fp16: PyTorch runs fp16 on CUDA only"),
        (("--cuda-graph",), "--cuda-graph: CUDA graphs are captured on torch-cuda"),
    ],
)
def test_what_the_cpu_cannot_run_is_refused_in_one_line(tmp_path, capsys, extra, message):
    assert bench(tmp_path, "--backends", "torch-cpu", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("present", [(), ("cache_size_limit", "fail_on_cache_limit_hit"), ("recompile_limit",)])
def test_compile_limits_set_what_this_torch_has_and_say_what_it_lacks(monkeypatch, present):
    # Stands in for torch builds that name, or hide, dynamo's recompile settings differently.
    config = types.SimpleNamespace(**{name: None for name in present})
    monkeypatch.setattr(torch, "_dynamo", types.SimpleNamespace(config=config), raising=False)
    notes = set_compile_limits(64)
    assert {k: v for k, v in vars(config).items()} == {
        n: 64 if "limit" in n and "hit" not in n else True for n in present
    }
    assert len(notes) == 2 - len(present)
