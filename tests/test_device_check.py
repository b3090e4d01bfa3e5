"""benchmarks/device_check.sh --dry-run: the GPU check's commands parse and run, at toy size on the CPU (after
installing the wheels --wheels gives, as for an offline machine), and leave their results and the summary under
OUTDIR (the real run needs a CUDA GPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")]


def probe_wheel(folder: Path) -> Path:
    """A minimal wheel (one empty package), so that --wheels is tried without reaching an index."""
    wheel = folder / "ltmp_wheel_probe-0.1-py3-none-any.whl"
    info = "ltmp_wheel_probe-0.1.dist-info"
    files = {
        "ltmp_wheel_probe/__init__.py": "",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: ltmp-wheel-probe\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


def test_dry_run_runs_every_command_at_toy_size(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    wheels = tmp_path / "wheels"  # as for an offline machine
    wheels.mkdir()
    probe_wheel(wheels)
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(out), "--dry-run", "--wheels", str(wheels)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "tests/test_cuda.py" in done.stdout and done.stdout.count("-m ltmp_deploy bench") == 2
    summary = (out / "SUMMARY.md").read_text()
    assert f"installed 1 wheels from {wheels}" in done.stdout
    assert f"Installed for this run from {wheels}: ltmp_wheel_probe-0.1-py3-none-any.whl" in summary
    for step in ("test_cuda", "tiny-eager", "tiny-compile"):
        assert f"- {step}: ok in " in summary
    eager = json.loads((out / "tiny-eager" / "bench.json").read_text())
    assert {r["backend"] for r in eager["records"]} == {"torch-cpu", "onnxruntime-cpu"}
    compiled = json.loads((out / "tiny-compile" / "bench.json").read_text())
    assert "torch-cpu+compile" in {r["backend"] for r in compiled["records"]}
    assert "## tiny-eager" in summary and "## tiny-compile" in summary


def test_usage_errors_exit_2(tmp_path):
    script = str(ROOT / "benchmarks" / "device_check.sh")
    for args in ([], [str(tmp_path), "--dry"], [str(tmp_path), "--wheels"]):
        assert subprocess.run(["bash", script, *args], capture_output=True, timeout=60).returncode == 2
    refused = subprocess.run(["bash", script, str(tmp_path), "--wheels", str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 2 and "no .whl files there" in refused.stderr
