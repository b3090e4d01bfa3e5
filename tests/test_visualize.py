"""The picture of what the model threw away follows the decisions, and is the same picture from
a checkpoint, an exported graph and an audit log."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODEL_KINDS, one_torch_thread, tiny_ltmp
from PIL import Image
from runtime_models import exported

from ltmp_deploy.cli import main
from ltmp_deploy.ltmp.checkpoint import save_checkpoint
from ltmp_deploy.ltmp.token_maps import token_maps
from ltmp_deploy.runtime.patch_maps import PatchMap, compose
from ltmp_deploy.runtime.visualize import GAP, LABEL, PANEL, draw

REPO = Path(__file__).resolve().parents[1]
FIELD = """
import sys
for name in ("torch", "timm", "torchvision", "sklearn", "safetensors", "onnxscript", "onnxslim"):
    sys.modules[name] = None  # not in the field install: `import torch` now raises ImportError
"""


def reducing():
    return tiny_ltmp()


def test_every_patch_is_owned_by_a_surviving_token_or_pruned():
    model = reducing()
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(5))
    maps = token_maps(model, image)
    with torch.no_grad():
        decisions = model.forward_ltmp(image[None]).decisions
    for m, d in zip(maps, decisions):
        owners = set(m.owner[m.owner >= 0].tolist())
        assert len(owners) == int(d.n_out[0]) - model.num_prefix_tokens  # the class token owns no patch
    assert (maps[-1].owner < 0).any(), "something should be pruned by the last block"


def test_draw_makes_one_panel_per_block_in_a_grid():
    model = reducing()
    maps = token_maps(model, torch.randn(3, 32, 32))
    im = draw(np.zeros((32, 32, 3), np.uint8), maps, (4, 4))
    assert im.size == ((PANEL + 8) * 4, PANEL + 40)
    wide = [PatchMap(i, 25, np.arange(24)) for i in range(3)]  # 32x48 pixels, 4x6 patches
    wrapped = draw(np.zeros((32, 48, 3), np.uint8), wide, (4, 6), columns=3)  # 4 panels: 3, then 1
    assert wrapped.size == (3 * (PANEL + GAP), 2 * (round(PANEL * 32 / 48) + LABEL))


def test_draw_greys_pruned_patches_and_outlines_merged_groups():
    owner = np.arange(16)
    owner[[1, 2]] = 1  # patches 1 and 2: one token
    owner[15] = -1  # patch 15: pruned
    picture = np.full((32, 32, 3), (200, 30, 30), np.uint8)
    panel = np.asarray(draw(picture, [PatchMap(0, 15, owner)], (4, 4)))[:PANEL, PANEL + GAP : 2 * PANEL + GAP].astype(
        int
    )
    cell = PANEL // 4
    untouched, pruned = panel[cell // 2, 3 * cell + cell // 2], panel[-cell // 2, -cell // 2]
    assert untouched.tolist() == [200, 30, 30]
    assert pruned.max() - pruned.min() < 30 and pruned.max() < 200  # grey
    edge, inside, seam = panel[0, cell + cell // 2], panel[cell // 2, cell + cell // 2], panel[cell // 2, 2 * cell]
    assert edge.tolist() != [200, 30, 30] and inside.tolist() != edge.tolist()  # tinted inside, outlined at the edge
    assert seam.tolist() == inside.tolist()  # no outline between two patches of one group


@pytest.mark.parametrize("mode", ["threshold", "fixed"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_composed_decisions_are_pytorchs_source_map(kind, mode):
    """In a batch (threshold mode pads it), for every prefix layout."""
    model = tiny_ltmp(mode, kind)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.forward_ltmp(images, track_source=True)
    prefix, patches = model.num_prefix_tokens, model.patch_embed.num_patches
    for i in range(len(images)):
        maps = compose(
            [d.kept[i].numpy() for d in out.decisions], [d.merge_dst[i].numpy() for d in out.decisions], prefix, patches
        )
        ref = token_maps(model, images[i])
        assert [m.to_json() for m in maps] == [r.to_json() for r in ref]
        assert PatchMap.from_json(maps[-1].to_json(), patches).to_json() == maps[-1].to_json()
    assert any(m.pruned for m in maps) and any(m.groups for m in maps)


def test_cli_show_on_an_image_file_and_a_bad_one(tmp_path, capsys):
    ckpt = save_checkpoint(reducing(), tmp_path / "m.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    assert main(["show", str(ckpt), str(tmp_path / "x.png"), "-o", str(tmp_path / "o.png")]) == 0
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["show", str(ckpt), str(tmp_path / "bad.png"), "-o", str(tmp_path / "o2.png")]) == 2
    assert "bad.png" in capsys.readouterr().err and not (tmp_path / "o2.png").exists()


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ("digits:x", "digits:x: the digits test split has images digits:0 to digits:358"),
        ("digits:99999", "digits:99999: the digits test split has images digits:0 to digits:358"),
        ("digits:-1", "digits:-1: the digits test split has images"),
        ("model.onnx", "model.onnx: image file does not exist"),
    ],
)
def test_show_refuses_bad_digits_and_images_in_one_line(tmp_path, capsys, image, says):
    ckpt = save_checkpoint(reducing(), tmp_path / "m.safetensors")
    assert main(["show", str(ckpt), image, "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err, err
    assert not (tmp_path / "o.png").exists()


def test_show_draws_a_digit_for_a_model_of_any_input_size(tmp_path, golden_model):
    """The 8x8 digit is resized to what the model takes (64 px here, not the digits model's 56)."""
    ckpt = save_checkpoint(golden_model, tmp_path / "g.safetensors")
    assert main(["show", str(ckpt), "digits:3", "-o", str(tmp_path / "d.png")]) == 0
    assert Image.open(tmp_path / "d.png").size[1] == PANEL + LABEL


def test_checkpoint_graph_and_audit_log_draw_the_same_picture(tmp_path):
    files = exported("threshold")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (44, 40, 3), dtype=np.uint8)).save(image)
    log = tmp_path / "audit.jsonl"
    with one_torch_thread():
        assert main(["predict", str(files.onnx), str(image), "--log-decisions", str(log), "--no-progress"]) == 0
        assert main(["show", str(files.checkpoint), str(image), "-o", str(tmp_path / "checkpoint.png")]) == 0
        assert main(["show", str(files.onnx), str(image), "-o", str(tmp_path / "onnx.png")]) == 0
        assert main(["show", str(log), "--image", "x.png", "-o", str(tmp_path / "log.png")]) == 0
    pictures = [np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("checkpoint", "onnx", "log")]
    assert pictures[0].shape == (PANEL + LABEL, 4 * (PANEL + GAP), 3)
    np.testing.assert_array_equal(pictures[0], pictures[1])
    np.testing.assert_array_equal(pictures[0], pictures[2])
    blocks = json.loads(log.read_text())["blocks"]
    assert blocks[-1]["pruned"] and any(b["merged"] for b in blocks), "the picture should show both"


def test_show_refuses_bad_input_in_one_line(tmp_path, capsys):
    files, plain = exported("threshold"), exported("threshold", decisions=False)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    log = tmp_path / "audit.jsonl"
    assert main(["predict", str(files.onnx), str(image), "--log-decisions", str(log), "--no-progress"]) == 0
    capsys.readouterr()
    out = str(tmp_path / "o.png")
    cases = [
        ([str(plain.onnx), str(image)], "export --decisions"),
        ([str(files.onnx), str(image), "--mode", "fixed"], "--mode"),
        ([str(files.onnx)], "at least one image"),
        ([str(files.onnx), "digits:3"], "digits"),
        ([str(log)], "--image"),
        ([str(log), str(image)], "--image"),
        ([str(log), "--image", "y.png"], "no image 'y.png'"),
        ([str(tmp_path / "gone.jsonl"), "--image", "0"], "gone.jsonl: no such file"),
        ([str(files.onnx), str(tmp_path / "missing.png")], "does not exist"),
    ]
    for argv, says in cases:
        assert main(["show", *argv, "-o", out]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and says in err, (argv, err)
    Image.fromarray(np.ones((32, 32, 3), np.uint8)).save(image)  # the logged image changed since
    assert main(["show", str(log), "--image", "0", "-o", out]) == 2
    assert "changed since it was logged" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_several_images_go_to_a_folder(tmp_path):
    files = exported("threshold")
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / name)
    assert (
        main(["show", str(files.onnx), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "pics")])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["a.png", "b.png"]


def test_field_commands_run_without_torch(tmp_path):
    """predict, show from a graph and from a log, and inspect of all three kinds, with torch, timm,
    safetensors and scikit-learn absent; predict and show need no onnx either."""
    files = exported("threshold")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    log, out = tmp_path / "audit.jsonl", tmp_path / "out"
    code = FIELD + textwrap.dedent(f"""
        from ltmp_deploy.cli import main
        argv = ["predict", {str(files.onnx)!r}, {str(image)!r}, "--log-decisions", {str(log)!r}, "--no-progress"]
        assert main(argv) == 0
        assert main(["show", {str(files.onnx)!r}, {str(image)!r}, "-o", {str(out) + "-onnx.png"!r}]) == 0
        assert main(["show", {str(log)!r}, "--image", "0", "-o", {str(out) + "-log.png"!r}]) == 0
        assert "onnx" not in sys.modules  # inspect reads graphs with onnx (in the field install); these need none
        for f in ({str(files.checkpoint)!r}, {str(files.onnx)!r}):
            assert main(["inspect", f]) == 0
        assert main(["show", {str(files.checkpoint)!r}, {str(image)!r}, "-o", {str(out) + "-ckpt.png"!r}]) == 2
        leaked = [m for m in ("torch", "timm", "safetensors", "sklearn") if sys.modules.get(m) is not None]
        assert not leaked, leaked
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
    assert "a checkpoint draws only with the full toolkit" in done.stderr  # a Jetson is never told to pip torch
    assert "pip install torch" not in done.stderr
    onnx_png, log_png = (np.asarray(Image.open(f"{out}-{n}.png")) for n in ("onnx", "log"))
    np.testing.assert_array_equal(onnx_png, log_png)
