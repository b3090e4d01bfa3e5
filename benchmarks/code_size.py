"""Code size of the repository: lines per package and the longest functions.

Counts every ``.py`` file under ``ltmp_deploy/``, ``benchmarks/`` and ``tests/``. A function's length is
``end_lineno - lineno + 1`` of its ``def`` (decorators excluded, nested functions counted inside their parent
and listed on their own too). Code lines are lines that are neither blank nor comment-only.

    python benchmarks/code_size.py [--limit 60] [--top 10]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_of(path: Path) -> str:
    """The row a file counts under: ``ltmp_deploy/<pkg>``, the top-level modules, ``benchmarks`` or ``tests``."""
    parts = path.relative_to(ROOT).parts
    if parts[0] != "ltmp_deploy":
        return parts[0]
    return f"ltmp_deploy/{parts[1]}" if len(parts) > 2 else "ltmp_deploy (top-level modules)"


def source_files() -> list[Path]:
    return sorted(p for top in ("ltmp_deploy", "benchmarks", "tests") for p in (ROOT / top).rglob("*.py"))


def count_lines(text: str) -> tuple[int, int]:
    """(all lines, code lines) of one file."""
    lines = text.splitlines()
    code = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    return len(lines), len(code)


def functions(path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """(length, ``file:line name``) for every function and method in a file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            found.append((length, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60, help="list functions longer than this")
    parser.add_argument("--top", type=int, default=10, help="how many of the largest functions to list")
    args = parser.parse_args()

    rows: dict[str, list[int]] = {}
    funcs: list[tuple[int, str]] = []
    for path in source_files():
        text = path.read_text()
        total, code = count_lines(text)
        row = rows.setdefault(package_of(path), [0, 0, 0])
        row[0] += 1
        row[1] += total
        row[2] += code
        if path.is_relative_to(ROOT / "ltmp_deploy") or path.is_relative_to(ROOT / "benchmarks"):
            funcs.extend(functions(path, ast.parse(text)))
        else:
            funcs.extend((n, f"{name} (tests)") for n, name in functions(path, ast.parse(text)))
    funcs.sort(key=lambda f: (-f[0], f[1]))

    print("| package | files | lines | code lines |\n|---|---:|---:|---:|")
    for name in sorted(rows):
        files, total, code = rows[name]
        print(f"| {name} | {files} | {total} | {code} |")
    files, total, code = (sum(r[i] for r in rows.values()) for i in range(3))
    print(f"| total | {files} | {total} | {code} |")

    library = [f for f in funcs if not f[1].endswith("(tests)")]
    print(f"\nLargest {args.top} functions in ltmp_deploy/ and benchmarks/ (lines):\n")
    for length, name in library[: args.top]:
        print(f"- {length:4d}  {name}")
    over = [f for f in library if f[0] > args.limit]
    print(f"\nFunctions over {args.limit} lines in ltmp_deploy/ and benchmarks/: {len(over)}")
    for length, name in over:
        print(f"- {length:4d}  {name}")


if __name__ == "__main__":
    main()
