"""The front door: the whole job in a few calls on ``ltmp_deploy`` itself, on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_torch_thread

import ltmp_deploy as ld

TINY = {
    "timm_class": "timm.models.vision_transformer.VisionTransformer",
    "config": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 3, "num_classes": 5},
}
JOB = ("create_model", "load", "learn", "calibrate", "export_onnx", "validate", "build", "Session")


def test_dir_lists_the_whole_job():
    import ltmp_deploy.export.onnx_export  # noqa: F401  a subpackage import must not hide a front-door name

    assert set(JOB) <= set(dir(ld))
    assert all(callable(getattr(ld, name)) for name in JOB)


@pytest.mark.slow
def test_the_whole_job_through_the_front_door(tmp_path):
    torch.manual_seed(0)
    images = torch.randn(24, 3, 32, 32)
    data = torch.utils.data.TensorDataset(images, torch.randint(0, 5, (24,)))
    with one_torch_thread():
        model = ld.create_model(TINY)
        history = ld.learn(model, data, target=0.7, epochs=1, batch_size=8, progress=False)
        assert len(history) == 1 and not list(tmp_path.iterdir())  # learning wrote nothing
        report = ld.calibrate(model, flops_target=0.5, progress=False)
        assert model.ltmp.mode == "fixed" and abs(report.fixed_flops - 0.5) < 0.1
        ld.save_checkpoint(model, tmp_path / "fixed.safetensors")
        assert ld.load(tmp_path / "fixed.safetensors").ltmp.schedule.pairs() == report.schedule.pairs()
        exported = ld.export_onnx(model, tmp_path / "fixed.onnx")
        assert exported.validation.ok
        parity = ld.validate(tmp_path / "fixed.onnx", against=tmp_path / "fixed.safetensors", images=4)
        assert parity.ok
    line = ld.build(tmp_path / "fixed.onnx", tmp_path / "fixed.engine", preset="orin-nx", print_trtexec=True)
    assert "trtexec" in str(line.trtexec) and "fixed.onnx" in str(line.trtexec)
    with ld.Session(tmp_path / "fixed.onnx") as session:
        result = session.run(images[:3].numpy(), k=2)
    with torch.no_grad():
        expected = model(images[:3]).numpy()
    assert np.abs(result.logits - expected).max() < 1e-4


def test_front_door_mistakes_are_ltmp_errors():
    with pytest.raises(ld.LTMPError, match="flops_target"):
        ld.calibrate(object())
    with pytest.raises(ld.LTMPError, match="learn"):
        ld.learn(object(), [], target=0.5, no_such_option=1)
