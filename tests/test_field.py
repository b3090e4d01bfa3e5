"""The field commands on tiny exported models: predict (with audit logs) and inspect; every bad
input gets exit code 2 and one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from PIL import Image
from runtime_models import checkpoint, exported

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import sha256
from ltmp_deploy.runtime import Session
from ltmp_deploy.runtime.audit import SCHEMA, AuditLog, read_log, select
from ltmp_deploy.runtime.predict import batches, image_files, predict_files


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_torch_thread():
        yield


def picture(path, seed, size=(40, 36)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path):
    """A folder of 5 images (one in a subfolder, one JPEG) among files that are not images."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for i in range(3):
        picture(root / f"{i}.png", i, (40 + 3 * i, 36))
    picture(root / "sub" / "3.jpg", 3)
    picture(root / "sub" / "4.png", 4).rename(root / "sub" / "4.data")  # an image is an image by content
    picture(root / ".hidden" / "5.png", 5)
    (root / "notes.txt").write_text("not an image")
    return root


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_image_files_walks_folders_by_content_in_sorted_order(photos):
    found = [p.relative_to(photos).as_posix() for p in image_files([photos])]
    assert found == ["0.png", "1.png", "2.png", "sub/3.jpg", "sub/4.data"]
    assert image_files([photos / "2.png", photos])[0] == photos / "2.png"  # files keep the order given
    with pytest.raises(LTMPError, match="notes.txt: not an image"):
        image_files([photos / "notes.txt"])
    with pytest.raises(LTMPError, match="no such file or folder"):
        image_files([photos / "missing.png"])
    (photos / "empty").mkdir()
    with pytest.raises(LTMPError, match="no images found"):
        image_files([photos / "empty"])


def test_predict_prints_the_sessions_top_k_as_a_table_and_as_json(photos, capsys):
    files = exported("threshold")
    images = image_files([photos])
    with Session(files.onnx) as s:
        expected = s.predict(images, k=3)
    assert main(["predict", str(files.onnx), str(photos), "-k", "3", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "top-1", "top-2", "top-3"] and len(lines) == 1 + len(images)
    for line, image, classes in zip(lines[1:], images, expected.topk_indices):
        cells = line.split()
        assert cells[0] == str(image) and [int(c) for c in cells[1::2]] == classes.tolist()
    assert main(["predict", str(files.onnx), str(photos), "-k", "2", "--json", "--batch", "2", "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == [str(i) for i in images]
    for row, classes, probs in zip(rows, expected.topk_indices, expected.topk_probs):
        assert [e["class"] for e in row["topk"]] == classes[:2].tolist()
        np.testing.assert_allclose([e["prob"] for e in row["topk"]], probs[:2], atol=1e-6)


def test_predict_streams_one_batch_at_a_time():
    files = exported("threshold")
    pulled = []

    def images():
        for i in range(10):
            pulled.append(i)
            yield np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)

    with Session(files.onnx) as s:
        rows = predict_files(s, images(), k=1, batch=3)
        next(rows)
        assert len(pulled) == 3  # the first answer comes before the fourth image is read
        assert len(list(rows)) == 9 and len(pulled) == 10
    assert [len(c) for c in batches(range(7), 3)] == [3, 3, 1]


def torch_maps(image_path):
    """What PyTorch's tracked source map says for one image file (the reference)."""
    from ltmp_deploy.data.folder import model_data_config
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint
    from ltmp_deploy.ltmp.token_maps import token_maps
    from ltmp_deploy.runtime.preprocess import preprocess

    model = load_checkpoint(checkpoint("fixed"))
    x = torch.from_numpy(preprocess(image_path, model_data_config(model)))[0]
    return token_maps(model, x)


def test_audit_log_of_a_pinned_batch_file_has_every_image_and_pytorchs_decisions(photos, tmp_path, capsys):
    files = exported("fixed", batch=2)
    log = tmp_path / "audit.jsonl"
    assert main(["predict", str(files.onnx), str(photos), "--log-decisions", str(log), "--no-progress"]) == 0
    assert f"wrote {log}: 5 lines" in capsys.readouterr().err  # 5 images in batches of 2: the last one padded
    entries = [e for _, e in read_log(log)]
    images = image_files([photos])
    assert [e["image"] for e in entries] == [str(i) for i in images]
    for entry, image in zip(entries, images):
        assert entry["schema"] == SCHEMA and entry["image_sha256"] == sha256(image)
        assert entry["model"] == {"file": str(files.onnx), "sha256": sha256(files.onnx), "backend": "onnxruntime"}
        assert entry["input"]["grid"] == [4, 4] and entry["input"]["num_prefix_tokens"] == 1
        assert entry["input"]["data_config"]["input_size"] == [3, 32, 32] and len(entry["topk"]) == 5
        assert [b["kept"] for b in entry["blocks"]] == [11, 7, 5]  # the fixed schedule's token counts
        for block, ref in zip(entry["blocks"], torch_maps(image)):
            assert block == ref.to_json()
            in_groups = sum(len(g) for g in block["merged"])
            alone = 16 - len(block["pruned"]) - in_groups
            assert block["kept"] == 1 + len(block["merged"]) + alone  # every patch counted once
    assert any(b["pruned"] for b in entries[0]["blocks"]) and any(b["merged"] for b in entries[0]["blocks"])


def with_labels(onnx_path, tmp_path):
    from ltmp_deploy.runtime.metadata import load_onnx, read_metadata, write_metadata

    graph = load_onnx(onnx_path)
    write_metadata(graph, {**read_metadata(graph), "labels": ["ant", "bee", "cat", "dog", "eel"]})
    out = tmp_path / "labelled.onnx"
    out.write_bytes(graph.SerializeToString())
    return out


def test_labels_from_the_metadata_name_the_classes(photos, tmp_path, capsys):
    labelled = with_labels(exported("threshold").onnx, tmp_path)
    log = tmp_path / "a.jsonl"
    assert (
        main(["predict", str(labelled), str(photos / "0.png"), "-k", "2", "--no-progress", "--log-decisions", str(log)])
        == 0
    )
    row = capsys.readouterr().out.splitlines()[1].split()
    names = ["ant", "bee", "cat", "dog", "eel"]
    ((_, entry),) = read_log(log)
    assert row[1::2] == [names[e["class"]] for e in entry["topk"]] == [e["label"] for e in entry["topk"]]


def test_audit_log_is_written_whole_or_not_at_all(photos, tmp_path, capsys):
    files = exported("threshold")
    log = tmp_path / "audit.jsonl"
    log.write_text("an earlier log\n")
    data = (photos / "1.png").read_bytes()
    (photos / "1.png").write_bytes(data[: len(data) // 2])  # still sniffed as a PNG, fails to decode
    named = [str(p) for p in sorted(photos.glob("*.png"))]  # named one by one: a folder would skip it with a count
    argv = ["predict", str(files.onnx), *named, "--batch", "1", "--log-decisions", str(log), "--no-progress"]
    assert main(argv) == 2
    assert "1.png" in error_line(capsys)
    assert log.read_text() == "an earlier log\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.jsonl",
        "photos",
    ]
    with Session(files.onnx) as s:  # from Python: a log neither closed nor finished leaves nothing
        writer = AuditLog(tmp_path / "py.jsonl", s)
        writer.write([photos / "0.png"], s.predict([photos / "0.png"]))
        writer.discard()
        with AuditLog(tmp_path / "py.jsonl", s) as writer:
            writer.write([photos / "0.png"], s.predict([photos / "0.png"]))
            assert not (tmp_path / "py.jsonl").exists()  # not before it is finished
    assert len((tmp_path / "py.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "photos", "py.jsonl"]


def test_predict_refuses_bad_input_in_one_line(photos, tmp_path, capsys):
    dyn, pinned, plain = exported("threshold"), exported("fixed", batch=2), exported("threshold", decisions=False)
    log = tmp_path / "x.jsonl"
    cases = [
        ([str(plain.onnx), str(photos), "--log-decisions", str(log)], "export --decisions"),
        ([str(pinned.onnx), str(photos), "--batch", "3"], "exactly 2"),
        ([str(dyn.onnx), str(photos), "-k", "0"], "-k 0"),
        ([str(dyn.onnx), str(photos / "missing.png")], "no such file"),
        ([str(dyn.onnx), str(photos / "notes.txt")], "not an image"),
        ([str(photos / "notes.txt"), str(photos)], "unknown file type"),
        ([str(dyn.onnx), str(photos), "--log-decisions", str(tmp_path / "no" / "x.jsonl")], "does not exist"),
    ]
    for argv, says in cases:
        assert main(["predict", *argv, "--no-progress"]) == 2, argv
        assert says in error_line(capsys), argv
    assert not log.exists()
    assert main(["predict", str(plain.onnx), str(photos), "--no-progress"]) == 0  # without a log it predicts


def test_select_finds_lines_by_path_name_and_index(photos, tmp_path, capsys):
    files = exported("threshold")
    log = tmp_path / "a.jsonl"
    shutil.copy(photos / "0.png", photos / "sub" / "0.png")  # two images named 0.png
    assert main(["predict", str(files.onnx), str(photos), "--log-decisions", str(log), "--no-progress"]) == 0
    chosen = select(log, ["2", "1.png", str(photos / "sub" / "0.png")])
    assert [e["image"] for e in chosen] == [str(photos / "2.png"), str(photos / "1.png"), str(photos / "sub" / "0.png")]
    for wanted, says in [("0.png", "2 images are named"), ("9", "no line 9"), ("x.png", "no image 'x.png'")]:
        with pytest.raises(LTMPError, match=says):
            select(log, [wanted])
    (tmp_path / "other.jsonl").write_text('{"schema": "something/2"}\n')
    with pytest.raises(LTMPError, match="expected 'ltmp-deploy-audit/1'"):
        select(tmp_path / "other.jsonl", ["0"])


# -- inspect ------------------------------------------------------------------------------------


def test_inspect_a_checkpoint_from_its_header(capsys):
    ckpt = checkpoint("fixed")
    assert main(["inspect", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt)
    merge, prune = model.ltmp_thresholds()
    assert info["kind"] == "checkpoint" and info["sha256"] == sha256(ckpt) and info["mode"] == "fixed"
    assert info["schedule"] == model.ltmp.schedule.pairs() and info["num_blocks"] == 3 and info["num_classes"] == 5
    assert info["thresholds"] == {"merge": merge, "prune": prune}
    assert info["parameters"] == sum(p.numel() for n, p in model.state_dict().items() if "masker" not in n)
    assert info["model"] == "timm.models.vision_transformer.VisionTransformer" and info["input_size"] == [3, 32, 32]
    assert main(["inspect", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert "toolkit checkpoint" in text and "schedule (r, k):  3,11 2,7 1,5" in text


def test_inspect_an_onnx_file_and_an_engine_sidecar(tmp_path, capsys):
    from ltmp_deploy.runtime.trt import build as b

    files = exported("fixed", batch=2)
    assert main(["inspect", str(files.onnx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "onnx" and info["opset"] == 16 and info["precision"] == "fp32" and info["mode"] == "fixed"
    assert info["inputs"] == [{"name": "images", "dtype": "float32", "shape": [2, 3, 32, 32]}]
    assert info["outputs"][0] == {"name": "logits", "dtype": "float32", "shape": [2, 5]} and len(info["outputs"]) == 7
    assert (
        info["decision_outputs"] is True and 0.3 < info["flops_kept"] < 0.8 and info["flops_basis"] == "fixed schedule"
    )
    assert main(["inspect", str(exported("threshold", decisions=False).onnx)]) == 0
    assert "decision outputs: no (export with --decisions" in capsys.readouterr().out

    engine = tmp_path / "m.plan"
    engine.write_bytes(b"engine bytes")  # a stand-in: inspect reads only the sidecar, never the engine
    plan = b.plan_build(files.onnx, b.BuildOptions(preset="agx-orin", precision="fp16"), installed="10.3.0.30")
    side = b.compose_sidecar(plan, engine, tensorrt_version="10.3.0.30", gpu="Orin")
    b.sidecar_path(engine).write_text(json.dumps(side))
    assert main(["inspect", str(engine), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "engine" and info["tensorrt_version"] == "10.3.0.30" and info["gpu"] == "Orin"
    assert info["precision"] == "fp16" and info["mode"] == "fixed" and info["onnx_sha256"] == sha256(files.onnx)
    assert info["schedule"] == side["metadata"]["schedule"] and info["sha256"] == sha256(engine)
    assert main(["inspect", str(engine)]) == 0
    text = capsys.readouterr().out
    assert "TensorRT engine" in text and "10.3.0.30 (target 10.3)" in text and "GPU:" in text and "Orin" in text


def test_inspect_refuses_what_it_cannot_read_in_one_line(tmp_path, capsys):
    from safetensors.numpy import save_file

    ckpt = checkpoint("threshold")
    data = ckpt.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:200])
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "weights.safetensors"))
    (tmp_path / "x.txt").write_text("hello")
    (tmp_path / "bad.onnx").write_bytes(b"\x00not onnx")
    cases = [
        ("short.safetensors", "truncated"),
        ("cut.safetensors", "truncated"),
        ("weights.safetensors", "without ltmp-deploy metadata"),
        ("x.txt", "an unknown file type"),
        ("bad.onnx", "expected a toolkit checkpoint"),
        ("missing.onnx", "no such file"),
    ]
    for name, says in cases:
        assert main(["inspect", str(tmp_path / name)]) == 2, name
        assert says in error_line(capsys), name
