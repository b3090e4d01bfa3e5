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
