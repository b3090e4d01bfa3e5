"""The cost model (measured, written, read, refused) and latency-aware calibration with it."""

import json

import numpy as np
import pytest
import torch
from conftest import one_torch_thread, tiny_ltmp
from torch.utils.data import TensorDataset

from ltmp_deploy.calibration.calibrate import calibrate, schedule_from_counts
from ltmp_deploy.calibration.latency import latency_schedule, merge_shares
from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.checkpoint import save_checkpoint
from ltmp_deploy.ltmp.flops import model_dims, schedule_flops
from ltmp_deploy.ltmp.schedule import Schedule
from ltmp_deploy.runtime.cost_model import SCHEMA, CostModel, check_cost_model, read_cost_model


def synthetic_cost(num_tokens=17, dim=48, extra=0.5, batches=(1,), merge_extra=None):
    """Blocks linear in their tokens; every reducing block adds ``extra`` ms (one that only merges
    ``merge_extra``, when given: files measured before it was timed lack it)."""
    tokens = list(range(2, num_tokens + 1))
    return {
        "schema": SCHEMA,
        "model": {"num_tokens": num_tokens, "num_prefix": 1, "depth": 3, "dim": dim},
        "backend": "onnxruntime-cpu",
        "provider": "CPUExecutionProvider",
        "threads": 1,
        "batches": [
            {
                "batch": b,
                "call_ms": 0.01,
                "tokens": tokens,
                "block_ms": [0.1 + 0.01 * b * n for n in tokens],
                "mlp_ms": [0.005 * b * n for n in tokens],
                "reduce_tokens": [2, num_tokens],
                "fixed_extra_ms": [extra, extra],
                "threshold_extra_ms": [2 * extra, 2 * extra],
                **({} if merge_extra is None else {"merge_extra_ms": [merge_extra, merge_extra]}),
            }
            for b in batches
        ],
    }


@pytest.fixture(scope="module")
def measured():
    from ltmp_deploy.bench.cost import measure_cost_model

    with one_torch_thread():
        return measure_cost_model(
            tiny_ltmp(), batches=(1, 2), step=8, reduce_step=8, rounds=1, repeats=1, progress=False
        )


def test_a_measured_cost_model_is_written_and_read_back(measured, tmp_path):
    assert [e["batch"] for e in measured["batches"]] == [1, 2]
    assert measured["model"]["num_tokens"] == 17 and measured["threads"] == 1
    entry = measured["batches"][0]
    assert entry["tokens"][-1] == 17 and len(entry["block_ms"]) == len(entry["tokens"])
    path = tmp_path / "cost.json"
    path.write_text(json.dumps(measured))
    cost = read_cost_model(path)
    assert cost.batches == [1, 2]
    assert cost.block_ms(1, 17, 17, None) >= 0.0
    assert all(len(e["merge_extra_ms"]) == len(e["reduce_tokens"]) for e in measured["batches"])
    assert cost.schedule_ms(2, 17, (0, 0, 0), (17, 17, 17)) == pytest.approx(3 * cost.block_ms(2, 17, 17, None))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: d.update(schema="ltmp-deploy-bench/1"), "not an ltmp-deploy cost model"),
        (lambda d: d["batches"][0]["block_ms"].pop(), "values for"),
        (lambda d: d["batches"][0]["tokens"].reverse(), "must rise"),
        (lambda d: d["batches"].append(dict(d["batches"][0])), "given twice"),
        (lambda d: d["batches"][0].pop("mlp_ms"), r"\$\.batches\[0\]\.mlp_ms: missing"),
        (lambda d: d["batches"][0]["block_ms"].__setitem__(0, -1.0), "out of range"),
        (lambda d: d.update(backend="torch-cpu"), r"\$\.backend"),
    ],
)
def test_a_damaged_cost_model_is_refused_in_one_line_naming_the_file(tmp_path, damage, message):
    doc = synthetic_cost()
    damage(doc)
    path = tmp_path / "cost.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LTMPError, match=message) as err:
        read_cost_model(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_the_search_meets_the_flops_and_reduces_in_fewer_blocks_when_reducing_is_dear():
    model = tiny_ltmp()  # 17 tokens, 3 blocks
    keeps = np.array([[13, 10, 7], [12, 9, 6], [14, 11, 8]])
    merges = keeps * 0 + 2
    counted = schedule_from_counts(model, merges, keeps, "mean")
    target = schedule_flops(model, counted).ratio
    cheap = latency_schedule(model, merges, keeps, CostModel(synthetic_cost(extra=0.0)), 1, target, 0.0)
    dear = latency_schedule(model, merges, keeps, CostModel(synthetic_cost(extra=5.0)), 1, target, 0.0)
    for choice in (cheap, dear):
        choice.schedule.validate(3, 17, 1)
        assert choice.flops_ratio <= target + 1e-9
        assert choice.flops_ratio == pytest.approx(schedule_flops(model, choice.schedule).ratio)
        assert all(k >= int(np.floor(np.quantile(keeps[:, i], 0.0))) for i, k in enumerate(choice.schedule.keeps))

    def reducing(s: Schedule) -> int:
        n, count = 17, 0
        for k in s.keeps:
            count, n = count + (k != n), k
        return count

    assert reducing(dear.schedule) < reducing(counted) <= 3
    assert dear.predicted_ms < CostModel(synthetic_cost(extra=5.0)).schedule_ms(1, 17, counted.merges, counted.keeps)


def test_each_block_splits_what_it_removes_as_the_thresholds_did_there_and_merging_alone_is_cheaper():
    model = tiny_ltmp()  # 17 tokens, 3 blocks, one prefix token
    keeps = np.array([[13, 10, 7], [12, 9, 6], [14, 11, 8]])
    merges = np.array([[4, 1, 3], [5, 1, 3], [3, 1, 3]])  # blocks 0 and 2 only merge, block 1 mostly prunes
    dims = model_dims(model)
    assert merge_shares(dims, merges, keeps) == pytest.approx([1.0, 1 / 3, 1.0])
    target = schedule_flops(model, schedule_from_counts(model, merges, keeps, "mean")).ratio
    both = CostModel(synthetic_cost(extra=1.0, merge_extra=1.0))
    choice = latency_schedule(model, merges, keeps, both, 1, target, 0.0)
    n = 17
    for i, (r, k) in enumerate(zip(choice.schedule.merges, choice.schedule.keeps)):
        if i != 1 and k < n:
            assert r == n - k, f"block {i} should only merge: {choice.schedule}"
        n = k
    assert CostModel(synthetic_cost(extra=1.0)).schedule_ms(1, 17, (4,), (13,)) == pytest.approx(
        both.schedule_ms(1, 17, (4,), (13,))
    )
    cheap = CostModel(synthetic_cost(extra=1.0, merge_extra=0.1))
    assert cheap.schedule_ms(1, 17, (4,), (13,)) == pytest.approx(both.schedule_ms(1, 17, (4,), (13,)) - 0.9)
    assert cheap.schedule_ms(1, 17, (4,), (12,)) == pytest.approx(both.schedule_ms(1, 17, (4,), (12,)))
    faster = latency_schedule(model, merges, keeps, cheap, 1, target, 0.0)
    assert faster.predicted_ms <= choice.predicted_ms - 0.9 + 1e-9


def test_the_search_refuses_a_cost_model_of_another_model():
    model = tiny_ltmp()
    keeps = np.array([[13, 10, 7]])
    with pytest.raises(LTMPError, match="measured on 3 blocks of 197 tokens"):
        latency_schedule(model, keeps * 0, keeps, CostModel(synthetic_cost(num_tokens=197)), 1, 0.9, 0.0)


def test_calibrate_with_a_cost_model_keeps_a_valid_schedule_within_the_counted_flops():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 5, (24,), generator=g))
    plain = calibrate(tiny_ltmp(), data, progress=False)
    model = tiny_ltmp()
    report = calibrate(model, data, progress=False, cost=CostModel(synthetic_cost(extra=5.0)))
    assert report.latency is not None and report.latency.flops_schedule == plain.schedule
    report.schedule.validate(3, 17, 1)
    assert model.ltmp.mode == "fixed" and model.ltmp.schedule == report.schedule
    assert report.fixed_flops <= plain.fixed_flops + 1e-9
    assert "latency-aware" in report.summary()


def test_calibrate_cli_refuses_a_bad_cost_file_before_reading_images(tmp_path, capsys):
    ckpt = tmp_path / "learned.safetensors"
    save_checkpoint(tiny_ltmp(), ckpt)
    bad = tmp_path / "cost.json"
    bad.write_text(json.dumps({"schema": SCHEMA}))
    code = main(["calibrate", str(ckpt), "--cost", str(bad), "-o", str(tmp_path / "fixed.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "$.model: missing" in err
    assert not (tmp_path / "fixed.safetensors").exists()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(synthetic_cost()))
    code = main(
        ["calibrate", str(ckpt), "--cost", str(good), "--cost-batch", "8", "-o", str(tmp_path / "f.safetensors")]
    )
    assert code == 2 and "not --cost-batch 8" in capsys.readouterr().err


def test_check_cost_model_accepts_the_synthetic_document():
    assert check_cost_model(synthetic_cost(batches=(1, 8)), "x")["batches"][1]["batch"] == 8
