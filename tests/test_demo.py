"""`ltmp-deploy demo --quick`: every step of the main job runs and writes what the report promises.

The base model is a one-epoch train_base run placed in a fresh cache, so the demo does not train
for minutes; the numbers it reaches are not checked, only that each step produced them.
"""

from __future__ import annotations

import json

import pytest

from ltmp_deploy import embedded
from ltmp_deploy.cli import main

pytestmark = pytest.mark.slow


def test_quick_demo_runs_every_step(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    base = cache / f"{embedded.MODEL_NAME}-r{embedded.RECIPE_VERSION}.safetensors"
    cache.mkdir()
    embedded.train_base(base, epochs=1, max_train_images=64, progress=False)
    monkeypatch.setenv(embedded.CACHE_ENV, str(cache))
    workdir = tmp_path / "demo"

    assert main(["demo", "--quick", "--workdir", str(workdir), "--threads", "1"]) == 0

    out = capsys.readouterr().out
    assert f"{base}: test accuracy" in out  # the cached base was used, not retrained
    report = json.loads((workdir / "report.json").read_text())
    assert set(report["rows"]) == {"unpatched", "ltmp-threshold", "ltmp-fixed", "tome-fixed-r"}
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 < r["flops"] <= 1.0 for r in report["rows"].values())
    assert report["validation"]["fixed"]["ok"] and report["validation"]["threshold"]["ok"]
    assert report["trt"]["fixed"]["8.5"] and not report["trt"]["threshold"]["8.5"]
    assert set(report["latency_ms"]) == {"batch1", "batch8"}
    assert report["latency_ms"]["batch8"]["unpatched"]["p50_ms"] > 0
    html = workdir / "report" / "report.html"
    assert html.is_file() and report["files"]["report"] == str(html)
    assert f"report: {html}" in out and "FLOPs saved" in out
    for name in ("patched", "learned", "fixed"):
        assert (workdir / f"{name}.safetensors").is_file()
