"""One runner contract: a Session (so predict), validate and bench open the same file on the same Polygraphy
runner class, and bench's timed call computes what the Session returns. Real files, real runners."""

from __future__ import annotations

import numpy as np
import pytest
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from runtime_models import exported, one_torch_thread

from ltmp_deploy.bench.timers import close_targets, open_targets, timed_calls
from ltmp_deploy.bench.variants import Variant
from ltmp_deploy.export.checkpoint_parity import validate_checkpoint
from ltmp_deploy.export.reference import torch_target
from ltmp_deploy.export.runner import LTMPTorchRunner
from ltmp_deploy.ltmp.checkpoint import load_checkpoint, read_metadata
from ltmp_deploy.runtime import Session
from ltmp_deploy.runtime.parity.validate import open_target, validate


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_torch_thread():
        yield


def images(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_a_graph_runs_on_one_runner_class_in_session_validate_and_bench(tmp_path):
    graph = exported("threshold").onnx
    x = images(3)
    with Session(graph) as session:
        runner_class = type(session.runner)
        expected = session.run(x)
        name = session.runner.name
    assert issubclass(runner_class, OnnxrtRunner)

    target = open_target(graph)  # what validate opens each file with
    assert type(target.runner) is runner_class and target.runner.name == name
    report = validate([graph], against=graph, images=4)
    assert report.ok and report.reference == name  # the reference keeps the opener's name; the file gets a number

    targets, skipped = open_targets("onnxruntime-cpu", None, [], {"graph": graph}, tmp_path, [3], threads=1)
    try:
        assert not skipped and type(targets["graph"].runner) is runner_class and targets["graph"].runner.name == name
        timed = timed_calls(targets, [], x)["graph"]()  # the very call bench times
    finally:
        close_targets(targets)
    np.testing.assert_array_equal(timed["logits"], expected.logits)
    np.testing.assert_array_equal(timed["block0_kept"], expected.decisions[0].kept)


def test_a_checkpoint_runs_on_the_torch_runner_in_session_validate_and_bench(tmp_path):
    files = exported("fixed")
    x = images(2)
    with Session(files.checkpoint) as session:
        runner_class = type(session.runner)
        expected = session.run(x).logits
    assert runner_class is LTMPTorchRunner and issubclass(runner_class, BaseRunner)

    reference = torch_target(files.checkpoint, read_metadata(files.checkpoint), None)  # validate's reference
    assert type(reference.runner) is runner_class
    report = validate_checkpoint(files.checkpoint, [files.onnx], images=4, open_file=open_target)
    assert report.ok and report.reference == reference.runner.name

    model = load_checkpoint(files.checkpoint)
    own = Variant("ltmp-fixed", "own", model.ltmp.mode, model.ltmp.schedule, None, 1.0, 0.0)
    targets, skipped = open_targets("torch-cpu", model, [own], {}, tmp_path, [2], threads=1)
    try:
        assert not skipped and type(targets[own.name].runner) is runner_class
        timed = timed_calls(targets, [own], x)[own.name]()
    finally:
        close_targets(targets)
    assert list(timed) == ["logits"]  # bench times the plain forward: no decisions recorded
    np.testing.assert_allclose(timed["logits"], expected, rtol=0, atol=1e-6)
