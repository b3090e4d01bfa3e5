"""``ltmp-deploy estimate``: the arithmetic on a real (tiny) bench result, recomputed here from its samples,
and one-line refusals of anything that is not a bench result."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from bench_runs import VARIANTS, tiny_bench, tiny_bench_doc

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.estimate import SCHEMA, estimate, estimate_file

pytestmark = pytest.mark.slow  # the shared bench run
PRICE = 3.6  # per hour: one unit per 1000 seconds


def bench_path() -> Path:
    return tiny_bench() / "out" / "bench.json"


def test_cost_and_saving_follow_from_the_samples():
    doc = tiny_bench_doc()
    rows = estimate_file(bench_path(), PRICE, images_per_day=1e6)
    assert len(rows) == len(doc["records"])
    for row, rec in zip(rows, doc["records"]):
        assert (row.backend, row.batch, row.variant) == (rec["backend"], rec["batch"], rec["variant"])
        median_s = statistics.median(rec["samples_ms"]) / 1000
        assert row.images_per_s == pytest.approx(rec["batch"] / median_s)
        # 3.6 per hour is 0.001 per second: a million images cost 1000 * (seconds per image)
        assert row.cost_per_million == pytest.approx(1000 * median_s / rec["batch"])
        base = next(
            r
            for r in doc["records"]
            if (r["backend"], r["batch"], r["variant"]) == (rec["backend"], rec["batch"], "unpatched")
        )
        ratios = sorted(a / b for a, b in zip(rec["samples_ms"], base["samples_ms"]))
        assert row.saving == pytest.approx(1 - statistics.median(ratios))
        assert 1 - ratios[-1] - 1e-12 <= row.saving_low <= row.saving <= row.saving_high <= 1 - ratios[0] + 1e-12
        assert row.machine_hours_per_day == pytest.approx(1e6 / row.images_per_s / 3600)
        assert row.cost_per_day == pytest.approx(row.machine_hours_per_day * PRICE)
        base_cost_day = 1e6 * statistics.median(base["samples_ms"]) / 1000 / base["batch"] / 3600 * PRICE
        assert row.saving_per_day == pytest.approx(row.saving * base_cost_day)
        if rec["variant"] == "unpatched":
            assert row.saving == 0 and row.saving_per_day == 0


def test_without_images_per_day_there_are_no_daily_numbers():
    rows = estimate(tiny_bench_doc(), 2.0)
    assert all(r.machine_hours_per_day is None and r.cost_per_day is None and r.saving_per_day is None for r in rows)


def test_table_and_json(capsys, tmp_path):
    assert main(["estimate", str(bench_path()), "--price-per-hour", "2.5", "--images-per-day", "1000000"]) == 0
    table = capsys.readouterr().out
    assert "price 2.5 per machine-hour, 1e+06 images a day" in table and "cost/1M img" in table and "saved/day" in table
    assert all(v in table for v in VARIANTS)
    assert main(["estimate", str(bench_path()), "--price-per-hour", "2.5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (
        doc["schema"] == SCHEMA
        and doc["price_per_hour"] == 2.5
        and len(doc["rows"]) == len(tiny_bench_doc()["records"])
    )
    out = tmp_path / "cost.json"
    assert main(["estimate", str(bench_path()), "--price-per-hour", "2.5", "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == doc
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}"  # after the table
    again = tmp_path / "again.json"
    assert main(["estimate", str(bench_path()), "--price-per-hour", "2.5", "--json", "-o", str(again)]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == json.loads(again.read_text()) == doc and printed.err == f"wrote {again}\n"


def refusal(capsys, *argv: str) -> str:
    assert main(["estimate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_refuses_what_is_not_a_measured_bench_result(capsys, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "ltmp-deploy-accuracy/1", "variants": []}))
    assert "not an ltmp-deploy bench result" in refusal(capsys, str(other), "--price-per-hour", "1")
    assert "no such file" in refusal(capsys, str(tmp_path / "none.json"), "--price-per-hour", "1")
    (tmp_path / "text.json").write_text("p50 3 ms")
    assert "not readable JSON" in refusal(capsys, str(tmp_path / "text.json"), "--price-per-hour", "1")
    doc = tiny_bench_doc()
    doc["records"][3]["p50_ms"] *= 0.5  # a number that no longer follows from its samples
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    assert "p50_ms" in refusal(capsys, str(tampered), "--price-per-hour", "1")
    doc = tiny_bench_doc()
    doc["records"][0]["samples_ms"] = []
    tampered.write_text(json.dumps(doc))
    assert "samples_ms" in refusal(capsys, str(tampered), "--price-per-hour", "1")
    assert "--price-per-hour" in refusal(capsys, str(bench_path()), "--price-per-hour", "0")
    assert "--images-per-day" in refusal(capsys, str(bench_path()), "--price-per-hour", "1", "--images-per-day", "-5")
    with pytest.raises(LTMPError, match="not an ltmp-deploy bench result"):
        estimate_file(other, 1.0)


def test_estimate_runs_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['matplotlib'] = None\n"
        "from ltmp_deploy.cli import main\n"
        f"sys.exit(main(['estimate', {str(bench_path())!r}, '--price-per-hour', '1']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "unpatched" in done.stdout
