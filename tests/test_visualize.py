"""The picture of what the model threw away follows the decisions."""

import numpy as np
import torch
from PIL import Image

from conftest import tiny_ltmp
from ltmp_deploy.cli import main
from ltmp_deploy.ltmp.checkpoint import save_checkpoint
from ltmp_deploy.ltmp.visualize import PANEL, render, token_maps


def reducing():
    return tiny_ltmp()


def test_every_patch_is_owned_by_a_surviving_token_or_pruned():
    model = reducing()
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(5))
    maps = token_maps(model, image)
    with torch.no_grad():
        decisions = model.forward_ltmp(image[None]).decisions
    for m, d in zip(maps, decisions):
        owners = set(m["owner"][m["owner"] >= 0].tolist())
        assert len(owners) == int(d.n_out[0]) - model.num_prefix_tokens  # the class token owns no patch
    assert (maps[-1]["owner"] < 0).any(), "something should be pruned by the last block"


def test_render_writes_one_panel_per_block(tmp_path):
    model = reducing()
    out = render(model, torch.randn(3, 32, 32), np.zeros((32, 32, 3), np.uint8), tmp_path / "v.png")
    with Image.open(out) as im:
        assert im.size == ((PANEL + 8) * 4, PANEL + 40)


def test_cli_show_on_an_image_file_and_a_bad_one(tmp_path, capsys):
    ckpt = save_checkpoint(reducing(), tmp_path / "m.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    assert main(["show", str(ckpt), str(tmp_path / "x.png"), "-o", str(tmp_path / "o.png")]) == 0
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["show", str(ckpt), str(tmp_path / "bad.png"), "-o", str(tmp_path / "o2.png")]) == 2
    assert "bad.png" in capsys.readouterr().err and not (tmp_path / "o2.png").exists()
