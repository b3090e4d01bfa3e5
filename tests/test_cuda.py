"""The same LTMP code on a CUDA device gives what it gives on the CPU and what the authors' code gives.

Runs wherever torch sees a GPU (CI has none: these skip there and say so). TF32 is switched off
for the duration: on Ampere and newer, cuDNN convolutions default to TF32, whose ~1e-3 relative
error would be measured here instead of LTMP.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MODEL_KINDS, learn_tiny, random_images, tiny_ltmp

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
    return random_images(n, seed=5)


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


def _learn(device, **kw):
    return learn_tiny(_digits_like(), device, batch_size=8, **kw)


@pytest.mark.filterwarnings("ignore:threshold mode keeps")
def test_learn_on_cuda_takes_the_cpu_steps_and_leaves_the_model_where_it_was():
    on_cpu, cpu_history = _learn("cpu")
    on_gpu, gpu_history = _learn("cuda")
    assert next(on_gpu.parameters()).device.type == "cpu"  # back where the caller had it
    for ours, theirs in zip(on_cpu.ltmp_thresholds(), on_gpu.ltmp_thresholds()):
        assert ours == pytest.approx(theirs, abs=1e-4)
    assert cpu_history[0].flops_ratio == pytest.approx(gpu_history[0].flops_ratio, abs=1e-4)


@pytest.mark.filterwarnings("ignore:threshold mode keeps")
def test_bf16_autocast_on_cuda_learns_with_the_thresholds_kept_fp32():
    plain, plain_history = _learn("cuda")
    model, history = _learn("cuda", autocast="bf16")
    assert all(
        t.dtype == torch.float32
        for blk in model.blocks
        for t in (blk.merge_masker.threshold, blk.prune_masker.threshold)
    )
    start = [t for ts in history.start for t in ts]
    moved = [t for ts in model.ltmp_thresholds() for t in ts]
    moved_fp32 = [t for ts in plain.ltmp_thresholds() for t in ts]
    assert moved != start, "bf16 autocast: the thresholds did not move"
    assert [(a > s) - (a < s) for a, s in zip(moved, start)] == [(a > s) - (a < s) for a, s in zip(moved_fp32, start)]
    assert history[0].flops_ratio == pytest.approx(plain_history[0].flops_ratio, abs=0.05)


def test_cuda_alone_is_the_gpu_of_local_rank(monkeypatch):
    from ltmp_deploy.ltmp.device import resolve_device

    monkeypatch.setenv("LOCAL_RANK", "1")
    expected = torch.device("cuda", 1 % torch.cuda.device_count())
    assert resolve_device("cuda") == expected and resolve_device("auto") == expected
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_validate_s_reference_and_show_run_on_cuda(tmp_path):
    from ltmp_deploy.api import validate
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint
    from ltmp_deploy.pictures import draw_decisions

    ckpt = tmp_path / "fixed.safetensors"
    save_checkpoint(tiny_ltmp("fixed"), ckpt)
    assert validate([ckpt], device="cuda", images=8).ok  # exported on the fly, the reference on the GPU
    assert draw_decisions(str(ckpt), tmp_path / "a.png", ["digits:0"], device="cuda") == [tmp_path / "a.png"]


def test_bench_device_names_torch_cuda_s_gpu():
    from ltmp_deploy.bench.timers import torch_device, unavailable

    assert unavailable("torch-cuda", "cuda:0") is None
    assert torch_device("torch-cuda", "cuda:0") == torch.device("cuda", 0)
    assert torch_device("torch-cuda", None).type == "cuda"


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="fewer than two CUDA devices here: nccl across processes needs two"
)
def test_two_processes_on_two_gpus_under_torchrun_learn_the_thresholds_of_one(tmp_path):
    import os
    import subprocess
    import sys

    import timm

    import ltmp_deploy.ltmp.embedded_vit  # noqa: F401  (registers vit_digits_56 with timm)
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint, save_checkpoint
    from ltmp_deploy.ltmp.patch import apply_patch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "LTMP_DEPLOY_CACHE": str(tmp_path), "NVIDIA_TF32_OVERRIDE": "0"}
    ckpt = tmp_path / "p.safetensors"
    torch.manual_seed(0)
    save_checkpoint(apply_patch(timm.create_model("vit_digits_56")), ckpt)
    learn = ["-m", "ltmp_deploy.cli", "learn", str(ckpt), "--data", "digits", "--target", "0.6", "--epochs", "2"]
    learn += ["--batch-size", "32", "--limit", "96", "--lr-merge", "0.05", "--lr-prune", "0.05", "--seed", "3"]
    learn += ["--device", "cuda"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp, single = tmp_path / "ddp.safetensors", tmp_path / "single.safetensors"
    result = subprocess.run([*torchrun, *learn, "-o", str(ddp)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    alone = subprocess.run([sys.executable, *learn, "-o", str(single)], env=env, capture_output=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    for ours, theirs in zip(load_checkpoint(ddp).ltmp_thresholds(), load_checkpoint(single).ltmp_thresholds()):
        assert ours == pytest.approx(theirs, abs=1e-4)
