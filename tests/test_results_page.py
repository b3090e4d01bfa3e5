"""benchmarks/RESULTS.md is what ``ltmp-deploy bench --results-md`` writes from the bench.json it links to:
a page edited by hand, or one left behind by a change to the page's layout, fails here. (To refresh the page
from the same measurements: ``write_bench(read_bench(JSON), its folder, "benchmarks/RESULTS.md")``.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ltmp_deploy.bench.write import FILES, page
from ltmp_deploy.runtime.bench_results import read_bench

# Exports, engine plans or whole runs: seconds each on 2 cores; `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_results_page_is_the_bench_output():
    text = (BENCHMARKS / "RESULTS.md").read_text()
    link = re.search(r"\[bench\.json\]\(([^)]+)\)", text)
    assert link, "RESULTS.md links no bench.json"
    source = BENCHMARKS / link.group(1)
    doc = read_bench(source)
    assert text == page(doc, {kind: source.parent / name for kind, name in FILES.items()}, BENCHMARKS)
    for kind, name in FILES.items():
        assert (source.parent / name).is_file(), f"{kind}: {name} is not kept beside bench.json"


def _readme_results() -> list[str]:
    text = (BENCHMARKS.parent / "README.md").read_text()
    section = text[text.index("## Results\n") : text.index("\n## ", text.index("## Results\n") + 1)]
    return [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]


def test_readme_results_are_copied_from_the_measurements():
    import json

    bench_rows = set((BENCHMARKS / "RESULTS.md").read_text().splitlines())
    doc = json.loads((BENCHMARKS / "results" / "cpu-digits-accuracy.json").read_text())
    accuracy = {v["name"]: v for v in doc["variants"]}
    rows = _readme_results()
    assert len(rows) > 10
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if row in bench_rows:
            continue
        if cells[0] == "block FLOPs target":  # the accuracy table's header
            continue
        expected = [
            f"{100 * accuracy[f'{kind}@{cells[0]}']['accuracy']:.2f} +- "
            f"{100 * accuracy[f'{kind}@{cells[0]}']['accuracy_std']:.2f}"
            for kind in ("ltmp-threshold", "ltmp-fixed", "tome")
        ]
        assert cells[1:] == expected, f"README row not in benchmarks/RESULTS.md nor the accuracy result: {row}"
