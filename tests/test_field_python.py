"""The field side on the Python each JetPack brings (5.1: 3.8, 6.x: 3.10, 7.x: 3.12), checked without
that Python: vermin and an import-time check over every module the field install can import, and
pip's resolver asked what a Jetson would get, without installing anything. tests/test_field_install.py
installs and runs it for real (on Python 3.8 too, where this machine has one)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A module that imports one of these at its top belongs to the full toolkit, not the field side.
TOOLKIT = {"torch", "timm", "torchvision", "safetensors", "sklearn", "onnxscript", "onnxslim", "matplotlib"}
# Where the field side starts: the CLI (its field commands) and every runtime module.
FIELD_ROOTS = ("ltmp_deploy.cli", "ltmp_deploy.cli_field", "ltmp_deploy.cli_deploy", "ltmp_deploy.runtime")
# Generics Python 3.8 cannot subscript at run time (3.9 made them subscriptable).
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    found = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return found if found.exists() else None


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.Module, top_only: bool) -> list[str]:
    """Absolute imports in ``tree`` (``from a import b`` gives both ``a`` and ``a.b``)."""
    names = []
    for node in tree.body if top_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def field_modules() -> list[Path]:
    """Every ltmp_deploy module the field side can import, following imports inside functions too
    and stopping at modules that import the toolkit (torch and friends) at their top."""
    runtime = [_module_name(p) for p in (REPO / "ltmp_deploy" / "runtime").rglob("*.py")]
    todo, seen, files = [*FIELD_ROOTS, *runtime], set(), set()
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        tree = ast.parse(path.read_text(), str(path))
        if any(m.split(".")[0] in TOOLKIT for m in _imported(tree, top_only=True)):
            continue
        files.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        todo += [m for m in _imported(tree, top_only=False) if m.startswith("ltmp_deploy")]
    return sorted(files)


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` (never run)."""
    return {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for n in ast.walk(statement)
    }


def _annotation_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside annotations (never evaluated under ``from __future__ import annotations``)."""
    inside = set()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            every = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x)]
            annotations = [arg.annotation for arg in every] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        inside.update(id(n) for ann in annotations if ann is not None for n in ast.walk(ann))
    return inside


def generics_evaluated_at_run_time(path: Path) -> list[str]:
    """``list[int]``-style subscripts that Python 3.8 evaluates, and so refuses: vermin does not
    look at these (a type alias such as ``X = Union[str, tuple[str, int]]`` passes it)."""
    tree = ast.parse(path.read_text(), str(path))
    lazy = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    abc = {
        a.asname or a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "collections.abc"
        for a in n.names
    }
    skip = _type_checking_nodes(tree) | (_annotation_nodes(tree) if lazy else set())
    where = path.relative_to(REPO) if REPO in path.parents else path
    return [
        f"{where}:{n.lineno}: {ast.unparse(n)}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Subscript)
        and isinstance(n.value, ast.Name)
        and n.value.id in BUILTIN_GENERICS | abc
        and id(n) not in skip
    ]


def test_the_field_side_is_what_the_runtime_and_the_cli_import_without_the_toolkit():
    names = {str(p.relative_to(REPO)) for p in field_modules()}
    for expected in (
        "ltmp_deploy/runtime/session.py",
        "ltmp_deploy/formats.py",
        "ltmp_deploy/runtime/trt/parser_check.py",
    ):
        assert expected in names
    assert "ltmp_deploy/ltmp/checkpoint.py" not in names  # imports torch: the toolkit's


def test_the_field_side_needs_nothing_newer_than_python_3_8():
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin is not installed (pip install vermin, the dev extra)")
    files = [str(p) for p in field_modules()]
    done = subprocess.run(
        [vermin, "-t=3.8-", "--no-tips", "--violations", *files], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'requires-python = ">=3.8"' in (REPO / "pyproject.toml").read_text()


def test_the_whole_package_needs_nothing_newer_than_python_3_10():
    """The toolkit's floor (the full extra's markers): JetPack 6's Python runs all of it."""
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin is not installed (pip install vermin, the dev extra)")
    done = subprocess.run(
        [vermin, "-t=3.10-", "--no-tips", "--violations", "--eval-annotations", str(REPO / "ltmp_deploy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "python_version >= '3.10'" in (REPO / "pyproject.toml").read_text()


def test_no_builtin_generic_is_evaluated_at_import_or_run_time_on_the_field_side():
    found = [hit for path in field_modules() for hit in generics_evaluated_at_run_time(path)]
    assert found == [], "Python 3.8 cannot subscript these outside annotations:\n" + "\n".join(found)


def test_the_import_time_check_finds_what_python_3_8_refuses(tmp_path):
    (tmp_path / "bad.py").write_text(
        "from __future__ import annotations\nfrom collections.abc import Callable\nfrom typing import Union\n"
        "def fine(x: list[int]) -> dict[str, Callable[..., int]]: ...\n"
        "Alias = Union[str, tuple[str, int]]\nHook = Callable[..., None]\n"
        "if TYPE_CHECKING:\n    Typed = Callable[..., dict[str, int]]\n"
    )
    found = generics_evaluated_at_run_time(tmp_path / "bad.py")
    assert sorted(hit.split(": ", 1)[1] for hit in found) == ["Callable[..., None]", "tuple[str, int]"]


# -- what pip gives a Jetson -------------------------------------------------------------------

# JetPack 5.1 is Ubuntu 20.04 (glibc 2.31), 6.x Ubuntu 22.04 (2.35), 7.x Ubuntu 24.04 (2.39).
JETPACKS = {"3.8": 31, "3.10": 35, "3.12": 39}
# What the index gives CPython 3.8 on aarch64: the last releases for 3.8 (checked by resolving).
ON_JETPACK_5 = {"numpy": "1.24.", "onnx": "1.17.", "onnxruntime": "1.19.", "pillow": "10.4."}
OFFLINE = ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution", "ConnectTimeout")


def field_requirements() -> list[str]:
    """The field install's requirements as pyproject.toml states them: the base and the cpu extra."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["cpu"]]


def resolve_for_jetson(python: str, target: Path) -> dict[str, str]:
    """Name -> version pip's resolver picks for CPython ``python`` on aarch64 Linux, wheels only,
    without installing (``--target`` is only there because pip before 24 asks for it)."""
    glibc = JETPACKS[python]
    platforms = [f"--platform=manylinux_2_{minor}_aarch64" for minor in range(glibc, 16, -1)]
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-"),
            *("--disable-pip-version-check", "--ignore-installed", "--target", str(target)),
            *(f"--python-version={python}", "--implementation=cp", f"--abi=cp{python.replace('.', '')}"),
            *platforms,
            "--platform=linux_aarch64",
            "--only-binary=:all:",
            *field_requirements(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 and any(marker in done.stderr for marker in OFFLINE):
        pytest.skip(f"the package index is not reachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not target.exists(), "a dry run installed something"
    report = json.loads(done.stdout)
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}


@pytest.mark.parametrize("python", sorted(JETPACKS))
def test_pip_resolves_the_field_install_for_each_jetpacks_python_on_aarch64(python, tmp_path):
    versions = resolve_for_jetson(python, tmp_path / "never")
    assert {"numpy", "onnx", "onnxruntime", "pillow", "polygraphy", "tqdm"} <= set(versions), versions
    assert not set(versions) & TOOLKIT, versions
    if python == "3.8":
        got = {name: versions[name] for name in ON_JETPACK_5}
        assert all(got[name].startswith(prefix) for name, prefix in ON_JETPACK_5.items()), got
