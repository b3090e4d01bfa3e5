"""A model's preprocessing and class names are part of it: set at patch (flags or the description JSON),
carried by the checkpoint and the ONNX metadata, shown by inspect, used by the runtime, and taken from
the image folder a model learns or calibrates on."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.checkpoint import create_model, load_checkpoint, read_metadata

TINY = {
    "timm_class": "timm.models.vision_transformer.VisionTransformer",
    "config": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2, "num_classes": 3},
}
SITE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0, "interpolation": "bilinear"}
NAMES = ["cat", "dog", "eel"]


def one_line(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def description(tmp_path):
    path = tmp_path / "site.json"
    path.write_text(json.dumps(TINY))
    return path


def test_patch_flags_set_the_preprocessing_and_class_names_the_checkpoint_carries(tmp_path, description, capsys):
    labels, out = tmp_path / "labels.txt", tmp_path / "m.safetensors"
    labels.write_text("cat\ndog\n\neel\n")
    argv = ["patch", str(description), "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"]
    argv += ["--crop-pct", "1", "--interpolation", "bilinear", "--labels", str(labels), "-o", str(out)]
    assert main(argv) == 0
    assert "random weights" in capsys.readouterr().err  # no --weights: said, once
    meta = read_metadata(out)
    assert {k: meta["data_config"][k] for k in SITE} == SITE and meta["labels"] == NAMES
    model = load_checkpoint(out)
    assert model.ltmp.labels == NAMES and model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "3 (cat, dog, eel)" in shown and "crop 1 (center), bilinear, mean [0.5, 0.5, 0.5]" in shown


def test_patch_with_weights_says_nothing_of_random_weights(tmp_path, description, capsys):
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_model(str(description)).state_dict().items()
               if "masker" not in k}, str(weights))  # fmt: skip
    assert main(["patch", str(description), "--weights", str(weights), "-o", str(tmp_path / "m.safetensors")]) == 0
    assert "random weights" not in capsys.readouterr().err


def test_a_description_carries_preprocessing_and_labels(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({**TINY, "preprocessing": SITE, "labels": NAMES}))
    model = create_model(str(path))
    assert model.ltmp.labels == NAMES and model.pretrained_cfg["crop_pct"] == 1.0
    override = create_model(str(path), preprocessing={"crop_pct": 0.9}, labels=["a", "b", "c"])
    assert override.pretrained_cfg["crop_pct"] == 0.9 and override.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert override.ltmp.labels == ["a", "b", "c"]


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"std": [0.0, 1.0, 1.0]}, "$.std[0]"),
        ({"mean": [0.5, 0.5]}, "mean has 2 values for 3 input channels"),
        ({"crop_mode": "zoom"}, "$.crop_mode"),
        ({"input_size": [3, 64, 64]}, "img_size"),
        ({"scale": 1}, "unknown preprocessing key 'scale'"),
    ],
)
def test_bad_preprocessing_in_a_description_is_one_line(tmp_path, capsys, bad, says):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({**TINY, "preprocessing": bad}))
    one_line(capsys, ["patch", str(path), "-o", str(tmp_path / "m.safetensors")], "d.json", says)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(
    "text, says", [("cat\ndog\n", "2 class names for a model with 3 classes"), ("a\na\nb\n", "distinct")]
)
def test_bad_labels_file_is_one_line(tmp_path, description, capsys, text, says):
    labels = tmp_path / "labels.txt"
    labels.write_text(text)
    argv = ["patch", str(description), "--labels", str(labels), "-o", str(tmp_path / "m.safetensors")]
    one_line(capsys, argv, "labels.txt", says)
    assert not (tmp_path / "m.safetensors").exists()


def test_the_graph_carries_them_and_the_runtime_uses_them(tmp_path, description, capsys):
    from ltmp_deploy.export.onnx_export import export_onnx
    from ltmp_deploy.runtime.audit import read_log
    from ltmp_deploy.runtime.session import Session

    ckpt = tmp_path / "m.safetensors"
    create = create_model(str(description), preprocessing=SITE, labels=NAMES)
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    save_checkpoint(create, ckpt)
    graph = tmp_path / "m.onnx"
    export_onnx(ckpt, graph, decisions=True, validate=False)
    image = tmp_path / "grey.png"
    Image.new("RGB", (40, 32), (128, 128, 128)).save(image)
    with Session(graph) as session:
        assert session.metadata["labels"] == NAMES
        x = session.preprocess([image])
    # mean/std 0.5 and no crop: a flat grey 128 is (128/255 - 0.5) / 0.5 everywhere
    np.testing.assert_allclose(x, (128 / 255 - 0.5) / 0.5, atol=1e-6)
    log = tmp_path / "a.jsonl"
    argv = ["predict", str(graph), str(image), "--no-progress", "--log-decisions", str(log)]
    assert main(argv) == 0
    assert any(name in capsys.readouterr().out for name in NAMES)
    ((_, entry),) = list(read_log(log))
    assert entry["topk"][0]["label"] in NAMES


def test_a_folder_names_the_classes_of_a_model_without_names(tmp_path):
    from ltmp_deploy.data.datasets import dataset_for

    for name in ("ant", "bee", "cow"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "data" / name / "a.png")
    model = create_model(TINY)
    dataset_for(str(tmp_path / "data"), model, "train")
    assert model.ltmp.labels == ["ant", "bee", "cow"]
    named = create_model(TINY, labels=NAMES)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dataset_for(str(tmp_path / "data"), named, "train")
    assert named.ltmp.labels == NAMES  # a model's own names win; the difference is pointed out
    assert any("'ant' here and 'cat' in the model" in str(w.message) for w in seen)


def test_create_model_refuses_labels_of_the_wrong_count():
    with pytest.raises(LTMPError, match="1 class names for a model with 3 classes"):
        create_model(TINY, labels=["only"])
