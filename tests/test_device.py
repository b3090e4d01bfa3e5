"""The device plumbing of the PyTorch side, tested on the CPU (tests/test_cuda.py runs it on a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_ltmp
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
    g = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g))


def test_evaluate_and_calibrate_on_a_named_device_give_what_the_default_gives():
    model = tiny_ltmp("threshold")
    default = evaluate(model, _data(), batch_size=5)
    named = evaluate(model, _data(), batch_size=5, device="cpu")
    assert default[:2] == named[:2] and (default[2].keeps == named[2].keeps).all()
    report = calibrate(tiny_ltmp("threshold"), _data(), evaluation=_data(), progress=False, device="cpu")
    assert report.schedule == calibrate(tiny_ltmp("threshold"), _data(), evaluation=_data(), progress=False).schedule
