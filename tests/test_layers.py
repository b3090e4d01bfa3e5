"""The package's one direction of flow, read from the source: every import, at module level or inside a
function, goes to the module's own layer or a lower one, and the field runtime never reaches torch.

The layers, lowest first (the README's layout section draws the same):

    base         errors, files, formats, extras, images, the standard library, numpy, Pillow
                 options, schemas                        and jsonschema
    runtime/     Session, predict, parity, TensorRT,     numpy, Pillow, onnx, ONNX Runtime,
                 INT8, Triton, inspect, estimate         Polygraphy, TensorRT only: the field install
    ltmp/        the model: merge/prune, patching         torch, timm
    data/        datasets for the model                   + scikit-learn
    calibration/ learning thresholds, fixed schedules, the ToMe baseline
    export/      PyTorch -> ONNX and the PyTorch reference and parity
    top          cli, cli_*, pictures, demo, embedded, bench, report, the front door

The field install is base and runtime/: the boundary is the package boundary.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ltmp_deploy"
LAYERS = ["base", "runtime", "ltmp", "data", "calibration", "export", "top"]
BASE = {"errors", "files", "formats", "extras", "images", "options", "schemas"}
# Installed on a Jetson without the toolkit: these and whatever they import must stay torch-free.
FIELD_LAYERS = ("base", "runtime")
TOOLKIT_ONLY = {"torch", "timm", "torchvision", "sklearn", "onnxscript", "onnxslim", "safetensors", "matplotlib"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"  # ltmp_deploy/__init__.py, the front door
    if parts[1] in LAYERS and len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "base" if parts[1] in BASE else "top"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, wherever it stands."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "ltmp_deploy":  # from ltmp_deploy import errors
                found += [(node.lineno, f"ltmp_deploy.{alias.name}") for alias in node.names]
    return found


def resolve(module: str) -> str | None:
    """The ltmp_deploy module file an import names, as a module name (packages resolve to __init__)."""
    parts = module.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts = parts[:-1]
    return None


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_goes_to_the_same_layer_or_below():
    wrong = []
    for name, path in SOURCES.items():
        own = LAYERS.index(layer_of(name))
        for line, target in imports(path):
            if not target.startswith("ltmp_deploy"):
                continue
            resolved = resolve(target) or target
            if resolved == "ltmp_deploy":
                continue  # __version__
            if LAYERS.index(layer_of(resolved)) > own:
                wrong.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} ({layer_of(name)}) imports {target} "
                    f"({layer_of(resolved)})"
                )
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def field_modules() -> list[str]:
    return sorted(n for n in SOURCES if layer_of(n) in FIELD_LAYERS)


def field_edges(start: str) -> list[str]:
    """Imports that leave the field runtime, on any path of imports from ``start`` through field modules."""
    field = set(field_modules())
    seen, todo, bad = {start: start}, [start], []
    while todo:
        current = todo.pop()
        for line, target in imports(SOURCES[current]):
            if target.split(".")[0] in TOOLKIT_ONLY:
                bad.append(f"{seen[current]}: line {line} imports {target}")
            resolved = resolve(target) if target.startswith("ltmp_deploy.") else None
            if resolved is None or resolved == "ltmp_deploy" or resolved in seen:
                continue
            if resolved not in field:
                bad.append(f"{seen[current]}: line {line} imports the toolkit module {resolved}")
                continue
            seen[resolved] = f"{seen[current]} -> {resolved}"
            todo.append(resolved)
    return bad


@pytest.mark.parametrize("module", field_modules())
def test_the_field_runtime_never_reaches_the_toolkit(module):
    bad = field_edges(module)
    assert not bad, "\n".join(bad)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at module level or inside functions); imports of a
    package's own ``__init__`` from inside the package are re-exports, not a second job."""
    graph: dict[str, set[str]] = {name: set() for name in SOURCES}
    for name, path in SOURCES.items():
        for _, target in imports(path):
            resolved = resolve(target) if target.startswith("ltmp_deploy") else None
            if resolved is None or resolved == name or name.startswith(resolved + "."):
                continue
            graph[name].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []
