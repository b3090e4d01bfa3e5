"""The same LTMP code on a CUDA device gives what it gives on the CPU and what the authors' code gives.

Runs wherever torch sees a GPU (CI has none: these skip there and say so). TF32 is switched off
for the duration: on Ampere and newer, cuDNN convolutions default to TF32, whose ~1e-3 relative
error would be measured here instead of LTMP.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MODEL_KINDS, tiny_ltmp

from ltmp_deploy.ltmp.flops import kept_flops_ratio

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)"
)


@pytest.fixture(autouse=True)
def exact_fp32():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def kept(decisions) -> np.ndarray:
    return torch.stack([d.n_out for d in decisions], dim=1).round().long().cpu().numpy()


def test_golden_on_cuda_alone_and_as_one_padded_batch(golden_model, golden_expected):
    model = golden_model.cuda()
    images = torch.from_numpy(golden_expected["images"]).cuda()
    with torch.no_grad():
        batch = model.forward_ltmp(images)
        alone = [model.forward_ltmp(images[i : i + 1]) for i in range(len(images))]
    assert np.abs(batch.logits.cpu().numpy() - golden_expected["logits"]).max() <= 1e-4
    np.testing.assert_array_equal(kept(batch.decisions), golden_expected["kept_tokens"])
    for i, out in enumerate(alone):
        assert np.abs(out.logits.cpu().numpy() - golden_expected["logits"][i : i + 1]).max() <= 1e-4, f"image {i}"
        np.testing.assert_array_equal(kept(out.decisions)[0], golden_expected["kept_tokens"][i])


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_cuda_takes_the_cpu_decisions(kind, mode):
    model = tiny_ltmp(mode, kind)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cpu = model.forward_ltmp(images)
        gpu = model.cuda().forward_ltmp(images.cuda())
    assert np.abs(cpu.logits.numpy() - gpu.logits.cpu().numpy()).max() <= 1e-4
    for block, (c, g) in enumerate(zip(cpu.decisions, gpu.decisions)):
        assert torch.equal(c.kept, g.kept.cpu()), f"block {block}: kept tokens differ"
        assert torch.equal(c.merge_dst, g.merge_dst.cpu()), f"block {block}: merges differ"


def test_thresholds_learn_on_cuda():
    model = tiny_ltmp("threshold").cuda()
    model.ltmp_set_mode("train")
    images = torch.randn(4, 3, 32, 32, device="cuda")
    out = model.forward_ltmp(images)
    (out.logits.logsumexp(-1).mean() + kept_flops_ratio(model, out.decisions)).backward()
    grads = [blk.merge_masker.threshold.grad for blk in model.blocks] + [
        blk.prune_masker.threshold.grad for blk in model.blocks
    ]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _digits_like(n: int = 24):
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(5)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g))


def test_evaluate_and_calibrate_on_cuda_take_the_cpu_counts_and_schedule():
    from ltmp_deploy.calibration.calibrate import calibrate
    from ltmp_deploy.calibration.evaluate import evaluate

    cpu = evaluate(tiny_ltmp("threshold"), _digits_like(), batch_size=8, device="cpu")
    gpu = evaluate(tiny_ltmp("threshold"), _digits_like(), batch_size=8, device="cuda")
    assert abs(cpu[0] - gpu[0]) <= 1 / 24 and abs(cpu[1] - gpu[1]) <= 1e-3
    np.testing.assert_array_equal(cpu[2].keeps, gpu[2].keeps)
    on_cpu = calibrate(tiny_ltmp("threshold"), _digits_like(), progress=False, device="cpu")
    on_gpu = calibrate(tiny_ltmp("threshold"), _digits_like(), progress=False, device="cuda")
    assert on_cpu.schedule == on_gpu.schedule
