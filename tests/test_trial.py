"""A trial on your own model and folder, and ``evaluate``'s accuracy with sampling errors.

Models are tiny description JSONs (32x32, patch 8, 3 blocks, 3 classes) with random weights; the
folder is made here with Pillow. Only what each step writes is checked, never how accurate it is.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import one_torch_thread
from PIL import Image

from ltmp_deploy.cli import main
from ltmp_deploy.ltmp.checkpoint import load_checkpoint
from ltmp_deploy.report.accuracy import read_accuracy, sampling_error
from ltmp_deploy.runtime.cost_model import read_cost_model

TINY3 = {
    "timm_class": "timm.models.vision_transformer.VisionTransformer",
    "config": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 3, "num_classes": 3},
}
CLASSES = ("circle", "square", "stripes")
NAMES = {"unpatched", "ltmp-threshold@learned", "ltmp-fixed@calibrated", "tome@calibrated"}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_torch_thread():
        yield


def _picture(kind: str, rng: np.random.Generator) -> Image.Image:
    pixels = (rng.random((32, 32, 3)) * 60).astype(np.uint8)
    y, x = np.mgrid[:32, :32]
    cx, cy = rng.integers(10, 22, 2)
    if kind == "circle":
        pixels[(x - cx) ** 2 + (y - cy) ** 2 < 36] = (220, 60, 60)
    elif kind == "square":
        pixels[(abs(x - cx) < 6) & (abs(y - cy) < 6)] = (60, 220, 60)
    else:
        pixels[(y // 4) % 2 == 0] = (60, 60, 220)
    return Image.fromarray(pixels)


def tiny_folder(root, per_class: dict[str, int], classes=CLASSES, seed: int = 0):
    """``root/<split>/<class>/NN.png`` (a split "" puts the classes at the top), ``per_class`` images each."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for kind in classes:
            folder = root / split / kind if split else root / kind
            folder.mkdir(parents=True)
            for i in range(count):
                _picture(kind, rng).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture
def model_json(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY3))
    return path


@pytest.fixture
def folder(tmp_path):
    return tiny_folder(tmp_path / "site", {"train": 6, "val": 4, "test": 5})


def test_sampling_error_is_the_binomial_standard_error():
    assert sampling_error(0.9, 100) == pytest.approx(0.03)
    assert sampling_error(1.0, 7) == 0.0
    assert sampling_error(0.5, 400) == pytest.approx(0.025)


def test_evaluate_writes_an_accuracy_file_with_sampling_errors_that_report_reads(tmp_path, model_json, folder, capsys):
    out = tmp_path / "accuracy.json"
    assert main(["evaluate", str(model_json), "--data", str(folder), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    acc = read_accuracy(out)
    n = 5 * len(CLASSES)  # test/ is held out; val/ calibrates the schedule the description lacks
    assert acc["dataset"] == {"name": str(folder), "split": "test", "images": n}
    assert {v["name"] for v in acc["variants"]} == NAMES and acc["headline"] == "ltmp-fixed@calibrated"
    for v in acc["variants"]:
        assert v["images"] == n
        assert v["accuracy_stderr"] == pytest.approx(math.sqrt(v["accuracy"] * (1 - v["accuracy"]) / n))
        assert f"+-{100 * v['accuracy_stderr']:.2f} pts (n={n})" in printed
    assert acc["tokens_per_block"]["ltmp-threshold@learned"]["images"] == n

    assert main(["report", "--accuracy", str(out), "-o", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| sampling error |" in md
    fixed = next(v for v in acc["variants"] if v["name"] == "ltmp-fixed@calibrated")
    assert f"| +-{100 * fixed['accuracy_stderr']:.2f} pts (n={n}) |" in md


def test_evaluate_with_a_target_labels_the_fixed_variant_by_it(tmp_path, model_json, folder):
    out = tmp_path / "accuracy.json"
    assert main(["evaluate", str(model_json), "--data", str(folder), "--target", "0.6", "-o", str(out)]) == 0
    acc = read_accuracy(out)
    assert {v["name"] for v in acc["variants"]} == {"unpatched", "ltmp-threshold@learned", "ltmp-fixed@0.6", "tome@0.6"}
    fixed = next(v for v in acc["variants"] if v["method"] == "ltmp-fixed")
    assert fixed["flops_ratio"] == pytest.approx(0.6, abs=0.08)


def test_evaluate_variants_leaves_the_model_as_it_was(folder):
    from ltmp_deploy.data.datasets import calibration_split
    from ltmp_deploy.report.held_out import evaluate_variants

    model = _three_class_model("fixed")
    schedule = model.ltmp.schedule
    held_out = calibration_split(str(folder), model, "evaluation")
    doc = evaluate_variants(model, held_out, dataset=str(folder), progress=False)
    assert model.ltmp.mode == "fixed" and model.ltmp.schedule is schedule
    fixed = next(v for v in doc["variants"] if v["name"] == "ltmp-fixed@calibrated")
    assert doc["tokens_per_block"]["ltmp-fixed@calibrated"]["mean"] == list(map(float, schedule.keeps))
    assert fixed["runs"][0]["accuracy"] == fixed["accuracy"]


def _three_class_model(mode: str):
    from conftest import tiny_vit

    from ltmp_deploy.ltmp.flops import schedule_for_flops
    from ltmp_deploy.ltmp.patch import apply_patch

    model = apply_patch(tiny_vit(num_classes=3))
    if mode == "fixed":
        model.ltmp_set_mode("fixed", schedule_for_flops(model, 0.5))
    return model


def _one_line_error(capsys, args, *fragments):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("command", ["evaluate", "trial"])
def test_user_mistakes_are_one_line_naming_the_file(tmp_path, model_json, folder, capsys, command):
    out = ["-o", str(tmp_path / "out.json")] if command == "evaluate" else ["-o", str(tmp_path / "trial")]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (32, 32)).save(flat / "a.png")
    _one_line_error(capsys, [command, str(model_json), "--data", str(flat), *out], str(flat), "no class subfolders")
    two = tiny_folder(tmp_path / "two", {"": 3}, classes=CLASSES[:2])
    _one_line_error(capsys, [command, str(model_json), "--data", str(two), *out], str(two), "2 class folder(s)")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    where = ["-o", str(blocked / "x.json")] if command == "evaluate" else ["-o", str(blocked / "trial")]
    _one_line_error(capsys, [command, str(model_json), "--data", str(folder), *where], str(blocked))
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "trial").exists()


def test_help_shows_an_example(capsys):
    for command in ("trial", "evaluate"):
        assert main([command, "--help"]) == 0
        assert f"example:\n  ltmp-deploy {command} " in capsys.readouterr().out


def test_a_single_tree_learns_and_calibrates_apart_from_the_held_out_images(tmp_path, model_json):
    from ltmp_deploy.trial import folder_inputs

    tree = tiny_folder(tmp_path / "tree", {"": 10})
    inputs = folder_inputs(str(model_json), str(tree))
    assert inputs.train is inputs.calibration and "seeded part" in inputs.note
    assert not set(inputs.calibration.indices) & set(inputs.held_out.indices)
    assert len(inputs.calibration) + len(inputs.held_out) == 30
    assert inputs.held_out_name == "held-out part of tree"


def test_grid_images_spread_over_the_held_out_classes():
    from ltmp_deploy.report.trial_report import grid_indices

    assert grid_indices(15, 3) == [0, 7, 14]
    assert grid_indices(2, 3) == [0, 1]
    assert grid_indices(0, 3) == []


@pytest.mark.slow
def test_a_trial_on_a_tiny_model_and_folder_runs_end_to_end(tmp_path, model_json, folder, capsys):
    workdir = tmp_path / "trial"
    args = ["trial", str(model_json), "--data", str(folder), "--target", "0.6", "-o", str(workdir)]
    assert main([*args, "--epochs", "1", "--rounds", "1", "--batch-size", "8"]) == 0

    out = capsys.readouterr().out
    report = json.loads((workdir / "report.json").read_text())
    assert any(line.startswith("FLOPs saved: ") for line in report["headline"])
    assert set(report["rows"]) == {"unpatched", "ltmp-threshold", "ltmp-fixed", "tome-fixed-r"}
    assert all(r["images"] == 15 and r["accuracy_stderr"] >= 0 for r in report["rows"].values())
    assert report["validation"]["fixed"]["ok"] and report["validation"]["threshold"]["ok"]
    assert set(report["latency_ms"]) == {"batch1", "batch8"}
    html = workdir / "report" / "report.html"
    assert html.is_file() and report["files"]["report"] == str(html) and f"report: {html}" in out
    acc = read_accuracy(workdir / "accuracy.json")
    assert {v["name"] for v in acc["variants"]} == NAMES and acc["dataset"]["split"] == "test"
    assert len(list(workdir.glob("tokens_*.png"))) == 3
    bench = json.loads((workdir / "bench" / "bench.json").read_text())
    assert bench["config"]["data"] == str(folder)  # timed on the folder's images, not random ones
    for name in ("patched", "learned", "fixed"):
        assert (workdir / f"{name}.safetensors").is_file()
    # calibrated with this CPU's cost model: the file, and the schedule beside the one counted for FLOPs
    assert read_cost_model(workdir / "cost.json").batches == [1]
    assert report["files"]["cost"] == str(workdir / "cost.json")
    cal = report["calibration"]
    assert cal["chosen_for"] in ("latency", "flops") and len(cal["flops_schedule"]) == 3
    assert cal["schedule"] == load_checkpoint(workdir / "fixed.safetensors").ltmp.schedule.pairs()
    assert cal["predicted_ms"]["schedule"] <= cal["predicted_ms"]["flops_schedule"] + 1e-9
