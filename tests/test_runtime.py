"""The runtime Session: ONNX Runtime and PyTorch backends for real, TensorRT where it is installed,
one clear error for each kind of bad input, no torch/timm on the runtime side (its Python: test_field_python.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_models import exported, one_torch_thread

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.formats import ENGINE_MAGIC
from ltmp_deploy.runtime import Session
from ltmp_deploy.runtime.session import topk
from ltmp_deploy.runtime.trt.engine import check_compatible, read_sidecar

REPO = Path(__file__).resolve().parents[1]
NO_TENSORRT = "TensorRT is not installed here (pip's tensorrt is a stub that downloads from NVIDIA)"


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_torch_thread():
        yield


def batch(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def strip(row):
    valid = np.flatnonzero(row != -1)
    return row[: valid[-1] + 1] if len(valid) else row[:0]


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
def test_onnxruntime_session_matches_the_torch_session_at_any_batch(mode):
    files = exported(mode)
    with Session(files.onnx) as ort_s, Session(files.checkpoint) as torch_s:
        assert ort_s.backend == "onnxruntime" and torch_s.backend == "torch"
        assert ort_s.providers == ["CPUExecutionProvider"]
        assert ort_s.input_shape == (None, 3, 32, 32) and ort_s.batch_range == (1, None)
        assert ort_s.metadata["mode"] == mode and ort_s.metadata["num_classes"] == 5
        assert torch_s.metadata["mode"] == mode and torch_s.metadata["data_config"] == ort_s.metadata["data_config"]
        assert ort_s.has_decisions and torch_s.has_decisions
        for n in (1, 3, 5):
            x = batch(n, seed=n)
            a, b = ort_s.run(x, k=3), torch_s.run(x, k=3)
            assert a.logits.shape == (n, 5) and a.topk_indices.shape == (n, 3)
            assert np.abs(a.logits - b.logits).max() <= 1e-4
            np.testing.assert_array_equal(a.topk_indices, b.topk_indices)
            assert len(a.decisions) == len(b.decisions) == 3
            for da, db in zip(a.decisions, b.decisions):
                np.testing.assert_array_equal(da.kept, db.kept)
                np.testing.assert_array_equal(da.merge_dst, db.merge_dst)


def test_predict_takes_pil_images_paths_and_arrays(tmp_path):
    rng = np.random.default_rng(3)
    pictures = [rng.integers(0, 256, (40 + 4 * i, 36, 3), dtype=np.uint8) for i in range(3)]
    paths = []
    for i, p in enumerate(pictures):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(p).save(paths[-1])
    with Session(exported("threshold").onnx) as s:
        x = s.preprocess([Image.fromarray(p) for p in pictures])
        assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
        expected = s.run(x)
        for images in (paths, [str(p) for p in paths], pictures):
            got = s.predict(images)
            np.testing.assert_array_equal(got.logits, expected.logits)
        one = s.predict(paths[0], k=2)
        assert one.logits.shape == (1, 5) and one.topk_indices.shape == (1, 2)


def test_fixed_batch_graph_pads_in_predict_and_refuses_other_batches_in_run(tmp_path):
    """batch=2, threshold mode with decisions: 5 images run as 2+2+1(padded); decisions re-padded."""
    files = exported("threshold", batch=2)
    x = batch(5, seed=7)
    with Session(files.onnx) as s, Session(files.checkpoint) as ref:
        assert s.input_shape == (2, 3, 32, 32) and s.batch_range == (2, 2)
        with pytest.raises(LTMPError, match=r"expected shape \(2, 3, 32, 32\), got \(3, 3, 32, 32\)"):
            s.run(x[:3])
        pictures = [(np.clip(img.transpose(1, 2, 0) * 40 + 128, 0, 255)).astype(np.uint8) for img in x]
        got = s.predict(pictures)
        want = ref.predict(pictures)
    assert got.logits.shape == (5, 5) and np.abs(got.logits - want.logits).max() <= 1e-4
    for dg, dw in zip(got.decisions, want.decisions):
        for i in range(5):  # widths follow each batch's largest count: compare image by image
            np.testing.assert_array_equal(strip(dg.kept[i]), strip(dw.kept[i]))
            np.testing.assert_array_equal(strip(dg.merge_dst[i]), strip(dw.merge_dst[i]))


def test_fp16_graph_takes_fp16_batches():
    files = exported("fixed", decisions=False, fp16=True)
    pictures = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(4)]
    with Session(files.onnx) as s, Session(files.checkpoint) as ref:
        assert s.input_dtype == np.float16 and s.metadata["precision"] == "fp16" and not s.has_decisions
        x = s.preprocess(pictures)
        assert x.dtype == np.float16
        with pytest.raises(LTMPError, match="expected dtype float16, got float32"):
            s.run(x.astype(np.float32))
        got, want = s.predict(pictures), ref.predict(pictures)
    assert got.decisions is None and got.logits.dtype == np.float32
    np.testing.assert_array_equal(got.top1, want.top1)
    assert np.abs(got.logits - want.logits).max() <= 5e-2


def test_topk_is_sorted_with_probabilities_and_clipped_to_the_classes():
    logits = np.array([[1.0, 3.0, 3.0, -1.0]], dtype=np.float32)
    idx, probs = topk(logits, 10)
    assert idx.tolist() == [[1, 2, 0, 3]]  # ties to the lower index
    assert probs.shape == (1, 4) and abs(probs.sum() - 1) < 1e-6 and probs[0, 0] == probs[0, 1]


# -- bad input: one clear line each ---------------------------------------------------------


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_onnx_is_refused_naming_the_file(tmp_path, damage):
    data = exported("fixed").onnx.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(LTMPError) as err:
        Session(bad)
    assert str(bad) in one_line(err)


def test_wrong_shape_dtype_nan_and_inf_are_refused():
    with Session(exported("fixed").onnx) as s:
        cases = [
            (batch(2)[:, :, :16], r"expected shape \(N, 3, 32, 32\) with N from 1, got \(2, 3, 16, 32\)"),
            (batch(2)[0], r"expected shape .* got \(3, 32, 32\)"),
            (batch(2).astype(np.float64), "expected dtype float32, got float64"),
            ((batch(2) * 50).astype(np.uint8), "expected dtype float32, got uint8"),
            ([[0.0]], "expected a numpy array"),
            (np.zeros((0, 3, 32, 32), np.float32), r"got \(0, 3, 32, 32\)"),
        ]
        nan = batch(3)
        nan[1, 0, 4, 4] = np.nan
        inf = batch(2)
        inf[0, 2, 0, 0] = np.inf
        cases += [(nan, "NaN values in image 1"), (inf, "infinite values in image 0")]
        for x, pattern in cases:
            with pytest.raises(LTMPError, match=pattern) as err:
                s.run(x)
            assert str(s.path) in one_line(err)


def test_an_image_file_that_is_not_an_image(tmp_path):
    fake = tmp_path / "cat.png"
    fake.write_text("not a picture")
    with Session(exported("fixed").onnx) as s, pytest.raises(LTMPError, match="not an image") as err:
        s.predict([fake])
    assert str(fake) in one_line(err)


def test_unknown_file_type_wrong_backend_and_missing_provider(tmp_path):
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(LTMPError, match="unknown file type"):
        Session(other)
    with pytest.raises(LTMPError, match="ltmp-deploy build"):
        Session(exported("fixed").onnx, backend="tensorrt")
    with pytest.raises(LTMPError, match="onnxruntime-gpu"):
        Session(exported("fixed").onnx, providers=["CUDAExecutionProvider"])
    with pytest.raises(LTMPError, match="no such file"):
        Session(tmp_path / "missing.onnx")


# -- TensorRT engines ---------------------------------------------------------------------------


def test_engine_sidecar_names_version_and_gpu_mismatches(tmp_path):
    """The comparison itself is plain Python; TensorRT is not involved (nor imitated)."""
    engine = tmp_path / "m.engine"
    sidecar = {"tensorrt_version": "10.3.0", "gpu": "Orin", "precision": "fp16"}
    check_compatible(engine, sidecar, "10.3.0", "Orin")
    check_compatible(engine, sidecar, "10.3.0", None)  # the GPU cannot be read: TensorRT will judge
    check_compatible(engine, {**sidecar, "gpu": "NVIDIA Orin"}, "10.3.0", "orin")
    with pytest.raises(
        LTMPError,
        match=r"built with TensorRT 10\.3\.0, but TensorRT 8\.6\.2 is installed.*ltmp-deploy build. on this device",
    ) as err:
        check_compatible(engine, sidecar, "8.6.2", "Orin")
    assert str(engine) in one_line(err)
    with pytest.raises(
        LTMPError, match=r"built for the GPU Orin, but this device is NVIDIA H100.*ltmp-deploy build. on this device"
    ):
        check_compatible(engine, sidecar, "10.3.0", "NVIDIA H100")
    check_compatible(engine, {**sidecar, "hardware_compatibility": "ampere+"}, "10.3.0", "NVIDIA H100")
    (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
    assert read_sidecar(engine) == sidecar
    (tmp_path / "m.engine.json").write_text("{truncated")
    with pytest.raises(LTMPError, match="sidecar is not readable JSON"):
        read_sidecar(engine)


def test_engine_without_tensorrt_says_what_to_install(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: the engine tests below run instead")
    engine = tmp_path / "m.engine"
    engine.write_bytes(ENGINE_MAGIC + b"\0" * 60)  # an engine's header: files are known by content
    with pytest.raises(LTMPError, match="not installed here.*install TensorRT") as err:
        Session(engine)
    assert str(engine) in one_line(err)


def test_truncated_engine_is_refused(tmp_path):
    pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    files = exported("fixed")
    profile = Profile().add("images", (1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))
    data = EngineBytesFromNetwork(NetworkFromOnnxPath(str(files.onnx)), CreateConfig(profiles=[profile]))()
    engine = tmp_path / "m.engine"
    engine.write_bytes(bytes(data))
    with Session(engine) as s:  # the real engine runs and matches ONNX Runtime
        assert s.backend == "tensorrt" and s.batch_range == (1, 4)
        x = batch(3)
        with Session(files.onnx) as ref:
            assert np.abs(s.run(x).logits - ref.run(x).logits).max() <= 1e-3
    engine.write_bytes(bytes(data)[: len(data) // 2])
    with pytest.raises(LTMPError, match="cannot deserialize this engine") as err:
        Session(engine)
    assert "ltmp-deploy build" in one_line(err)


# -- a field device: no torch, no timm, no onnx -------------------------------------------------

BLOCKED = """
import sys
for name in ("torch", "timm", "onnx", "torchvision", "sklearn"):
    sys.modules[name] = None  # `import torch` now raises ImportError
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", BLOCKED + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def test_runtime_runs_an_onnx_file_end_to_end_without_torch_or_timm(tmp_path):
    files = exported("threshold")
    picture = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(picture)
    with Session(files.onnx) as s:
        expected = s.predict([picture]).logits
    np.save(tmp_path / "expected.npy", expected)
    done = run_python(f"""
        import numpy as np
        import ltmp_deploy.runtime
        from ltmp_deploy.runtime import Session
        import ltmp_deploy.runtime.session, ltmp_deploy.runtime.parity.validate
        from ltmp_deploy.errors import LTMPError

        s = Session({str(files.onnx)!r})
        got = s.predict([{str(picture)!r}])
        assert np.abs(got.logits - np.load({str(tmp_path / "expected.npy")!r})).max() <= 1e-6
        assert got.decisions is not None and len(got.decisions) == 3
        # parity on a device without torch: the graph against itself through Polygraphy's runners
        report = ltmp_deploy.runtime.parity.validate.validate(
            [{str(files.onnx)!r}], against={str(files.onnx)!r}, images=4
        )
        assert report.ok, report.summary()
        try:
            Session({str(files.checkpoint)!r})
        except LTMPError as err:
            assert 'pip install "ltmp-deploy[full' in str(err) and len(str(err).splitlines()) == 1, err
        else:
            raise AssertionError("a checkpoint opened without torch")
        leaked = [m for m in ("torch", "timm", "onnx") if sys.modules.get(m) is not None]
        assert not leaked, leaked
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_validating_against_a_checkpoint_without_torch_says_what_to_pip_install():
    files = exported("fixed")
    done = run_python(f"""
        from ltmp_deploy.cli import main
        print("exit", main(["validate", {str(files.onnx)!r}, "--against", {str(files.checkpoint)!r}]))
    """)
    assert "exit 2" in done.stdout and 'pip install "ltmp-deploy[full' in done.stderr, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_missing_onnxruntime_says_what_to_pip_install():
    done = run_python(f"""
        sys.modules["onnxruntime"] = None
        from ltmp_deploy.runtime import Session
        from ltmp_deploy.errors import LTMPError
        try:
            Session({str(exported("fixed").onnx)!r})
        except LTMPError as err:
            print(err)
    """)
    assert "pip install onnxruntime" in done.stdout and "onnxruntime-gpu" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("which", ["onnx", "checkpoint"])
def test_a_session_shared_by_8_threads_gives_the_serial_results(which):
    from concurrent.futures import ThreadPoolExecutor

    files = exported("threshold")
    inputs = [batch(1 + i % 3, seed=i) for i in range(8)]
    calls = 200 if which == "onnx" else 25
    with Session(getattr(files, which)) as session:
        serial = [session.run(x, k=3) for x in inputs]

        def worker(i: int) -> bool:
            for _ in range(calls):
                got = session.run(inputs[i], k=3)
                if not (
                    np.array_equal(got.logits, serial[i].logits)
                    and all(np.array_equal(a.kept, b.kept) for a, b in zip(got.decisions, serial[i].decisions))
                ):
                    return False
            return True

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(worker, range(8)))
