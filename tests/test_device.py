"""The device plumbing of the PyTorch side, tested on the CPU (tests/test_cuda.py runs it on a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import learn_tiny, random_images, tiny_ltmp
from torch.utils.data import TensorDataset

from ltmp_deploy.calibration.calibrate import calibrate
from ltmp_deploy.calibration.evaluate import evaluate
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.device import autocast, distributed, resolve_device


def test_auto_is_cuda_when_torch_sees_a_gpu_else_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, says", [("tpu", "not a device"), ("mps", "only cpu and cuda"), ("xyz:1", "not a")])
def test_devices_we_do_not_run_on_are_one_line(name, says):
    with pytest.raises(LTMPError, match=says):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: cuda resolves")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(LTMPError, match="sees no CUDA device here"):
        resolve_device("cuda")


def test_one_process_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed(torch.device("cpu")) == (0, 1)


def test_autocast_runs_bf16_on_the_cpu_and_refuses_other_names():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert (x @ x).dtype == torch.float32
    with pytest.raises(LTMPError, match="choose one of bf16, fp16"):
        with autocast(torch.device("cpu"), "int8"):
            pass


def _data(n: int = 12) -> TensorDataset:
    return random_images(n, seed=3)


def test_evaluate_and_calibrate_on_a_named_device_give_what_the_default_gives():
    model = tiny_ltmp("threshold")
    default = evaluate(model, _data(), batch_size=5)
    named = evaluate(model, _data(), batch_size=5, device="cpu")
    assert default[:2] == named[:2] and (default[2].keeps == named[2].keeps).all()
    report = calibrate(tiny_ltmp("threshold"), _data(), evaluation=_data(), progress=False, device="cpu")
    assert report.schedule == calibrate(tiny_ltmp("threshold"), _data(), evaluation=_data(), progress=False).schedule


# -- learning on a device, in bf16 autocast --------------------------------------------------------


def _learn(device=None, **kw):
    return learn_tiny(_data(), device, batch_size=6, **kw)


@pytest.mark.filterwarnings("ignore:threshold mode keeps")
def test_learn_on_a_named_cpu_learns_what_the_default_learns_here():
    named, named_history = _learn("cpu")
    default, default_history = _learn(None if not torch.cuda.is_available() else "cpu")
    assert named.ltmp_thresholds() == default.ltmp_thresholds()
    assert named_history[0].loss == default_history[0].loss
    assert next(named.parameters()).device.type == "cpu"


@pytest.mark.filterwarnings("ignore:threshold mode keeps")
def test_bf16_autocast_learns_with_the_thresholds_kept_fp32():
    plain, plain_history = _learn("cpu")
    model, history = _learn("cpu", autocast="bf16")
    assert model.ltmp_thresholds() != history.start, "bf16 autocast: the thresholds did not move"
    assert history[0].loss == history[0].loss and 0.0 < history[0].flops_ratio <= 1.0  # finite
    for blk in model.blocks:
        for threshold in (blk.merge_masker.threshold, blk.prune_masker.threshold):
            assert threshold.dtype == torch.float32
    # bf16's rounding flips some hard decisions, so the values differ (by up to 0.05 here), but every
    # threshold moves the way it moves in fp32 and the masks keep about the FLOPs they keep in fp32
    start = [t for ts in history.start for t in ts]
    moved = [t for ts in model.ltmp_thresholds() for t in ts]
    moved_fp32 = [t for ts in plain.ltmp_thresholds() for t in ts]
    assert [(a > s) - (a < s) for a, s in zip(moved, start)] == [(a > s) - (a < s) for a, s in zip(moved_fp32, start)]
    assert history[0].flops_ratio == pytest.approx(plain_history[0].flops_ratio, abs=0.05)


def test_the_soft_decision_is_fp32_and_its_threshold_gradient_too_under_autocast():
    from ltmp_deploy.ltmp.reduce import straight_through

    threshold = torch.nn.Parameter(torch.tensor(0.5))
    score = torch.tensor([0.49, 0.5001, 0.51]).bfloat16()  # bf16, as a bf16 matmul gives under autocast
    with autocast(torch.device("cpu"), "bf16"):
        weight = straight_through(score, threshold, 0.1)
    assert weight.dtype == torch.float32
    weight.sum().backward()
    assert threshold.grad.dtype == torch.float32 and threshold.grad != 0


def test_autocast_names_only_bf16_for_learning():
    from ltmp_deploy.calibration.learn import LearnConfig

    with pytest.raises(LTMPError, match="--autocast 'fp16': choose one of bf16"):
        LearnConfig(target=0.5, autocast="fp16").check()


# -- the --device option of every command that runs PyTorch -------------------------------------------

DEVICE_COMMANDS = ["learn", "calibrate", "evaluate", "validate", "show", "bench", "trial"]


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_every_pytorch_command_takes_device_and_says_its_default(command, capsys):
    from ltmp_deploy.cli import main

    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE" in text and "auto (the default: " in text and "one-line error (exit 2)" in text


def _checkpoint(tmp_path, mode="threshold"):
    from ltmp_deploy.ltmp.checkpoint import save_checkpoint

    path = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_ltmp(mode), path)
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: --device cuda runs")
@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(command, tmp_path, capsys):
    from ltmp_deploy.cli import main

    ckpt, out = str(_checkpoint(tmp_path)), str(tmp_path / "out")
    argv = {
        "learn": ["learn", ckpt, "--target", "0.5", "-o", out + ".safetensors"],
        "calibrate": ["calibrate", ckpt, "--flops-target", "0.5", "--no-evaluate", "-o", out + ".safetensors"],
        "evaluate": ["evaluate", ckpt, "--data", "digits", "-o", out + ".json"],
        "validate": ["validate", ckpt],
        "show": ["show", ckpt, "digits:0", "-o", out + ".png"],
        "bench": ["bench", ckpt, "--backends", "torch-cpu", "-o", out],
        "trial": ["trial", ckpt, "--data", "digits", "-o", out],
    }[command]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--device cuda: torch" in err and "sees no CUDA device here" in err, err
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir()), "nothing is written"


def test_device_places_only_pytorch_validate_s_reference_and_show_s_checkpoint(tmp_path):
    from ltmp_deploy.api import validate
    from ltmp_deploy.export.onnx_export import export_onnx
    from ltmp_deploy.pictures import draw_decisions

    ckpt = _checkpoint(tmp_path, "fixed")
    graph = export_onnx(ckpt, tmp_path / "m.onnx", validate=False).path
    with pytest.raises(LTMPError, match="--device cpu: the reference here is ONNX Runtime"):
        validate([graph], graph, device="cpu")
    assert validate([graph], ckpt, device="cpu", images=4).ok
    with pytest.raises(LTMPError, match="--device: applies to a checkpoint, which PyTorch runs"):
        draw_decisions(str(graph), tmp_path / "out.png", ["digits:0"], device="cpu")
    assert draw_decisions(str(ckpt), tmp_path / "out.png", ["digits:0"], device="cpu") == [tmp_path / "out.png"]


def test_bench_device_picks_torch_cuda_s_gpu_and_cpu_leaves_it_out():
    from ltmp_deploy.bench.timers import torch_device, unavailable

    assert torch_device("torch-cpu", "cuda:3") == torch.device("cpu")  # torch-cpu is the CPU whatever --device says
    assert unavailable("torch-cuda", "cpu") == "--device cpu: PyTorch runs on the CPU here (torch-cpu)"
    assert unavailable("torch-cpu", "cpu") is None
    if not torch.cuda.is_available():
        assert unavailable("torch-cuda", None).startswith("no CUDA device")
        with pytest.raises(LTMPError, match="sees no CUDA device here"):
            unavailable("torch-cuda", "cuda:0")
