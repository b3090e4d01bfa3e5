"""Checkpoints: round trips, the authors' format, and a clear error for each kind of bad file."""

import json

import pytest
import torch
from conftest import GOLDEN
from safetensors.torch import load_file, save_file

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.checkpoint import create_model, load_checkpoint, read_metadata, save_checkpoint
from ltmp_deploy.ltmp.schedule import Schedule

DESCRIPTION = GOLDEN / "ltmp_vit_64px.json"
REFERENCE = GOLDEN / "ltmp_vit_64px.safetensors"


def test_toolkit_checkpoint_round_trip_keeps_everything(tmp_path, golden_model, golden_expected):
    schedule = Schedule((20, 10, 5, 2), (40, 25, 15, 10))
    golden_model.ltmp_set_mode("fixed", schedule)
    path = save_checkpoint(golden_model, tmp_path / "m.safetensors")
    meta = read_metadata(path)
    assert meta["mode"] == "fixed" and meta["schedule"] == schedule.pairs()
    assert meta["thresholds"]["merge"] == pytest.approx(json.loads(DESCRIPTION.read_text())["thresholds"]["merge"])
    assert meta["data_config"]["input_size"] == [3, 64, 64]
    loaded = load_checkpoint(path)
    x = torch.from_numpy(golden_expected["images"])
    with torch.no_grad():
        assert torch.equal(loaded(x), golden_model(x))
        loaded.ltmp_set_mode("threshold")
        assert (loaded(x) - torch.from_numpy(golden_expected["logits"])).abs().max() <= 1e-4


def test_cli_patch_writes_a_checkpoint_from_the_authors_format(tmp_path, golden_expected):
    out = tmp_path / "golden.safetensors"
    assert main(["patch", str(DESCRIPTION), "--reference-checkpoint", str(REFERENCE), "-o", str(out)]) == 0
    model = load_checkpoint(out)
    with torch.no_grad():
        logits = model(torch.from_numpy(golden_expected["images"]))
    assert (logits - torch.from_numpy(golden_expected["logits"])).abs().max() <= 1e-4


def test_authors_torch_pickle_nested_under_model_loads(tmp_path):
    state = load_file(str(REFERENCE))
    torch.save({"model": state, "epoch": 1}, tmp_path / "ref.pth")
    model = create_model(str(DESCRIPTION), reference_checkpoint=tmp_path / "ref.pth")
    assert model.ltmp_thresholds()[1] == pytest.approx([0.012, 0.014, 0.016, 0.02])


def bad(tmp_path, name, state):
    path = tmp_path / name
    save_file(state, str(path))
    return path


def expect_error(capsys, args, *fragments):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_missing_file(tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    expect_error(
        capsys,
        ["patch", str(DESCRIPTION), "--reference-checkpoint", str(tmp_path / "nope.safetensors"), "-o", str(out)],
        "nope.safetensors",
        "no such file",
    )
    assert not out.exists()


def test_truncated_file(tmp_path, capsys):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(REFERENCE.read_bytes()[:5000])
    out = tmp_path / "o.safetensors"
    expect_error(
        capsys,
        ["patch", str(DESCRIPTION), "--reference-checkpoint", str(path), "-o", str(out)],
        "cut.safetensors",
        "truncated or corrupt",
    )
    assert not out.exists()


def test_wrong_model(tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    expect_error(
        capsys,
        ["patch", "deit_tiny_patch16_224", "--weights", str(REFERENCE), "-o", str(out)],
        "ltmp_vit_64px.safetensors",
        "deit_tiny_patch16_224",
    )
    assert not out.exists()


def test_missing_thresholds(tmp_path, capsys):
    state = {k: v for k, v in load_file(str(REFERENCE)).items() if "masker" not in k}
    path = bad(tmp_path, "no_thr.safetensors", state)
    expect_error(
        capsys,
        ["patch", str(DESCRIPTION), "--reference-checkpoint", str(path), "-o", str(tmp_path / "o.safetensors")],
        "no_thr.safetensors",
        "missing 8 LTMP thresholds",
    )


def test_missing_weights(tmp_path, capsys):
    state = {k: v for k, v in load_file(str(REFERENCE)).items() if not k.startswith("blocks.3.")}
    path = bad(tmp_path, "partial.safetensors", state)
    expect_error(
        capsys,
        ["patch", str(DESCRIPTION), "--weights", str(path), "-o", str(tmp_path / "o.safetensors")],
        "partial.safetensors",
        "missing",
        "blocks.3",
    )


def test_wrong_shapes(tmp_path, capsys):
    state = load_file(str(REFERENCE))
    state["head.weight"] = torch.zeros(7, 96)
    state["head.bias"] = torch.zeros(7)
    path = bad(tmp_path, "head7.safetensors", state)
    expect_error(
        capsys,
        ["patch", str(DESCRIPTION), "--weights", str(path), "-o", str(tmp_path / "o.safetensors")],
        "head7.safetensors",
        "wrong shapes",
        "head",
    )


def test_unexpected_keys(tmp_path, capsys):
    state = load_file(str(REFERENCE))
    state["extra.weight"] = torch.zeros(3)
    path = bad(tmp_path, "extra.safetensors", state)
    expect_error(
        capsys,
        ["patch", str(DESCRIPTION), "--weights", str(path), "-o", str(tmp_path / "o.safetensors")],
        "extra.safetensors",
        "extra.weight",
    )


def test_not_a_toolkit_checkpoint(tmp_path):
    with pytest.raises(LTMPError, match="without ltmp-deploy metadata"):
        load_checkpoint(REFERENCE)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(LTMPError, match="g.safetensors"):
        load_checkpoint(garbage)


@pytest.mark.parametrize("kind", ["vit", "distilled", "registers", "avg", "layerscale"])
def test_models_built_from_a_class_round_trip(tmp_path, kind):
    from conftest import tiny_vit

    from ltmp_deploy.ltmp.patch import apply_patch

    model = apply_patch(tiny_vit(kind))
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path)(x), model(x))


def test_written_files_get_the_usual_mode_not_mkstemps_private_one(tmp_path):
    import os
    import stat

    from ltmp_deploy.files import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "out.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o644


TINY_CLASS = "timm.models.vision_transformer.VisionTransformer"
TINY_CONFIG = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 5}


@pytest.mark.parametrize(
    ("description", "says"),
    [
        ({"timm_class": TINY_CLASS, "kwargs": [1, 2]}, "'kwargs' must be a JSON object"),
        ({"timm_class": TINY_CLASS, "config": "big"}, "'config' must be a JSON object"),
        ({"timm_class": TINY_CLASS, "config": {**TINY_CONFIG, "embed_dim": 50}}, "divisible by num_heads"),
        ({"timm_class": TINY_CLASS, "config": {**TINY_CONFIG, "bogus": 3}}, "unexpected keyword argument 'bogus'"),
        ({"timm_model": "no_such_vit", "kwargs": {}}, "timm_model 'no_such_vit': not a timm model name"),
    ],
)
def test_patch_refuses_a_bad_model_description_in_one_line(tmp_path, capsys, description, says):
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps(description))
    out = tmp_path / "o.safetensors"
    expect_error(capsys, ["patch", str(desc), "-o", str(out)], "desc.json", says)
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("no_such_vit_xyz", "no_such_vit_xyz: neither a file nor a timm model name"),
        ("missing.onnx", "missing.onnx: no such file"),
        ("./missing.safetensors", "missing.safetensors: no such file"),
    ],
)
def test_a_name_that_is_neither_a_file_nor_a_timm_model(tmp_path, capsys, name, says):
    expect_error(capsys, ["patch", name, "-o", str(tmp_path / "o.safetensors")], says)
    expect_error(capsys, ["show", name, "digits:0", "-o", str(tmp_path / "o.png")], says)
    assert not list(tmp_path.iterdir())


def test_num_classes_applies_to_a_model_description(tmp_path, capsys):
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({"timm_class": TINY_CLASS, "config": TINY_CONFIG}))
    out = tmp_path / "o.safetensors"
    assert main(["patch", str(desc), "--num-classes", "7", "-o", str(out)]) == 0
    model = load_checkpoint(out)
    assert model.num_classes == 7 and model.head.out_features == 7
    assert read_metadata(out)["architecture"]["config"]["num_classes"] == 7


def _with_metadata(source, path, text):
    """A copy of the checkpoint ``source`` whose ltmp-deploy metadata entry is ``text``."""
    import struct

    from ltmp_deploy.formats import CHECKPOINT_METADATA_KEY

    raw = source.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"] = {CHECKPOINT_METADATA_KEY: text}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + length :])
    return path


def header_meta(raw: bytes) -> str:
    import struct

    from ltmp_deploy.formats import CHECKPOINT_METADATA_KEY

    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + length])["__metadata__"][CHECKPOINT_METADATA_KEY]


DAMAGE = [
    ("not JSON", lambda m: '{"format": "ltmp-deploy-checkpoint", ', "not readable JSON"),
    ("a list", lambda m: "[1]", "not a JSON object"),
    *(
        (f"no {k}", lambda m, k=k: {x: v for x, v in m.items() if x != k}, f"lacks '{k}'")
        for k in ("architecture", "mode", "num_classes", "data_config", "thresholds", "schedule", "tau")
    ),
    ("architecture a list", lambda m: {**m, "architecture": [1]}, "entry 'architecture'"),
    ("schedule a string", lambda m: {**m, "schedule": "x"}, "entry 'schedule'"),
    ("tau a string", lambda m: {**m, "tau": "hot"}, "entry 'tau'"),
    ("thresholds without prune", lambda m: {**m, "thresholds": {"merge": [0.5]}}, "entry 'thresholds'"),
]


@pytest.mark.parametrize(("what", "damage", "says"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_checkpoint_metadata_is_one_line_in_every_reader(tmp_path, capsys, what, damage, says):
    good = save_checkpoint(create_model(str(DESCRIPTION)), tmp_path / "good.safetensors")
    meta = json.loads(header_meta(good.read_bytes()))
    changed = damage(meta)
    text = changed if isinstance(changed, str) else json.dumps(changed)
    path = _with_metadata(good, tmp_path / "damaged.safetensors", text)
    with pytest.raises(LTMPError, match="damaged.safetensors"):
        load_checkpoint(path)
    for argv in (["inspect", str(path)], ["export", str(path), "--no-validate", "-o", str(tmp_path / "m.onnx")]):
        expect_error(capsys, argv, "damaged.safetensors", says)
    assert not (tmp_path / "m.onnx").exists()
