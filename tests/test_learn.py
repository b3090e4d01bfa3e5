"""Threshold learning: the budget pulls FLOPs towards the target, checkpoints per epoch, resume,
bad input, and a 2-process DistributedDataParallel run under torchrun."""

import os
import subprocess
import sys

import pytest
import timm
import torch
from conftest import tiny_ltmp, tiny_vit
from torch.utils.data import TensorDataset

import ltmp_deploy.ltmp.embedded_vit  # noqa: F401  (registers vit_digits_56 with timm)
from ltmp_deploy.calibration.learn import LearnConfig, learn_thresholds, resume_path
from ltmp_deploy.calibration.learn_check import ThresholdCheck, check_threshold_mode
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from ltmp_deploy.ltmp.patch import apply_patch
from ltmp_deploy.ltmp.reduce import straight_through

# Exports, engine plans or whole runs: seconds each on 2 cores; `pytest -m "not slow"` skips them.
# The check after learning warns when these short runs land off their target; one test asks for it.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:threshold mode keeps")]


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
        """Ctrl-C after the first epoch's images (and the batch of them the automatic start is measured on)."""

        def __init__(self, inner):
            self.inner, self.served = inner, 0

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            self.served += 1
            if self.served > len(self.inner) + config().batch_size:
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
    learn += ["--device", "cpu"]  # gloo, each process on the CPU (tests/test_cuda.py runs nccl on two GPUs)
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


# ---------------------------------------------------------------- the check after learning, and pruning that learns

REFERENCE = dict(merge_start=0.9, prune_start=0.0, prune_tau=0.1)  # the authors' start values and prune temperature


def digit_like(n=48, seed=0):
    """A noisy flat background (alike patches, which merging takes cheaply, as a digit's blank ones) around
    a random middle: merging alone at the authors' start 0.9 already removes more than the targets below ask."""
    g = torch.Generator().manual_seed(seed)
    x = 1 + 0.3 * torch.randn(n, 3, 32, 32, generator=g)
    x[:, :, 8:24, 8:24] = torch.randn(n, 3, 16, 16, generator=g)
    return TensorDataset(x, torch.randint(0, 5, (n,), generator=g))


def test_learning_ends_with_threshold_mode_on_the_held_out_images(tmp_path):
    model = fresh()
    out = tmp_path / "l.safetensors"
    result = learn_thresholds(model, data(), out, config(epochs=1), heldout=data(20, 1), heldout_name="val")
    assert [h.epoch for h in result] == [1] and len(result) == 1  # still the epochs' statistics
    check = result.check
    assert (check.split, check.images, check.target) == ("val", 20, 0.5)
    again = check_threshold_mode(model, data(20, 1), 0.5, "val")  # the learned model, as it runs
    assert check.flops_ratio == pytest.approx(again.flops_ratio) and check.accuracy == again.accuracy
    assert [b.block for b in check.blocks] == [0, 1, 2] and check.blocks[0].tokens_in == model.ltmp_num_tokens
    for this, after in zip(check.blocks, check.blocks[1:]):
        assert after.tokens_in == pytest.approx(this.tokens_in - this.merged - this.pruned)
    recorded = read_metadata(out)["learn"]
    assert recorded["epoch"] == 1 and recorded["check"]["flops_ratio"] == pytest.approx(check.flops_ratio)
    assert recorded["check"]["blocks"][1]["merged"] == pytest.approx(check.blocks[1].merged)


def test_threshold_mode_off_the_target_by_more_than_two_hundredths_warns(tmp_path):
    near = ThresholdCheck("val", 10, 0.5, 0.519, 0.9, [])
    assert not near.off_target and near.warning() is None
    far = ThresholdCheck("val", 10, 0.5, 0.479, 0.9, [])
    assert far.off_target and "0.479" in far.warning() and "-0.021" in far.warning()
    # One step at a tiny rate from a start that keeps ~(1 + 0.2) / 2: nowhere near the target 0.2.
    cfg = config(target=0.2, epochs=1, batch_size=48, lr_merge=1e-6, lr_prune=1e-9)
    with pytest.warns(UserWarning, match=r"keeps 0\.[4-9]\d\d of the block FLOPs on train images, \+0\.\d+ from the"):
        result = learn_thresholds(fresh(), data(), None, cfg, progress=False)
    assert result.check.off_target and result.check.split == "train"


def test_pruning_learns_under_the_scaled_recipe_and_not_under_the_authors(tmp_path):
    # The same rates for both; only the start values and the prune mask's temperature differ.
    rates = dict(target=0.7, epochs=3, batch_size=16, lr_merge=0.005, lr_prune=3e-4)
    authors = apply_patch(tiny_vit())
    theirs = learn_thresholds(authors, digit_like(), None, LearnConfig(**rates, **REFERENCE), progress=False)
    # Merging alone keeps less than the target from the start, so the budget lowers pruning and the
    # clamp holds it at 0: nothing is pruned.
    assert authors.ltmp_thresholds()[1] == [0.0] * 3
    assert sum(b.pruned for b in theirs.check.blocks) == 0 and sum(b.merged for b in theirs.check.blocks) > 0

    scaled = apply_patch(tiny_vit())
    ours = learn_thresholds(scaled, digit_like(), None, LearnConfig(**rates), heldout=digit_like(32, 1), progress=False)
    start, learned = ours.start[1], scaled.ltmp_thresholds()[1]
    assert all(s > 0 for s in start), "pruning starts where it has a gradient, not at 0"
    assert any(after > before for before, after in zip(start, learned)), (start, learned)
    assert sum(b.pruned for b in ours.check.blocks) > 0 and sum(b.merged for b in ours.check.blocks) > 0


def test_merge_only_holds_the_prune_thresholds_at_zero(tmp_path):
    model = apply_patch(tiny_vit())
    result = learn_thresholds(
        model, digit_like(), None, config(target=0.6, epochs=1, lr_prune=1.0, merge_only=True), progress=False
    )
    assert model.ltmp_thresholds()[1] == [0.0] * 3 and sum(b.pruned for b in result.check.blocks) == 0


def test_prune_temperature_only_trains_differently():
    # The prune mask's temperature is training's: threshold mode decides by the threshold alone.
    model = tiny_ltmp()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.forward_ltmp(images)
        model.ltmp.prune_tau = 1e-4
        after = model.forward_ltmp(images)
    assert torch.equal(before.logits, after.logits)
    model.ltmp_set_mode("train")
    # Importances 1/N apart (N = 50) against the authors' tau: the mask's gradient is the same for
    # all three; at tau / N it tells them apart.
    imp = torch.tensor([[[0.0, 0.02, 0.04]]], requires_grad=True)
    for tau, flat in ((0.1, True), (0.1 / 50, False)):
        (grad,) = torch.autograd.grad(straight_through(imp, torch.tensor([0.02]), tau).sum(), imp)
        assert (float(grad.max() / grad.min()) < 1.05) == flat, (tau, grad)
