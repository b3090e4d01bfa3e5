"""The field install for real: a fresh virtual environment, the package installed from this checkout
as the README says (pip's normal resolver, the package index reachable), no torch in it, and the
runtime there answering exactly as the full install does on a graph the full toolkit exported.

Three installs: the newest releases on this machine's Python; the oldest the requirements allow (each
lower bound in pyproject.toml pinned, as an "oldest dependencies" CI job would); and Python 3.8 and
3.12, the Pythons of JetPack 5.1 and 7, where this machine has them (pyenv's builds): 3.8 gets the
last releases for 3.8 (numpy 1.24, onnx 1.17, onnxruntime 1.19, Pillow 10.4)."""

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
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image
from runtime_models import exported
from test_field_python import field_requirements

REPO = Path(__file__).resolve().parents[1]
# The README's field install, with the checkout in place of the package name.
FIELD_EXTRA = "cpu"
TOOLKIT_PACKAGES = ("torch", "timm", "torchvision", "sklearn", "onnxscript", "onnxslim", "safetensors")
# JetPack 5.1 brings Python 3.8 and JetPack 7 Python 3.12 (JetPack 6's 3.10 lies between 3.8 and this 3.11).
INSTALLS = ("newest", "oldest", "python3.8", "python3.12")

pytestmark = pytest.mark.slow


def _not_sources(folder: str, names: list[str]) -> set[str]:
    return {
        n for n in names if n in (".git", "build", "dist", "__pycache__", ".pytest_cache") or n.endswith(".egg-info")
    }


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def find_python(version: str) -> str | None:
    """A CPython ``version`` interpreter on this machine (one pyenv built, or on PATH), or None."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    builds = sorted(versions.glob(f"{version}.*/bin/python{version}"))  # any patch release will do
    on_path = shutil.which(f"python{version}")  # may be a pyenv shim that refuses to run
    wanted = tuple(int(x) for x in version.split("."))
    probe = f"import sys, venv; assert sys.version_info[:2] == {wanted}"
    for candidate in [*map(str, reversed(builds)), *([on_path] if on_path else [])]:
        if _run([candidate, "-c", probe]).returncode == 0:
            return candidate
    return None


def lowest_pins() -> dict[str, str]:
    """Each field requirement pinned to its lower bound (what pip's resolver would never pick itself)."""
    pins = {}
    for text in field_requirements():
        requirement = Requirement(text)
        floors = [s.version for s in requirement.specifier if s.operator == ">="]
        assert len(floors) == 1, f"{text}: the field install's requirements each need one lower bound"
        pins[requirement.name.lower()] = floors[0]
    return pins


def installed_versions(python: Path, names) -> dict[str, str]:
    probe = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    return {k.lower(): v for k, v in json.loads(_run([str(python), "-c", probe, *names]).stdout).items()}


@pytest.fixture(scope="module", params=INSTALLS)
def field_env(request, tmp_path_factory) -> Path:
    """A fresh venv holding only the field install of this checkout: the newest releases, the oldest
    the lower bounds allow, or on another Python (JetPack 5.1's 3.8, JetPack 7's 3.12)."""
    root = tmp_path_factory.mktemp(f"field-venv-{request.param}")
    # A copy of the sources: building from the checkout itself would leave build/ in it.
    source = shutil.copytree(REPO, tmp_path_factory.mktemp("source") / "ltmp-deploy", ignore=_not_sources)
    options = []
    if request.param.startswith("python"):
        version = request.param[len("python") :]
        interpreter = find_python(version)
        if interpreter is None:
            pytest.skip(f"no Python {version} here: test_field_python.py checks the field side for it without one")
        assert _run([interpreter, "-m", "venv", str(root)]).returncode == 0
    else:
        venv.create(root, with_pip=True, clear=True)
    if request.param == "oldest":
        pins = lowest_pins()
        constraints = root / "lowest.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
        # Wheels only: an old release without a wheel for this Python is not one it can install.
        options = ["-c", str(constraints), f"--only-binary={','.join(pins)}"]
    python = root / "bin" / "python"
    done = _run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *options, f"{source}[{FIELD_EXTRA}]"]
    )
    if done.returncode != 0 and ("Could not find a version" in done.stderr or "Network is unreachable" in done.stderr):
        pytest.skip(f"the package index is not reachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    if request.param == "oldest":
        installed = {name: Version(v) for name, v in installed_versions(python, pins).items()}
        assert installed == {name: Version(v) for name, v in pins.items()}  # the lower bounds ran the tests below
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
    version = _run([str(field_env / "bin" / "python"), "-c", "import sys; print(*sys.version_info[:2])"])
    old_python = version.stdout.split() == ["3", "8"]
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
    assert ("the toolkit needs Python 3.10 or newer and this is 3.8" in refused.stderr) == old_python


def test_field_commands_run_in_the_field_install(field_env, tmp_path):
    """predict with an audit log, show from the log and from a --decisions graph, inspect, validate
    against the ONNX file, estimate: each one, in the field install, on the full toolkit's export."""
    cli = str(field_env / "bin" / "ltmp-deploy")
    fixed, threshold = str(exported("fixed").onnx), str(exported("threshold").onnx)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i}.png")
    log, bench = tmp_path / "audit.jsonl", REPO / "benchmarks" / "results" / "bench-digits-cpu1" / "bench.json"
    commands = [
        ["predict", fixed, str(photos), "--log-decisions", str(log), "--no-progress"],
        ["show", str(log), "--image", "0", "-o", str(tmp_path / "from_log.png")],
        ["show", threshold, str(photos / "1.png"), "-o", str(tmp_path / "from_graph.png")],
        ["inspect", threshold],
        ["validate", threshold, "--against", threshold],
        ["estimate", str(bench), "--price-per-hour", "1.5"],
        ["check", fixed, "--preset", "xavier-nx"],
        ["build", fixed, "--preset", "xavier-nx", "--dla-core", "0", "--print-trtexec", "-o", "fixed.engine"],
    ]
    for command in commands:
        done = _run([cli, *command], cwd=tmp_path)
        assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    assert len(log.read_text().splitlines()) == 3
    assert "--useDLACore=0" in done.stdout and "--allowGPUFallback" in done.stdout  # the build's trtexec line
    assert (tmp_path / "from_log.png").stat().st_size > 0 and (tmp_path / "from_graph.png").stat().st_size > 0
