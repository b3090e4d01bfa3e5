"""benchmarks/device_check.sh --dry-run: the GPU check's commands parse and run, at toy size on the CPU, and
leave their results and the summary under OUTDIR (the real run needs a CUDA GPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")]


def test_dry_run_runs_every_command_at_toy_size(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(out), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "tests/test_cuda.py" in done.stdout and done.stdout.count("-m ltmp_deploy bench") == 2
    summary = (out / "SUMMARY.md").read_text()
    for step in ("test_cuda", "tiny-eager", "tiny-compile"):
        assert f"- {step}: ok in " in summary
    eager = json.loads((out / "tiny-eager" / "bench.json").read_text())
    assert {r["backend"] for r in eager["records"]} == {"torch-cpu", "onnxruntime-cpu"}
    compiled = json.loads((out / "tiny-compile" / "bench.json").read_text())
    assert "torch-cpu+compile" in {r["backend"] for r in compiled["records"]}
    assert "## tiny-eager" in summary and "## tiny-compile" in summary


def test_usage_errors_exit_2(tmp_path):
    script = str(ROOT / "benchmarks" / "device_check.sh")
    for args in ([], [str(tmp_path), "--dry"]):
        assert subprocess.run(["bash", script, *args], capture_output=True, timeout=60).returncode == 2
