"""The field install for real: a fresh virtual environment, the package installed from this checkout
as the README says (pip's normal resolver, the package index reachable), no torch in it, and the
runtime there answering exactly as the full install does on a graph the full toolkit exported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest
from runtime_models import exported

REPO = Path(__file__).resolve().parents[1]
# The README's field install, with the checkout in place of the package name.
FIELD_EXTRA = "cpu"
TOOLKIT_PACKAGES = ("torch", "timm", "torchvision", "sklearn", "onnxscript", "onnxslim", "safetensors")

pytestmark = pytest.mark.slow


def _not_sources(folder: str, names: list[str]) -> set[str]:
    return {
        n for n in names if n in (".git", "build", "dist", "__pycache__", ".pytest_cache") or n.endswith(".egg-info")
    }


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def field_env(tmp_path_factory) -> Path:
    """A fresh venv holding only the field install of this checkout."""
    root = tmp_path_factory.mktemp("field-venv")
    # A copy of the sources: building from the checkout itself would leave build/ in it.
    source = shutil.copytree(REPO, tmp_path_factory.mktemp("source") / "ltmp-deploy", ignore=_not_sources)
    venv.create(root, with_pip=True, clear=True)
    python = root / "bin" / "python"
    done = _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{source}[{FIELD_EXTRA}]"])
    if done.returncode != 0 and ("Could not find a version" in done.stderr or "Network is unreachable" in done.stderr):
        pytest.skip(f"the package index is not reachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_field_install_has_no_torch_and_none_of_the_toolkit(field_env):
    python = str(field_env / "bin" / "python")
    probe = (
        "import importlib.util, json, sys; print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
    )
    found = json.loads(_run([python, "-c", probe, *TOOLKIT_PACKAGES]).stdout)
    assert found == [], f"the field install pulled in {found}"
    assert _run([python, "-c", "import torch"]).returncode != 0


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
def test_field_runtime_gives_the_full_installs_logits(field_env, tmp_path, mode):
    from ltmp_deploy.runtime import Session

    graph = exported(mode).onnx
    images = np.random.default_rng(3).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with Session(graph) as session:
        full = session.run(images, k=3)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from ltmp_deploy.runtime import Session
        with Session({str(graph)!r}) as s:
            r = s.run(np.load({str(tmp_path / "images.npy")!r}), k=3)
        np.savez({str(tmp_path / "field.npz")!r}, logits=r.logits, top=r.topk_indices,
                 kept=np.concatenate([d.kept.ravel() for d in r.decisions]))
        assert "torch" not in sys.modules and "timm" not in sys.modules
        """
    )
    done = _run([str(field_env / "bin" / "python"), "-c", script])
    assert done.returncode == 0, done.stderr[-3000:]
    field = np.load(tmp_path / "field.npz")
    assert np.abs(field["logits"] - full.logits).max() <= 1e-5
    np.testing.assert_array_equal(field["top"], full.topk_indices)
    np.testing.assert_array_equal(field["kept"], np.concatenate([d.kept.ravel() for d in full.decisions]))


def test_field_cli_answers_help_and_runs_and_refuses_toolkit_commands_in_one_line(field_env):
    cli = str(field_env / "bin" / "ltmp-deploy")
    graph = str(exported("fixed").onnx)
    for command in ("check", "build", "validate"):
        done = _run([cli, command, "--help"])
        assert done.returncode == 0 and "usage: ltmp-deploy" in done.stdout, done.stderr
    checked = _run([cli, "check", graph, "--trt", "8.5", "--trt", "10.3"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "8.5" in checked.stdout and "10.3" in checked.stdout
    refused = _run([cli, "patch", "deit_tiny_patch16_224", "-o", "never.safetensors"])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert 'pip install "ltmp-deploy[full,cpu]"' in refused.stderr
