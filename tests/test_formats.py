"""Files are known by their content: every kind from its bytes under any name, damaged headers,
and one line naming the file and what it is when a command gets the wrong kind."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GOLDEN
from runtime_models import exported, one_torch_thread
from safetensors.torch import load_file, save_file

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.formats import SAFETENSORS_HEADER_LIMIT, FileKind, expect, sniff

REPO = Path(__file__).resolve().parents[1]
NO_TENSORRT = "TensorRT is not installed here (pip's tensorrt is a stub that downloads from NVIDIA)"
REFERENCE = GOLDEN / "ltmp_vit_64px.safetensors"
DESCRIPTION = GOLDEN / "ltmp_vit_64px.json"
WRONG_NAMES = ["model.bin", "model.onnx", "model.engine", "model.safetensors", "model.pt", "model.json", "model"]
TINY = {
    "timm_class": "timm.models.vision_transformer.VisionTransformer",
    "config": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 3, "num_classes": 10},
}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_torch_thread():
        yield


def samples(folder: Path) -> dict[FileKind, bytes]:
    """The bytes of one real file of each kind (an engine: its header only, TensorRT is not here)."""
    state = load_file(str(REFERENCE))
    torch.save(state, folder / "zip.pt")
    torch.save(state, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    return {
        FileKind.TOOLKIT_CHECKPOINT: exported("threshold").checkpoint.read_bytes(),
        FileKind.SAFETENSORS: REFERENCE.read_bytes(),
        FileKind.TORCH_ZIP: (folder / "zip.pt").read_bytes(),
        FileKind.TORCH_PICKLE: (folder / "legacy.pt").read_bytes(),
        FileKind.ONNX: exported("threshold").onnx.read_bytes(),
        FileKind.ENGINE: b"ftrt" + bytes(60),
        FileKind.JSON: DESCRIPTION.read_bytes(),
        FileKind.LFS_POINTER: b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 12345\n",
        FileKind.EMPTY: b"",
        FileKind.UNKNOWN: b"<!DOCTYPE html><html>404</html>",
    }


def test_every_kind_is_told_from_its_bytes_whatever_its_name(tmp_path):
    for kind, data in samples(tmp_path).items():
        for name in WRONG_NAMES:
            path = tmp_path / kind.name / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            assert sniff(path) is kind, (kind, name)


def test_sniffing_holds_for_what_other_writers_produce(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "helper.bin")
    onnx.save(onnx.load(str(exported("fixed").onnx)), tmp_path / "resaved.bin")
    (tmp_path / "sidecar.bin").write_text(json.dumps({"tensorrt_version": "10.3.0"}))
    (tmp_path / "list.bin").write_bytes(b"\xef\xbb\xbf  [1, 2]")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "tiny.bin"), metadata={"ltmp_deploy": "{}"})
    np.save(tmp_path / "array.npy", np.zeros(3))
    kinds = {p.name: sniff(p) for p in tmp_path.iterdir()}
    assert kinds == {
        "helper.bin": FileKind.ONNX,
        "resaved.bin": FileKind.ONNX,
        "sidecar.bin": FileKind.JSON,
        "list.bin": FileKind.JSON,
        "tiny.bin": FileKind.TOOLKIT_CHECKPOINT,
        "array.npy": FileKind.UNKNOWN,
    }


def test_lookalikes_are_not_taken_for_what_they_imitate(tmp_path):
    cases = {
        b"\x08garbage": FileKind.UNKNOWN,  # ir_version 103 is no IR version
        b"\x08\x07garbage": FileKind.UNKNOWN,  # field 12 with wire type 7 is no ModelProto field
        b"\x08\x08": FileKind.UNKNOWN,  # an IR version and nothing else
        b"\x80\x01\x00": FileKind.UNKNOWN,  # pickle protocol 1 is not what torch writes
        b"PK\x03\x04" + bytes(40): FileKind.UNKNOWN,  # a zip header without data.pkl
        struct.pack("<Q", 2) + b"[]": FileKind.UNKNOWN,  # a length, then no JSON object
        bytes(100): FileKind.UNKNOWN,
    }
    for i, (data, kind) in enumerate(cases.items()):
        (tmp_path / f"{i}.bin").write_bytes(data)
        assert sniff(tmp_path / f"{i}.bin") is kind, data
    with pytest.raises(LTMPError, match="no such file"):
        sniff(tmp_path / "missing.onnx")
    with pytest.raises(LTMPError, match="is a folder"):
        sniff(tmp_path)


def test_truncated_files_keep_their_kind_or_are_named_damaged(tmp_path):
    checkpoint = exported("threshold").checkpoint.read_bytes()
    onnx_bytes = exported("threshold").onnx.read_bytes()
    (header_len,) = struct.unpack("<Q", checkpoint[:8])
    cases = {
        "in_header.safetensors": (checkpoint[: 8 + header_len // 2], FileKind.DAMAGED_SAFETENSORS),
        "after_header.safetensors": (checkpoint[: 8 + header_len + 10], FileKind.TOOLKIT_CHECKPOINT),
        "length_only.safetensors": (struct.pack("<Q", 5000), FileKind.UNKNOWN),
        "zip.pt": (samples(tmp_path)[FileKind.TORCH_ZIP][:3000], FileKind.TORCH_ZIP),  # its directory is gone
        "head.onnx": (onnx_bytes[:20], FileKind.ONNX),
        "half.onnx": (onnx_bytes[: len(onnx_bytes) // 2], FileKind.ONNX),
    }
    for name, (data, kind) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert sniff(tmp_path / name) is kind, name
    damaged = r"in_header.safetensors: a truncated or corrupt safetensors file \(its header needs \d+ bytes"
    with pytest.raises(LTMPError, match=damaged):
        expect(tmp_path / "in_header.safetensors", FileKind.TOOLKIT_CHECKPOINT)


def test_a_huge_bogus_header_length_is_refused_without_reading_it(tmp_path):
    """Reading 2**60 bytes would raise MemoryError or OverflowError here, not an LTMPError."""
    path = tmp_path / "bogus.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path.write_bytes(struct.pack("<Q", 2**60) + header + bytes(4))
    assert sniff(path) is FileKind.DAMAGED_SAFETENSORS
    with pytest.raises(LTMPError, match=f"reads {2**60} bytes, more than the format allows"):
        expect(path, FileKind.SAFETENSORS)
    just_under = tmp_path / "under.safetensors"
    just_under.write_bytes(struct.pack("<Q", SAFETENSORS_HEADER_LIMIT) + b"{}")
    with pytest.raises(LTMPError, match="needs 100000000 bytes, the file has 2"):
        expect(just_under, FileKind.SAFETENSORS)
    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(struct.pack("<Q", 6) + b"{oops}")
    with pytest.raises(LTMPError, match="its header is not valid JSON"):
        expect(garbled, FileKind.TOOLKIT_CHECKPOINT)


def test_expect_names_the_file_what_it_is_and_what_was_wanted(tmp_path):
    pickle = tmp_path / "model.bin"
    pickle.write_bytes(samples(tmp_path)[FileKind.TORCH_PICKLE])
    with pytest.raises(LTMPError) as err:
        expect(pickle, FileKind.TOOLKIT_CHECKPOINT)
    assert str(err.value) == (
        f"{pickle}: a torch pickle, expected a toolkit checkpoint (.safetensors with ltmp-deploy metadata)"
    )
    assert expect(pickle, FileKind.ONNX, FileKind.TORCH_PICKLE) is FileKind.TORCH_PICKLE
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"<!DOCTYPE html>")
    with pytest.raises(
        LTMPError,
        match=r"junk.onnx: an unknown file type \(starts with b'<!DOCTYPE html>'\), "
        r"expected an ONNX model or a TensorRT engine$",
    ):
        expect(junk, FileKind.ONNX, FileKind.ENGINE)


# -- the bugs: commands chose the format from the name -----------------------------------------


def one_line_error(capsys, args, *fragments):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.slow
def test_a_checkpoint_named_model_ltmp_exports_and_calibrates(tmp_path, capsys):
    description = tmp_path / "tiny.json"
    description.write_text(json.dumps(TINY))
    ckpt = tmp_path / "model.ltmp"
    assert main(["patch", str(description), "-o", str(ckpt)]) == 0
    assert sniff(ckpt) is FileKind.TOOLKIT_CHECKPOINT
    assert main(["export", str(ckpt), "--no-validate", "-o", str(tmp_path / "m.onnx")]) == 0
    assert sniff(tmp_path / "m.onnx") is FileKind.ONNX
    assert main(["calibrate", str(ckpt), "--flops-target", "0.5", "-o", str(tmp_path / "x")]) == 0
    assert "wrote" in capsys.readouterr().out
    from ltmp_deploy.ltmp.checkpoint import read_metadata

    assert read_metadata(tmp_path / "x")["mode"] == "fixed"


def test_a_model_description_is_json_by_content_and_other_files_are_not_names(tmp_path, capsys):
    from ltmp_deploy import load

    description = tmp_path / "tiny.desc"
    description.write_text(json.dumps(TINY))
    assert load(str(description)).num_classes == 10
    onnx_file = tmp_path / "m.bin"
    shutil.copy(exported("fixed").onnx, onnx_file)
    one_line_error(
        capsys,
        ["calibrate", str(onnx_file), "--flops-target", "0.5", "-o", str(tmp_path / "x")],
        f"{onnx_file}: an ONNX model, expected a toolkit checkpoint",
    )
    one_line_error(
        capsys,
        ["calibrate", str(REFERENCE), "--flops-target", "0.5", "-o", str(tmp_path / "x")],
        "without ltmp-deploy metadata",
        "--weights",
    )
    assert not (tmp_path / "x").exists()


SWAPPED = [
    (FileKind.TORCH_ZIP, "ref.safetensors"),
    (FileKind.TORCH_PICKLE, "ref.safetensors"),
    (FileKind.SAFETENSORS, "ref.pt"),
]


@pytest.mark.parametrize("kind, name", SWAPPED)
def test_torch_and_safetensors_files_load_under_each_others_names(tmp_path, kind, name):
    from ltmp_deploy.ltmp.checkpoint import create_model

    (tmp_path / name).write_bytes(samples(tmp_path)[kind])
    model = create_model(str(DESCRIPTION), reference_checkpoint=tmp_path / name)
    assert model.ltmp_thresholds()[1] == pytest.approx([0.012, 0.014, 0.016, 0.02])


def test_an_onnx_file_named_bin_opens_in_a_session(tmp_path):
    from ltmp_deploy.runtime import Session

    files = exported("fixed")
    renamed = tmp_path / "model.bin"
    shutil.copy(files.onnx, renamed)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with Session(renamed) as s, Session(files.onnx) as ref:
        assert s.backend == "onnxruntime"
        np.testing.assert_array_equal(s.run(x).logits, ref.run(x).logits)
    checkpoint = tmp_path / "model.data"
    shutil.copy(files.checkpoint, checkpoint)
    with Session(checkpoint) as s:
        assert s.backend == "torch"


def test_junk_under_a_trusted_name_gets_one_line_naming_the_file(tmp_path, capsys):
    from ltmp_deploy.runtime import Session

    junk = b"this is not a model\n"
    for name in ("junk.onnx", "junk.engine", "junk.safetensors"):
        (tmp_path / name).write_bytes(junk)
    for name in ("junk.onnx", "junk.engine"):
        with pytest.raises(LTMPError) as err:
            Session(tmp_path / name)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{tmp_path / name}: an unknown file type"), msg
        assert "expected an ONNX model, a TensorRT engine or a toolkit checkpoint" in msg, msg
    one_line_error(
        capsys,
        ["export", str(tmp_path / "junk.safetensors"), "-o", str(tmp_path / "o.onnx")],
        f"{tmp_path / 'junk.safetensors'}: an unknown file type",
        "expected a toolkit checkpoint",
    )
    one_line_error(
        capsys,
        ["check", str(tmp_path / "junk.onnx"), "--trt", "10.3"],
        f"{tmp_path / 'junk.onnx'}: cannot read ONNX file, it is an unknown file type",
    )
    one_line_error(
        capsys,
        ["validate", str(exported("fixed").onnx), "--against", str(tmp_path / "junk.safetensors")],
        "junk.safetensors: an unknown file type",
    )
    assert not (tmp_path / "o.onnx").exists()


def test_a_file_of_no_known_kind_with_an_engine_sidecar_goes_to_tensorrt(tmp_path):
    from ltmp_deploy.runtime.backends import resolve_backend

    engine = tmp_path / "m.plan"
    engine.write_bytes(b"\x01\x02an engine from a TensorRT whose header the magic does not cover")
    with pytest.raises(LTMPError, match="unknown file type"):
        resolve_backend(engine, "auto")
    (tmp_path / "m.plan.json").write_text(json.dumps({"tensorrt_version": "10.3.0"}))
    assert resolve_backend(engine, "auto") == "tensorrt"


def test_a_real_engine_starts_with_the_plan_magic(tmp_path):
    pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    profile = Profile().add("images", (1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))
    data = EngineBytesFromNetwork(NetworkFromOnnxPath(str(exported("fixed").onnx)), CreateConfig(profiles=[profile]))()
    (tmp_path / "m.bin").write_bytes(bytes(data))
    assert sniff(tmp_path / "m.bin") is FileKind.ENGINE


def test_the_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    pickle = tmp_path / "model.bin"
    torch.save({"w": torch.zeros(1)}, pickle, _use_new_zipfile_serialization=False)
    command = [sys.executable, "-m", "ltmp_deploy.cli", "validate", str(pickle), "--against", str(pickle)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"ltmp-deploy validate: error: {pickle}: a torch pickle, expected an ONNX model, a TensorRT engine "
        "or a toolkit checkpoint (.safetensors with ltmp-deploy metadata)"
    ), done.stderr
