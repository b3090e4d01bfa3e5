"""What ``validate`` compares on, and what its images exercised: a count, a folder or image files;
the merges and prunes counted from the reference's decisions; the gate for images that reduced
no token at all (on random images threshold mode may merge nothing, and "identical decisions"
then proves nothing about merging)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import one_torch_thread, tiny_ltmp
from PIL import Image
from runtime_models import exported

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.parity.inputs import images_option, read_inputs, spread


def picture_folder(root, classes=("a", "b"), per_class=4, seed=0):
    """``root/<class>/N.png``: noisy 40x40 pictures, which the tiny model merges and prunes."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_images_option_is_a_count_or_paths(tmp_path):
    assert images_option(["16"]) == 16
    assert images_option(["photos/"]) == ["photos/"]
    (tmp_path / "7").mkdir()
    assert images_option([str(tmp_path / "7")]) == [str(tmp_path / "7")]
    assert images_option(["a.png", "b.png"]) == ["a.png", "b.png"]


def test_a_folder_is_walked_and_drawn_evenly_over_its_classes(tmp_path):
    folder = picture_folder(tmp_path / "site", classes=("a", "b", "c"), per_class=5)
    (folder / "a" / "notes.txt").write_text("not an image")
    inputs = read_inputs(folder, limit=6)
    assert inputs.kind == "folder" and inputs.source == str(folder) and inputs.count == 6
    assert {p.parent.name for p in inputs.pictures} == {"a", "b", "c"}  # not the first class only
    assert "6 images of" in inputs.description and "evenly drawn from its 15" in inputs.description
    files = read_inputs([folder / "a" / "0.png", folder / "b" / "1.png"])
    assert files.kind == "files" and files.count == 2 and files.description == "2 image files"
    assert read_inputs(5).kind == "random" and read_inputs(np.int64(5)).count == 5
    assert spread(list(range(10)), 4) == [0, 2, 5, 7]
    with pytest.raises(LTMPError, match="no such file or folder"):
        read_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LTMPError, match="no images found"):
        read_inputs(tmp_path / "empty")


def independent_counts(checkpoint, files):
    """Merges and prunes per block, from PyTorch's own Decision.merged()/pruned() on the files."""
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint, read_metadata
    from ltmp_deploy.runtime.preprocess import preprocess

    model = load_checkpoint(checkpoint)
    images = torch.from_numpy(preprocess(files, read_metadata(checkpoint)["data_config"]))
    with torch.no_grad(), one_torch_thread():
        decisions = model.forward_ltmp(images).decisions
    return [int(d.merged().sum()) for d in decisions], [int(d.pruned().sum()) for d in decisions]


@pytest.mark.slow
@pytest.mark.parametrize("against", ["checkpoint", "onnx"])
def test_a_folder_reports_the_merges_and_prunes_it_exercised(tmp_path, capsys, against):
    files = exported("threshold")
    folder = picture_folder(tmp_path / "photos")
    report_path = tmp_path / "report.json"
    reference = files.checkpoint if against == "checkpoint" else files.onnx
    argv = ["validate", str(files.onnx), "--against", str(reference), "--images", str(folder), "-o", str(report_path)]
    assert main([*argv, "--require-reductions"]) == 0
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["input_kind"] == "folder" and report["input_source"] == str(folder) and report["images"] == 8
    assert report["data"] == f"8 images of {folder}" and report["failures"] == []
    merged, pruned = independent_counts(files.checkpoint, sorted(folder.rglob("*.png")))
    assert [b["merged"] for b in report["reductions"]["blocks"]] == merged
    assert [b["pruned"] for b in report["reductions"]["blocks"]] == pruned
    assert report["reductions"]["merged"] == sum(merged) > 0 and report["reductions"]["pruned"] == sum(pruned)
    assert f"exercised {sum(merged)} merges and {sum(pruned)} prunes over 8 images" in out


@pytest.mark.slow
def test_image_files_are_compared_and_a_missing_one_is_one_line(tmp_path, capsys):
    files = exported("threshold")
    folder = picture_folder(tmp_path / "photos")
    picked = [str(folder / "a" / "0.png"), str(folder / "b" / "3.png")]
    assert main(["validate", str(files.onnx), "--against", str(files.onnx), "--images", *picked, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_kind"] == "files" and report["data"] == "2 image files" and report["input_source"] is None
    code = main(["validate", str(files.onnx), "--against", str(files.onnx), "--images", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nope: no such file or folder" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def merges_nothing(tmp_path_factory):
    """A threshold-mode checkpoint and graph whose thresholds never merge nor prune a token."""
    from ltmp_deploy.export.onnx_export import export_onnx
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("inert")
    model = tiny_ltmp("threshold")
    model.ltmp_set_thresholds([2.0, 2.0, 2.0], [0.0, 0.0, 0.0])  # no similarity reaches 2, no score is below 0
    checkpoint = save_checkpoint(model, folder / "inert.safetensors")
    with one_torch_thread():
        graph = export_onnx(checkpoint, folder / "inert.onnx", decisions=True).path
    return checkpoint, graph


@pytest.mark.slow
def test_images_that_reduce_nothing_are_said_plainly_and_fail_the_gate(tmp_path, capsys, merges_nothing):
    checkpoint, graph = merges_nothing
    assert main(["validate", str(graph), "--against", str(checkpoint)]) == 0  # parity itself holds
    out = capsys.readouterr().out
    assert "NO merge and NO prune on these 16 images (seeded random images)" in out
    assert "threshold mode may merge nothing" in out and "token decisions identical in all 3 blocks" in out
    report_path = tmp_path / "gate.json"
    code = main(["validate", str(graph), "--against", str(graph), "--require-reductions", "-o", str(report_path)])
    out, err = capsys.readouterr()
    assert code == 1 and out.startswith("FAIL:")
    reason = "the 16 images (seeded random images) exercised no merge and no prune (--require-reductions)"
    assert err.strip() == f"validate: {reason}"
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and report["comparisons"][0]["ok"] is True
    assert report["reductions"] == {
        "merged": 0,
        "pruned": 0,
        "blocks": [{"merged": 0, "pruned": 0}] * 3,
    }


@pytest.mark.slow
def test_a_graph_without_decisions_cannot_pass_the_gate(capsys):
    files = exported("fixed", decisions=False)
    assert main(["validate", str(files.onnx), "--against", str(files.onnx), "--require-reductions"]) == 1
    out, err = capsys.readouterr()
    assert "merges and prunes not counted" in out and "gave no token decisions to count" in err
