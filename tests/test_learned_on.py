"""Checkpoints record the image folder they learned on, and export, validate and bench given no data
measure on its held-out images while it is there; when it is gone that is a note, and the outputs say
they fell back to sample images (on random ones threshold mode may merge nothing)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from bench_runs import tiny_checkpoint
from conftest import one_torch_thread
from PIL import Image

from ltmp_deploy.cli import main
from ltmp_deploy.ltmp.checkpoint import load_checkpoint, save_checkpoint
from ltmp_deploy.ltmp.checkpoint import read_metadata as checkpoint_metadata
from ltmp_deploy.runtime.metadata import read_metadata


def onnx_metadata(path):
    import onnx

    return read_metadata(onnx.load(str(path)))


pytestmark = pytest.mark.slow
CLASSES = 5  # the tiny checkpoint's


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_torch_thread():
        yield


def site_folder(root, splits=("train", "test"), per_class=2, seed=0):
    """``root/<split>/c<N>/<i>.png``: noisy 40x40 pictures of the tiny checkpoint's 5 classes."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in range(CLASSES):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.filterwarnings("ignore:threshold mode keeps")  # one epoch on 10 images misses the target
def test_learn_and_calibrate_record_the_folder_they_read(tmp_path, capsys):
    folder = site_folder(tmp_path / "site")
    base = tiny_checkpoint(tmp_path)
    learned, fixed, by_target = (tmp_path / f"{n}.safetensors" for n in ("learned", "fixed", "target"))
    learn = ["learn", str(base), "--data", str(folder), "--target", "0.5", "--batch-size", "5", "--epochs", "1"]
    assert main([*learn, "--check-images", "5", "-o", str(learned)]) == 0
    assert checkpoint_metadata(learned)["learned_on"] == {"folder": str(folder.resolve()), "split": "train"}
    assert "learn" in checkpoint_metadata(learned)  # the learning record beside it stays
    calibrate = ["calibrate", str(learned), "--data", str(folder), "--no-evaluate"]
    assert main([*calibrate, "-o", str(fixed)]) == 0
    assert checkpoint_metadata(fixed)["learned_on"] == {"folder": str(folder.resolve()), "split": "calibration"}
    assert main(["calibrate", str(learned), "--flops-target", "0.5", "--no-evaluate", "-o", str(by_target)]) == 0
    assert checkpoint_metadata(by_target)["learned_on"]["split"] == "train"  # its thresholds still came from there
    assert "learned_on" not in checkpoint_metadata(base)
    capsys.readouterr()


@pytest.fixture
def recorded(tmp_path):
    """A threshold-mode checkpoint whose metadata says it learned on an image folder with a test/ split."""
    folder = site_folder(tmp_path / "site", splits=("train", "test"), per_class=2)
    model = load_checkpoint(tiny_checkpoint(tmp_path))
    model.ltmp.learned_on = {"folder": str(folder), "split": "train"}
    return save_checkpoint(model, tmp_path / "learned.safetensors"), folder


def test_without_data_the_recorded_folder_is_measured_on(tmp_path, capsys, recorded):
    from ltmp_deploy.bench.run import _images

    checkpoint, folder = recorded
    graph = tmp_path / "t.onnx"
    assert main(["export", str(checkpoint), "--mode", "threshold", "--decisions", "-o", str(graph)]) == 0
    out = capsys.readouterr().out
    assert "where the checkpoint learned" in out and "seeded random images" not in out.split("\n")[0]
    assert onnx_metadata(graph)["flops_measured_on"] == (
        f"10 images of {folder} (held-out images, where the checkpoint learned)"
    )
    assert "learned_on" not in onnx_metadata(graph)  # a training machine's path stays off exports

    report_path = tmp_path / "v.json"
    assert main(["validate", str(graph), "--against", str(checkpoint), "--images", "4", "-o", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["input_kind"] == "folder" and report["input_source"] == str(folder / "test")
    assert report["data"] == f"4 images of {folder / 'test'} (where the checkpoint learned), evenly drawn from its 10"
    capsys.readouterr()

    images, what = _images(load_checkpoint(checkpoint), None, 3)
    assert images.shape == (3, 3, 32, 32) and what == f"3 held-out images of {folder} (where the checkpoint learned)"
    assert "where the checkpoint learned" in capsys.readouterr().err


def test_a_recorded_folder_that_is_gone_is_a_note_and_random_images_say_so(tmp_path, capsys, recorded):
    from ltmp_deploy.bench.run import _images

    checkpoint, folder = recorded
    shutil.rmtree(folder)
    graph = tmp_path / "t.onnx"
    assert main(["export", str(checkpoint), "--mode", "threshold", "--decisions", "-o", str(graph)]) == 0
    out = capsys.readouterr().out
    assert "note: seeded random images: threshold mode may merge nothing" in out
    measured = onnx_metadata(graph)["flops_measured_on"]
    assert "seeded random images" in measured and f"learned on {folder}, which is not here any more" in measured

    report_path = tmp_path / "v.json"
    assert main(["validate", str(graph), "--against", str(checkpoint), "-o", str(report_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["input_kind"] == "random" and report["data"] == "seeded random images"
    assert any("which is not here any more" in n for n in report["notes"])
    assert "seeded random images: threshold mode may merge nothing" in out

    _, what = _images(load_checkpoint(checkpoint), None, 2)
    err = capsys.readouterr().err
    assert what == "seeded random images" and "not here any more" in err and "may merge nothing" in err


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
def test_the_check_after_export_runs_on_the_folder_given(tmp_path, mode):
    from ltmp_deploy.export.onnx_export import export_onnx

    folder = tmp_path / "site"
    for split in ("train", "test"):  # flat pictures: identical patches, which threshold mode merges
        for c in range(CLASSES):
            (folder / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (40, 40), (40 * c, 90, 200 - 30 * c)).save(folder / split / f"c{c}" / "0.png")
    checkpoint = tiny_checkpoint(tmp_path)
    if mode == "fixed":
        calibrate = ["calibrate", str(checkpoint), "--flops-target", "0.5", "--no-evaluate"]
        assert main([*calibrate, "-o", str(tmp_path / "fixed.safetensors")]) == 0
        checkpoint = tmp_path / "fixed.safetensors"
    result = export_onnx(checkpoint, tmp_path / "t.onnx", mode=mode, data=str(folder), batch=3)
    report = result.validation
    assert report.ok and report.input_kind == "folder"
    assert report.data == f"3 images of {folder} (held-out images)"
    assert not report.reductions.none
