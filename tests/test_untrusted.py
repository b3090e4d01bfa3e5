"""Files from a stranger: nothing a file contains decides what code runs or which other files are read.

Each door gets a crafted file whose payload, if it ran, would create ``ran.txt``. The test proves the
payload did not run and that the refusal is one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_ltmp
from test_checkpoint import _with_metadata, expect_error, header_meta

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.architecture import build_model, check_architecture, supported_classes
from ltmp_deploy.ltmp.checkpoint import create_model, load, load_checkpoint, read_state_dict, save_checkpoint

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 5}


class Payload:
    """Unpickling this creates the marker file: what a crafted pickle would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "ran.txt"


@pytest.fixture
def evil_pickle(tmp_path, marker) -> Path:
    path = tmp_path / "weights.pth"
    torch.save({"model": Payload(marker)}, path)
    return path


def crafted_architectures(evil: Path) -> list[dict]:
    """Architectures that, built as they were before, loaded ``evil`` with the full unpickler."""
    loader = {"checkpoint_path": str(evil), "weights_only": False}
    return [
        {"timm_class": "timm.models._helpers.load_state_dict", "config": loader},
        {"timm_class": "timm.models._helpers.load_checkpoint", "config": {"model": None, **loader}},
        {"timm_model": "vit_tiny_patch16_224", "kwargs": {**TINY, "checkpoint_path": str(evil)}},
        {"timm_model": "vit_tiny_patch16_224", "kwargs": {**TINY, "pretrained": True}},
        {"timm_model": "vit_tiny_patch16_224", "kwargs": {**TINY, "pretrained_cfg_overlay": {"file": str(evil)}}},
        {"timm_class": "builtins.eval", "config": {}},
        {"timm_class": "os.system", "config": {}},
    ]


def test_every_crafted_architecture_is_refused_before_anything_runs(evil_pickle, marker):
    for arch in crafted_architectures(evil_pickle):
        with pytest.raises(LTMPError) as err:
            build_model(arch, "crafted.json")
        assert str(err.value).startswith("crafted.json: ") and "\n" not in str(err.value)
    assert not marker.exists()


def test_the_crafted_file_does_run_code_when_unpickled_fully(evil_pickle, marker):
    """The payload is real: the full unpickler runs it, which is what the doors below must never reach."""
    with evil_pickle.open("rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("which", range(7))
def test_a_checkpoint_with_a_crafted_architecture_runs_nothing_in_any_command(
    tmp_path, capsys, evil_pickle, marker, which
):
    good = save_checkpoint(tiny_ltmp("threshold"), tmp_path / "good.safetensors")
    meta = json.loads(header_meta(good.read_bytes()))
    meta["architecture"] = crafted_architectures(evil_pickle)[which]
    path = _with_metadata(good, tmp_path / "crafted.safetensors", json.dumps(meta))
    out = tmp_path / "out"
    out.mkdir()
    for argv in (
        ["export", str(path), "--no-validate", "-o", str(out / "m.onnx")],
        ["calibrate", str(path), "--flops-target", "0.5", "-o", str(out / "c.safetensors")],
        ["show", str(path), "digits:0", "-o", str(out / "s.png")],
    ):
        expect_error(capsys, argv, "crafted.safetensors")
    for opener in (load_checkpoint, load):
        with pytest.raises(LTMPError, match="crafted.safetensors"):
            opener(path)
    assert not marker.exists() and not list(out.iterdir())


def test_a_model_description_with_a_crafted_architecture_runs_nothing(tmp_path, capsys, evil_pickle, marker):
    for arch in crafted_architectures(evil_pickle):
        desc = tmp_path / "desc.json"
        desc.write_text(json.dumps(arch))
        expect_error(capsys, ["patch", str(desc), "-o", str(tmp_path / "o.safetensors")], "desc.json")
        with pytest.raises(LTMPError, match="desc.json"):
            create_model(str(desc))
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


def test_arguments_must_be_plain_json_named_by_the_constructor():
    cls = "timm.models.vision_transformer.VisionTransformer"
    with pytest.raises(LTMPError, match="must be a plain JSON value"):
        check_architecture({"timm_class": cls, "config": {**TINY, "norm_layer": torch.nn.LayerNorm}})
    with pytest.raises(LTMPError, match="unexpected keyword argument 'weights_only'"):
        check_architecture({"timm_class": cls, "config": {"weights_only": False}})
    with pytest.raises(LTMPError, match="unknown key 'hook'"):
        check_architecture({"timm_class": cls, "config": {}, "hook": "os.system"})
    with pytest.raises(LTMPError, match="exactly one of"):
        check_architecture({"timm_class": cls, "timm_model": "vit_tiny_patch16_224"})
    # What the toolkit writes itself stays buildable: both shapes, both supported classes.
    assert {"timm.models.vision_transformer.VisionTransformer", "timm.models.deit.VisionTransformerDistilled"} <= set(
        supported_classes()
    )
    assert build_model({"timm_class": cls, "config": TINY}).embed_dim == 48
    assert build_model({"timm_model": "vit_tiny_patch16_224", "kwargs": TINY}).embed_dim == 48


def test_weights_are_read_with_the_restricted_unpickler(tmp_path, capsys, evil_pickle, marker):
    with pytest.raises(LTMPError, match="weights.pth: not a readable checkpoint"):
        read_state_dict(evil_pickle)
    argv = ["patch", "vit_tiny_patch16_224", "--weights", str(evil_pickle), "-o", str(tmp_path / "o.safetensors")]
    expect_error(capsys, argv, "weights.pth")
    assert not marker.exists()


def test_learn_resumes_only_through_the_restricted_unpickler(tmp_path, capsys, marker):
    from ltmp_deploy.calibration.learn import _load_resume

    resume = tmp_path / "l.safetensors.resume.pt"
    torch.save({"model": Payload(marker), "epoch": 1}, resume)
    with pytest.raises(LTMPError, match="l.safetensors.resume.pt: cannot resume"):
        _load_resume(resume, tiny_ltmp(), None, None)
    assert not marker.exists()


def test_calibration_arrays_are_never_unpickled(tmp_path, marker):
    from ltmp_deploy.runtime.int8.calibration_data import read_calibration_data

    path = tmp_path / "calib.npy"
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(LTMPError, match="calib.npy"):
        read_calibration_data(path)
    assert not marker.exists()


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "sub/../../secret.bin"])
def test_a_graph_whose_weights_lie_outside_its_folder_is_refused(tmp_path, capsys, location):
    from ltmp_deploy.runtime import Session

    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    folder = tmp_path / "graph"
    folder.mkdir()
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
    node = onnx.helper.make_node("Add", ["x", "w"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [x], [y], initializer=[weight])
    path = folder / "m.onnx"
    path.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    with pytest.raises(LTMPError, match=r"m.onnx: tensor 'w' keeps its weights at .* outside the graph's folder"):
        Session(path)
    expect_error(capsys, ["inspect", str(path)], "m.onnx", "outside the graph's folder")
