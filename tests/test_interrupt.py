"""Ctrl-C and SIGTERM in the middle of writing: the command says so in one line, exits 130 or 143,
and leaves neither the output nor its temporary file behind.

``predict --log-decisions`` writes its audit log to a temporary file for the whole run and renames
it at the end; the test waits until that file holds lines (the run is mid-write), then signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_models import exported

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 4000  # the same picture listed again and again: seconds of work after the first line
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and the child would inherit that (Python
    then never raises KeyboardInterrupt): give the child the default, as a terminal's Ctrl-C meets it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_partial_file(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> Path:
    """The temporary file once it holds something; fails if the run ends or writes nothing first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before writing: {proc.communicate()}"
        partial = [p for p in folder.iterdir() if p.name.startswith(".") and p.stat().st_size > 0]
        if partial:
            return partial[0]
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no temporary file in {folder} within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_write_leaves_nothing_behind(signum, tmp_path):
    model = exported("threshold").onnx
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    out.mkdir()
    argv = [sys.executable, "-m", "ltmp_deploy.cli", "predict", str(model), *[str(image)] * IMAGES]
    argv += ["--batch", "1", "--no-progress", "--json", "--log-decisions", str(out / "audit.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        partial = wait_for_partial_file(out, proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == EXIT_CODES[signum], err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("ltmp-deploy predict: ") and "interrupted" in lines[0], lines
    assert not partial.exists() and sorted(os.listdir(out)) == []


def test_main_hands_sigterm_back_when_it_returns(tmp_path, capsys):
    from ltmp_deploy.cli import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["inspect", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
