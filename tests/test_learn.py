"""Threshold learning: the budget pulls FLOPs towards the target, checkpoints per epoch, resume,
bad input, and a 2-process DistributedDataParallel run under torchrun."""

import os
import subprocess
import sys

import pytest
import timm
import torch
from conftest import tiny_vit
from torch.utils.data import TensorDataset

import ltmp_deploy.ltmp.embedded_vit  # noqa: F401  (registers vit_digits_56 with timm)
from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds, resume_path
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from ltmp_deploy.ltmp.patch import apply_patch

# Exports, engine plans or whole runs: seconds each on 2 cores; `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow


def data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g))


def fresh():
    return apply_patch(tiny_vit())


def config(**kw):
    args = dict(target=0.5, epochs=2, batch_size=16, lr_merge=0.05, lr_prune=0.02)
    args.update(kw)
    return LearnConfig(**args)


def test_budget_moves_flops_towards_the_target_and_only_thresholds_train(tmp_path):
    model = fresh()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "masker" not in k}
    history = learn_thresholds(model, data(), tmp_path / "l.safetensors", config(epochs=3), progress=False)
    assert history[0].flops_ratio > history[-1].flops_ratio, [h.flops_ratio for h in history]
    merge, prune = model.ltmp_thresholds()
    assert merge != [0.9] * 3 and prune != [0.0] * 3
    assert all(0.0 <= t <= 1.0 for t in merge + prune)
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), f"{k} changed though only thresholds train"
    meta = read_metadata(tmp_path / "l.safetensors")
    assert meta["mode"] == "threshold" and meta["learn"]["epoch"] == 3
    assert load_checkpoint(tmp_path / "l.safetensors").ltmp_thresholds() == model.ltmp_thresholds()


def test_finetune_trains_the_weights_too(tmp_path):
    model = fresh()
    before = model.head.weight.clone()
    learn_thresholds(
        model, data(), tmp_path / "l.safetensors", config(epochs=1, finetune=True, lr_model=0.01), progress=False
    )
    assert not torch.equal(before, model.head.weight)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    straight = fresh()
    learn_thresholds(straight, data(), tmp_path / "a.safetensors", config(epochs=2), progress=False)

    class Interrupting(torch.utils.data.Dataset):
        """Ctrl-C after the first epoch's images."""

        def __init__(self, inner):
            self.inner, self.served = inner, 0

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            self.served += 1
            if self.served > len(self.inner):
                raise KeyboardInterrupt
            return self.inner[i]

    with pytest.raises(KeyboardInterrupt):
        learn_thresholds(fresh(), Interrupting(data()), tmp_path / "b.safetensors", config(epochs=2), progress=False)
    assert resume_path(tmp_path / "b.safetensors").is_file()
    resumed = load_checkpoint(tmp_path / "b.safetensors")
    history = learn_thresholds(
        resumed, data(), tmp_path / "b.safetensors", config(epochs=2), resume=True, progress=False
    )
    assert [h.epoch for h in history] == [2]
    for a, b in zip(straight.ltmp_thresholds(), resumed.ltmp_thresholds()):
        assert a == pytest.approx(b, abs=1e-6)


def test_nan_loss_stops_with_a_clear_error_and_no_checkpoint(tmp_path):
    bad = data()
    bad.tensors[0][3] = float("nan")
    with pytest.raises(LTMPError, match="loss became nan"):
        learn_thresholds(fresh(), bad, tmp_path / "n.safetensors", config(epochs=1), progress=False)
    assert not (tmp_path / "n.safetensors").exists()


@pytest.mark.parametrize("target", [0.0, -0.5, 1.5])
def test_target_outside_the_range_is_refused(tmp_path, target):
    with pytest.raises(LTMPError, match="--target"):
        learn_thresholds(fresh(), data(), tmp_path / "t.safetensors", config(target=target), progress=False)


@pytest.mark.slow
def test_two_processes_under_torchrun_learn_the_thresholds_of_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LTMP_DEPLOY_CACHE": str(tmp_path)}
    ckpt = tmp_path / "p.safetensors"
    torch.manual_seed(0)  # one fixed model: the comparison must not depend on a random draw
    save_checkpoint(apply_patch(timm.create_model("vit_digits_56")), ckpt)
    # --batch-size is the global batch: 2 processes take 16 images of each batch of 32 apiece.
    learn = ["-m", "ltmp_deploy.cli", "learn", str(ckpt), "--data", "digits", "--target", "0.6", "--epochs", "2"]
    learn += ["--batch-size", "32", "--limit", "96", "--lr-merge", "0.05", "--lr-prune", "0.05", "--seed", "3"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp, single = tmp_path / "ddp.safetensors", tmp_path / "single.safetensors"
    result = subprocess.run([*torchrun, *learn, "-o", str(ddp)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote") == 1, "only rank 0 writes"
    alone = subprocess.run([sys.executable, *learn, "-o", str(single)], env=env, capture_output=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    merge, prune = load_checkpoint(ddp).ltmp_thresholds()
    merge_1, prune_1 = load_checkpoint(single).ltmp_thresholds()
    assert merge != [0.9] * len(merge), "thresholds did not move"
    assert merge == pytest.approx(merge_1, abs=1e-5) and prune == pytest.approx(prune_1, abs=1e-5)
