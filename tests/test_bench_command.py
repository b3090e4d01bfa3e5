"""``ltmp-deploy bench`` on a tiny ViT: the files it writes, whole and consistent, and that every
number in them follows from a timed call or from the model (timings themselves are never asserted)."""

from __future__ import annotations

import csv
import json
import re
import statistics

import numpy as np
import pytest
import torch
from bench_runs import BATCHES, NOTE, ROUNDS, VARIANTS, tiny_bench, tiny_bench_doc, tiny_checkpoint
from PIL import Image

from ltmp_deploy.cli import main
from ltmp_deploy.runtime.bench_results import RECORD_FIELDS, SCHEMA

pytestmark = pytest.mark.slow
MEASURED = ("torch-cpu", "onnxruntime-cpu")


def test_files_are_whole_and_hold_every_measurement():
    folder = tiny_bench() / "out"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["bench.json", "bench.csv", "bench_samples.csv", "bench.md", "latency_vs_flops.png", "throughput_vs_batch.png"]
    )
    doc = tiny_bench_doc()
    assert doc["schema"] == SCHEMA and doc["note"] == NOTE and doc["command"].startswith("ltmp-deploy bench ")
    assert set(doc["variants"]) == VARIANTS
    assert {(r["backend"], r["batch"], r["variant"]) for r in doc["records"]} == {
        (b, n, v) for b in MEASURED for n in BATCHES for v in VARIANTS
    }
    assert len(doc["records"]) == len(MEASURED) * len(BATCHES) * len(VARIANTS)
    assert doc["skipped"] == [{"backend": "torch-cuda", "reason": doc["skipped"][0]["reason"]}]
    assert "CUDA" in doc["skipped"][0]["reason"]
    machine = doc["machine"]
    assert machine["threads"] == 1 and machine["cpu"] and machine["logical_cores"] >= 1
    assert {"python", "torch", "timm", "numpy", "onnxruntime"} <= set(machine["versions"])
    assert all(machine["versions"][k] for k in ("python", "torch", "timm", "numpy", "onnxruntime"))

    with (folder / "bench.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == RECORD_FIELDS and len(rows) == len(doc["records"])
    for row, rec in zip(rows, doc["records"]):
        assert float(row["p50_ms"]) == rec["p50_ms"] and row["variant"] == rec["variant"]
    with (folder / "bench_samples.csv").open() as f:
        samples = list(csv.DictReader(f))
    assert len(samples) == len(doc["records"]) * ROUNDS
    assert [float(s["latency_ms"]) for s in samples[:ROUNDS]] == doc["records"][0]["samples_ms"]

    for png in folder.glob("*.png"):
        with Image.open(png) as im:
            im.load()
            assert im.width > 100 and im.height > 100
    assert not list(folder.glob(".*"))  # atomic writes leave no temporaries


def test_markdown_pages_say_where_and_link_their_files():
    root = tiny_bench()
    page = (root / "pages" / "RESULTS.md").read_text()
    assert page.startswith("# LTMP benchmark: vit_tiny_patch16_224") and f"**Note:** {NOTE}" in page.splitlines()[2]
    assert "Not measured: torch-cuda" in page and "do not edit by hand" in page
    for backend in MEASURED:
        for batch in BATCHES:
            assert f"## {backend}, batch {batch}" in page
    links = re.findall(r"\]\(([^)]+)\)", page)
    assert len(links) == 5
    for link in links:
        assert (root / "pages" / link).resolve().is_file(), link
    own = (root / "out" / "bench.md").read_text()
    assert "](bench.json)" in own and "](latency_vs_flops.png)" in own
    doc = tiny_bench_doc()
    rec = doc["records"][0]
    assert f"| {rec['variant']} | {rec['flops_ratio']:.3f} | {rec['p50_ms']:.3f} |" in page


def test_every_statistic_follows_from_the_timed_calls():
    doc = tiny_bench_doc()
    by_key = {(r["backend"], r["batch"], r["variant"]): r for r in doc["records"]}
    for r in doc["records"]:
        s = r["samples_ms"]
        ordered = sorted(s)
        assert len(s) == r["runs"] == ROUNDS and all(x > 0 for x in s)
        assert r["p50_ms"] == statistics.median(s)
        assert r["p90_ms"] == ordered[min(len(s) - 1, int(0.9 * len(s)))] and r["p99_ms"] == ordered[-1]
        assert (
            r["min_ms"] == ordered[0] and r["max_ms"] == ordered[-1] and r["mean_ms"] == pytest.approx(sum(s) / len(s))
        )
        assert r["throughput_img_s"] == pytest.approx(r["batch"] * 1000 / r["p50_ms"])
        for ref, key in (("unpatched", "vs_unpatched"), (r["oracle"], "vs_oracle")):
            if ref is None:
                assert r[key] is None
                continue
            other = by_key[r["backend"], r["batch"], ref]["samples_ms"]
            ratios = sorted(a / b for a, b in zip(s, other))
            assert r[key] == pytest.approx(statistics.median(ratios))
            assert ratios[0] - 1e-12 <= r[f"{key}_q1"] <= r[key] <= r[f"{key}_q3"] <= ratios[-1] + 1e-12
    assert all(r["vs_unpatched"] == 1.0 for r in doc["records"] if r["variant"] == "unpatched")


def test_flops_follow_from_the_model_and_the_images_timed():
    from ltmp_deploy.calibration.calibrate import tome_schedule
    from ltmp_deploy.export.reference import sample_images
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint
    from ltmp_deploy.ltmp.checkpoint import metadata as model_metadata
    from ltmp_deploy.ltmp.flops import image_flops, padded_flops_ratio, schedule_flops
    from ltmp_deploy.ltmp.schedule import Schedule

    doc = tiny_bench_doc()
    model = load_checkpoint(tiny_bench() / "tiny5.safetensors")
    variants = doc["variants"]
    for v in variants.values():
        if v["mode"] in ("fixed", "oracle"):
            schedule = Schedule.from_pairs(v["schedule"])
            assert v["flops_ratio"] == schedule_flops(model, schedule, reduce=v["mode"] == "fixed").ratio
    for label in ("0.75", "0.5"):
        fixed, oracle, tome = (variants[f"{k}@{label}"] for k in ("ltmp-fixed", "oracle", "tome"))
        assert fixed["schedule"] == oracle["schedule"] and fixed["oracle"] == tome["oracle"] == f"oracle@{label}"
        assert tome["schedule"] == tome_schedule(model, fixed["flops_ratio"]).pairs()
        assert abs(fixed["flops_ratio"] - float(label)) < 0.1
    threshold = variants["ltmp-threshold@0.5"]
    assert threshold["oracle"] == "oracle@threshold"  # at the counts reached, not at the target 0.5
    assert doc["images"] == "seeded random images"
    model.ltmp_set_thresholds(threshold["thresholds"]["merge"], threshold["thresholds"]["prune"])
    model.ltmp_set_mode("threshold")
    images = torch.from_numpy(sample_images(model_metadata(model), max(BATCHES))[0])
    with torch.no_grad():
        timed = model.forward_ltmp(images).decisions
    assert threshold["flops_ratio"] == pytest.approx(np.mean([r.ratio for r in image_flops(model, timed)]))
    reached = [k for _, k in variants["oracle@threshold"]["schedule"]]
    assert all(abs(k - float(d.n_out.mean())) <= 1 for k, d in zip(reached, timed))
    for rec in doc["records"]:
        if rec["kind"] != "ltmp-threshold":
            assert rec["flops_ratio"] == rec["flops_ratio_padded"] == variants[rec["variant"]]["flops_ratio"]
            continue
        with torch.no_grad():
            decisions = model.forward_ltmp(images[: rec["batch"]]).decisions
        assert rec["flops_ratio"] == pytest.approx(np.mean([r.ratio for r in image_flops(model, decisions)]))
        assert rec["flops_ratio_padded"] == pytest.approx(padded_flops_ratio(model, decisions))
        assert rec["flops_ratio_padded"] >= rec["flops_ratio"] - 1e-12


def run_cli(*argv: str) -> int:
    return main(list(argv))


def test_refusals_are_one_line_before_any_work(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path)
    cases = [
        (["--backends", "opencl"], "--backends opencl: choose from"),
        (["--backends", "torch-cuda"], "no backend can run here: torch-cuda"),
        (["--targets", "1.5"], "--targets 1.5"),
        (["--batch", "0"], "--batch 0: must be at least 1"),  # refused when parsed, before any work
        (["--results-md", str(tmp_path / "missing" / "R.md")], "folder"),
    ]
    for extra, message in cases:
        rc = run_cli("bench", str(checkpoint), "--rounds", "1", "-o", str(tmp_path / "out"), *extra)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and len(err.splitlines()) == 1, (extra, err)
    assert not (tmp_path / "out" / "bench.json").exists()


def test_from_checkpoint_times_its_schedule_and_thresholds(tmp_path):
    from ltmp_deploy.bench.run import BenchConfig, run_bench
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint, save_checkpoint
    from ltmp_deploy.ltmp.flops import schedule_for_flops

    model = load_checkpoint(tiny_checkpoint(tmp_path))
    n = model.ltmp_num_tokens
    model.ltmp_set_thresholds([0.6, 0.5, 0.4], [0.6 / n, 0.8 / n, 1.0 / n])
    model.ltmp_set_mode("fixed", schedule_for_flops(model, 0.6))
    path = save_checkpoint(model, tmp_path / "calibrated.safetensors")
    doc = run_bench(
        BenchConfig(
            checkpoint=str(path),
            targets=(),
            threshold_target=None,
            from_checkpoint=True,
            batches=(1,),
            backends=("torch-cpu",),
            rounds=1,
            warmup=0,
            threads=1,
            progress=False,
        )
    )
    assert set(doc["variants"]) == {
        "unpatched",
        "oracle@calibrated",
        "ltmp-fixed@calibrated",
        "tome@calibrated",
        "oracle@threshold",
        "ltmp-threshold@learned",
    }
    assert doc["variants"]["ltmp-fixed@calibrated"]["schedule"] == model.ltmp.schedule.pairs()
    assert doc["variants"]["ltmp-threshold@learned"]["thresholds"]["merge"] == pytest.approx([0.6, 0.5, 0.4])
    assert doc["variants"]["ltmp-threshold@learned"]["oracle"] == "oracle@threshold"
    assert json.loads(json.dumps(doc)) == doc  # plain JSON all through


def test_threshold_mode_meets_an_oracle_at_the_counts_of_each_batch(tmp_path):
    """A batch of b times the first b images: where their counts differ from all the timed images',
    the batch gets its own oracle, so "vs oracle" is always at the FLOPs threshold mode reached there."""
    import torch as _torch

    from ltmp_deploy.bench.variants import build_variants
    from ltmp_deploy.calibration.calibrate import schedule_from_counts
    from ltmp_deploy.calibration.evaluate import per_image_counts
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_checkpoint(tmp_path))
    _torch.manual_seed(0)
    images = _torch.rand(8, 3, 32, 32)
    images[1:, :, :16] = 0.5  # the first image alone merges least: batch 1 reaches other counts
    variants = {v.name: v for v in build_variants(model, images, targets=(), threshold_target=0.5, batches=(1, 8))}
    threshold = variants["ltmp-threshold@0.5"]
    assert set(threshold.oracles) == {1, 8} and "oracle@threshold" not in variants
    model.ltmp_set_mode("threshold")
    for b in (1, 8):
        oracle = variants[threshold.oracle_at(b)]
        assert oracle.timed_at(b) and not oracle.timed_at(9 - b) and oracle.batch == b
        with _torch.no_grad():
            merges, keeps = per_image_counts([model.forward_ltmp(images[:b]).decisions])
        assert oracle.schedule == schedule_from_counts(model, merges, keeps, "mean")
    assert variants[threshold.oracle_at(1)].schedule != variants[threshold.oracle_at(8)].schedule
