"""Broken files for every command that reads one: seeded variants of good files the toolkit made.

From each good file (a tiny ViT's checkpoint, its ONNX export, a model description, weights, an
image, an audit log, INT8 calibration data, a bench and an accuracy result) come broken copies:
empty, truncated, random bytes, a damaged header, bit flips in the header, the right content under
a wrong name, and a file of another kind in its place. Each command runs in-process on each copy,
and must either succeed (a bit flip may hit a value that still reads) or refuse: exit code 2 (1 for
a parity failure with its report), one line on stderr naming the file, no traceback, and nothing
left in the output folder or the working folder. The front door's calls on the same files raise an
LTMPError with the CLI's message.

The quick run tries the variants that must be refused (they fail before any long work); the slow
run adds those that may succeed and run the whole command.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread, tiny_ltmp, tiny_vit
from PIL import Image

import ltmp_deploy as ld
from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError

SEED = 14
TRUNCATIONS = (10, 50, 99)  # percent of the file kept
BIT_FLIPS = 3  # variants, each flipping a few seeded bits in the header region
QUICK = ("empty", "truncated to 50%", "random bytes", "first 16 bytes overwritten")  # refused before long work
IMAGE_SIZE = 32  # tests/conftest.py's tiny ViT
ONE_ROUND = ("--batch", "1", "--rounds", "1", "--warmup", "0", "--backends", "onnxruntime-cpu", "--threads", "1")
LEARN = ("--target", "0.5", "--batch-size", "5", "--limit", "5")
DESCRIPTION = {
    "timm_model": "vit_tiny_patch16_224",
    "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 3, "num_classes": 5},
}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_torch_thread():
        yield


# -- the good files ------------------------------------------------------------------------------


class GoodFiles(dict):
    """One good file of each kind, made by the toolkit from the tiny ViT when first asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.rng = np.random.default_rng(SEED)

    def __missing__(self, kind: str) -> Path:
        if kind.startswith("calibration-"):
            from ltmp_deploy.export.calibration_data import write_calibration_data

            images = self.rng.standard_normal((4, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
            self.update({f"calibration-{k}": v for k, v in write_calibration_data(images, self.root).items()})
        else:
            self[kind] = getattr(self, "_" + kind)(self.root)
        return self[kind]

    def _checkpoint(self, root: Path) -> Path:
        from ltmp_deploy.ltmp.checkpoint import save_checkpoint

        return save_checkpoint(tiny_ltmp("threshold"), root / "model.safetensors")

    def _onnx(self, root: Path) -> Path:
        from ltmp_deploy.export.onnx_export import export_onnx

        return export_onnx(self["checkpoint"], root / "model.onnx", decisions=True, validate=False).path

    def _description(self, root: Path) -> Path:
        (root / "model.json").write_text(json.dumps(DESCRIPTION, indent=1) + "\n")
        return root / "model.json"

    def _weights(self, root: Path) -> Path:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tiny_vit().state_dict().items()}, str(root / "weights.safetensors"))
        return root / "weights.safetensors"

    def _other_checkpoint(self, root: Path) -> Path:
        """A toolkit checkpoint of another model: 3 classes."""
        from bench_runs import tiny_checkpoint

        (root / "other").mkdir(exist_ok=True)
        return tiny_checkpoint(root / "other", num_classes=3)

    def _other_weights(self, root: Path) -> Path:
        """timm weights of another width."""
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in tiny_vit(embed_dim=24).state_dict().items()}
        save_file(state, str(root / "other-weights.safetensors"))
        return root / "other-weights.safetensors"

    def _engine(self, root: Path) -> Path:
        """Bytes that open like a TensorRT engine (its plan magic): no TensorRT here builds a real one."""
        (root / "model.engine").write_bytes(b"ftrt" + self.rng.bytes(2000))
        return root / "model.engine"

    def _resume(self, root: Path) -> Path:
        """The resume state ``learn`` keeps beside its checkpoint, after one epoch."""
        (root / "learned").mkdir()
        argv = ["learn", str(self["checkpoint"]), "--data", str(self["data"]), *LEARN, "-o"]
        assert _cli([*argv, str(root / "learned" / "l.safetensors")]) == 0
        return root / "learned" / "l.safetensors.resume.pt"

    def _image(self, root: Path) -> Path:
        Image.fromarray(self.rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / "image.png")
        return root / "image.png"

    def _data(self, root: Path) -> Path:
        """An image folder of the tiny ViT's 5 classes, two images each."""
        for c in range(5):
            (root / "images" / f"class{c}").mkdir(parents=True)
            for i in range(2):
                pixels = self.rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / f"class{c}" / f"{i}.png")
        return root / "images"

    def _audit(self, root: Path) -> Path:
        audit = root / "audit.jsonl"
        argv = ["predict", str(self["onnx"]), str(self["image"]), "--no-progress", "--log-decisions", str(audit)]
        assert _cli(argv) == 0
        return audit

    def _bench(self, root: Path) -> Path:
        argv = ["bench", str(self["checkpoint"]), "--targets", "--no-threshold", *ONE_ROUND, "-o", str(root / "bench")]
        assert _cli(argv) == 0
        return root / "bench" / "bench.json"

    def _accuracy(self, root: Path) -> Path:
        from ltmp_deploy.report.accuracy import accuracy_document, variant_entry, write_accuracy

        runs = [{"seed": 0, "accuracy": 0.9, "flops_ratio": 1.0}]
        dataset = {"name": "random", "split": "test", "images": 8}
        doc = accuracy_document("vit_tiny", dataset, [variant_entry("unpatched", None, runs)])
        return write_accuracy(root / "accuracy.json", doc)


class Files(dict):
    """The good files but for the ones given."""

    def __init__(self, good: GoodFiles, **given: Path | None) -> None:
        super().__init__(given)
        self.good = good

    def __missing__(self, kind: str) -> Path:
        return self.good[kind]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> GoodFiles:
    return GoodFiles(tmp_path_factory.mktemp("fuzz-good"))


def _cli(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


# -- the broken variants -------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    data: bytes
    must_fail: bool  # False: a copy that may still read (bit flips, another name, another kind)
    suffix: str | None = None  # the file name's suffix, when not the good file's


def header_end(data: bytes) -> int:
    """Where the part of the file that says what it is ends: the safetensors JSON header, else 512 bytes."""
    if len(data) > 8 and data[8:9] == b"{":
        return min(len(data), 8 + int.from_bytes(data[:8], "little"))
    return min(len(data), 512)


def variants(data: bytes, rng: random.Random) -> list[Variant]:
    n = len(data)
    out = [Variant("empty", b"", True), Variant("1 byte", data[:1], True)]
    out += [Variant(f"truncated to {p}%", data[: n * p // 100], True) for p in TRUNCATIONS]
    out.append(Variant("random bytes", rng.randbytes(n), True))
    out.append(Variant("first 16 bytes overwritten", bytes(rng.randrange(256) for _ in range(16)) + data[16:], True))
    if n > 8 and data[8:9] == b"{":  # safetensors: its header length, too long and too short
        length = int.from_bytes(data[:8], "little")
        out.append(Variant("header length past the end", (n).to_bytes(8, "little") + data[8:], True))
        out.append(Variant("header length short by one", (length - 1).to_bytes(8, "little") + data[8:], True))
    elif data[:1] == b"\x08":  # ONNX: ir_version, the protobuf's first field, given another field's tag
        out.append(Variant("protobuf start damaged", b"\x0f\xff\xff" + data[3:], True))
    for i in range(BIT_FLIPS):
        flipped = bytearray(data)
        for _ in range(4):
            pos = rng.randrange(header_end(data))
            flipped[pos] ^= 1 << rng.randrange(8)
        out.append(Variant(f"bit flips #{i}", bytes(flipped), False))
    out.append(Variant("renamed", data, False, suffix=".bin"))
    return out


# -- the commands --------------------------------------------------------------------------------


Argv = Callable[[dict[str, Path], Path], list[str]]
Api = Callable[[dict[str, Path], Path], object]


@dataclass
class Target:
    """A command line with one file (``slot``) to break; ``api``: the front-door call doing the same."""

    name: str
    slot: str
    argv: Argv
    others: tuple[str, ...] = ()  # good files of other kinds to put in the slot (wrong kind)
    api: Api | None = None


def _s(p: Path) -> str:
    return str(p)


def _validate_api(f: dict[str, Path], out: Path) -> object:
    report = ld.validate(f["onnx"], against=f["checkpoint"], images=2, json_path=out / "parity.json")
    return report


def _predict_api(f: dict[str, Path], out: Path) -> object:
    with ld.Session(f["onnx"]) as session:
        return session.predict([f["image"]])


def _estimate_api(f: dict[str, Path], out: Path) -> object:
    from ltmp_deploy.runtime.estimate import estimate_file

    return estimate_file(f["bench"], 1.0)


def _report_api(f: dict[str, Path], out: Path) -> object:
    from ltmp_deploy.report.document import write_report

    return write_report(out / "report", f.get("bench_arg"), f.get("accuracy_arg"), (), variant="unpatched")


def _check_api(f: dict[str, Path], out: Path) -> object:
    from ltmp_deploy.export.trt_check import check_model

    return check_model(f["onnx"], "10.3")


def _inspect_api(slot: str) -> Api:
    def call(f: dict[str, Path], out: Path) -> object:
        from ltmp_deploy.runtime.inspection import inspect_file

        return inspect_file(f[slot])

    return call


CK, ONNX = ("onnx", "description", "image"), ("checkpoint", "description", "image")
TARGETS = [
    Target("patch", "description", lambda f, o: ["patch", _s(f["description"]), "-o", _s(o / "p.safetensors")],
           ("checkpoint", "onnx"), lambda f, o: ld.create_model(_s(f["description"]))),
    Target("patch", "weights", lambda f, o: ["patch", _s(f["description"]), "--weights", _s(f["weights"]), "-o",
                                             _s(o / "p.safetensors")],
           ("onnx", "description", "other_weights"),
           lambda f, o: ld.create_model(_s(f["description"]), weights=f["weights"])),
    Target("patch", "checkpoint", lambda f, o: ["patch", _s(f["description"]), "--reference-checkpoint",
                                                _s(f["checkpoint"]), "-o", _s(o / "p.safetensors")],
           ("onnx", "weights", "other_checkpoint"),
           lambda f, o: ld.create_model(_s(f["description"]), reference_checkpoint=f["checkpoint"])),
    Target("learn", "checkpoint", lambda f, o: ["learn", _s(f["checkpoint"]), "--data", _s(f["data"]), *LEARN,
                                                "-o", _s(o / "l.safetensors")], CK),
    Target("learn", "resume", lambda f, o: ["learn", _s(f["checkpoint"]), "--data", _s(f["data"]), *LEARN,
                                            "--epochs", "2", "--resume", "-o",
                                            _s(f["resume"].with_name("l.safetensors"))], ("checkpoint", "onnx")),
    Target("calibrate", "checkpoint", lambda f, o: ["calibrate", _s(f["checkpoint"]), "--flops-target", "0.5",
                                                    "--no-evaluate", "-o", _s(o / "c.safetensors")], CK),
    Target("export", "checkpoint", lambda f, o: ["export", _s(f["checkpoint"]), "--no-validate", "-o",
                                                 _s(o / "x.onnx")], CK,
           lambda f, o: ld.export_onnx(f["checkpoint"], o / "x.onnx", validate=False)),
    Target("check", "onnx", lambda f, o: ["check", _s(f["onnx"]), "--trt", "10.3"], ONNX, _check_api),
    Target("validate", "onnx", lambda f, o: ["validate", _s(f["onnx"]), "--against", _s(f["checkpoint"]),
                                             "--images", "2", "--json", _s(o / "parity.json")],
           ("description", "image", "engine"), _validate_api),
    Target("validate", "checkpoint", lambda f, o: ["validate", _s(f["onnx"]), "--against", _s(f["checkpoint"]),
                                                   "--images", "2", "--json", _s(o / "parity.json")],
           ("description", "image", "other_checkpoint"), _validate_api),
    Target("build", "onnx", lambda f, o: ["build", _s(f["onnx"]), "--preset", "datacenter", "-o",
                                          _s(o / "m.engine")], (*ONNX, "engine"),
           lambda f, o: ld.build(f["onnx"], o / "m.engine")),
    Target("build", "calibration-npy", lambda f, o: ["build", _s(f["onnx"]), "--preset", "datacenter",
                                                     "--precision", "int8", "--calibration",
                                                     _s(f["calibration-npy"]), "--print-trtexec", "-o",
                                                     _s(o / "m.engine")],
           ("onnx", "image", "calibration-polygraphy")),
    Target("build", "calibration-npz", lambda f, o: ["build", _s(f["onnx"]), "--preset", "datacenter",
                                                     "--precision", "int8", "--calibration",
                                                     _s(f["calibration-npz"]), "--print-trtexec", "-o",
                                                     _s(o / "m.engine")], ("checkpoint",)),
    Target("build", "calibration-polygraphy", lambda f, o: ["build", _s(f["onnx"]), "--preset", "datacenter",
                                                            "--precision", "int8", "--calibration",
                                                            _s(f["calibration-polygraphy"]), "--print-trtexec",
                                                            "-o", _s(o / "m.engine")], ("accuracy",)),
    Target("show", "checkpoint", lambda f, o: ["show", _s(f["checkpoint"]), _s(f["image"]), "-o", _s(o / "s.png")],
           ("description", "image", "accuracy")),
    Target("show", "onnx", lambda f, o: ["show", _s(f["onnx"]), _s(f["image"]), "-o", _s(o / "s.png")], ("engine",)),
    Target("show", "image", lambda f, o: ["show", _s(f["onnx"]), _s(f["image"]), "-o", _s(o / "s.png")],
           ("onnx", "checkpoint")),
    Target("show", "audit", lambda f, o: ["show", _s(f["audit"]), "--image", "0", "-o", _s(o / "s.png")], ()),
    Target("predict", "onnx", lambda f, o: ["predict", _s(f["onnx"]), _s(f["image"]), "--no-progress",
                                            "--log-decisions", _s(o / "a.jsonl")], (*ONNX[1:], "engine"), _predict_api),
    Target("predict", "image", lambda f, o: ["predict", _s(f["onnx"]), _s(f["image"]), "--no-progress",
                                             "--log-decisions", _s(o / "a.jsonl")], ("onnx", "checkpoint"),
           _predict_api),
    Target("inspect", "checkpoint", lambda f, o: ["inspect", _s(f["checkpoint"])], ("description", "image"),
           _inspect_api("checkpoint")),
    Target("inspect", "onnx", lambda f, o: ["inspect", _s(f["onnx"])], ("accuracy", "engine"), _inspect_api("onnx")),
    Target("bench", "checkpoint", lambda f, o: ["bench", _s(f["checkpoint"]), "--targets", "--no-threshold", *ONE_ROUND,
                                                "-o", _s(o / "b")],
           ("onnx", "image")),
    Target("bench", "weights", lambda f, o: ["bench", _s(f["description"]), "--weights", _s(f["weights"]),
                                             "--targets", "--no-threshold", *ONE_ROUND, "-o", _s(o / "b")],
           ("onnx", "other_weights")),
    Target("estimate", "bench", lambda f, o: ["estimate", _s(f["bench"]), "--price-per-hour", "1", "--json",
                                              _s(o / "e.json")], ("accuracy", "onnx"), _estimate_api),
    Target("report", "bench", lambda f, o: ["report", "--bench", _s(f["bench"]), "--headline", "unpatched", "-o",
                                            _s(o / "report")],
           ("accuracy", "checkpoint"), _report_api),
    Target("report", "accuracy", lambda f, o: ["report", "--accuracy", _s(f["accuracy"]), "--headline", "unpatched",
                                                "-o", _s(o / "report")],
           ("checkpoint", "image"), _report_api),
    Target("report", "image", lambda f, o: ["report", "--accuracy", _s(f["accuracy"]), "--headline", "unpatched",
                                            "--grid", _s(f["image"]), "-o", _s(o / "report")], ("onnx", "accuracy")),
]  # fmt: skip


def cases(target: Target, good: dict[str, Path], quick: bool) -> list[Variant]:
    rng = random.Random(f"{SEED}-{target.name}-{target.slot}")
    found = [Variant("good", good[target.slot].read_bytes(), False)]
    found += variants(good[target.slot].read_bytes(), rng)
    found += [Variant(f"{kind} in its place", good[kind].read_bytes(), False, good[kind].suffix) for kind in
              target.others]  # fmt: skip
    return [v for v in found if v.name in QUICK] if quick else found


# -- running one case ----------------------------------------------------------------------------


@dataclass
class Outcome:
    rc: int | None
    err: str
    out: str
    crash: str | None  # the exception main let through


def run_cli(argv: list[str], capsys) -> Outcome:
    capsys.readouterr()
    try:
        rc, crash = main(argv), None
    except SystemExit as exit_:
        rc, crash = exit_.code, None
    except Exception:  # noqa: BLE001  (what the test looks for)
        rc, crash = None, traceback.format_exc().strip().splitlines()[-1]
    captured = capsys.readouterr()
    return Outcome(rc, captured.err, captured.out, crash)


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def check_case(
    target: Target, variant: Variant, good: dict[str, Path], root: Path, capsys, good_rc: int | None
) -> tuple[list[str], int | None]:
    """What went wrong with one case (empty when it held the rules)."""
    case = root / f"{target.name}-{target.slot}-{variant.name}".replace(" ", "_").replace("%", "pc")
    inputs, out = case / "in", case / "out"
    inputs.mkdir(parents=True)
    out.mkdir()
    source = good[target.slot]
    broken = inputs / (source.stem + (variant.suffix or source.suffix))
    broken.write_bytes(variant.data)
    files = Files(good, **{target.slot: broken})
    files["bench_arg"] = broken if target.slot == "bench" else None
    files["accuracy_arg"] = broken if target.slot == "accuracy" else None
    with contextlib.chdir(case):
        result = run_cli(target.argv(files, out), capsys)
    problems = []
    if result.crash is not None:
        return [f"traceback: {result.crash}"], None
    lines = result.err.strip().splitlines()
    if "Traceback" in result.err + result.out:
        problems.append("a traceback in its output")
    if result.rc == 0:
        if variant.must_fail:
            problems.append("exit 0 on a file that cannot be good")
    elif result.rc in (1, 2):
        line = lines[-1] if lines else ""
        if len(lines) != 1 and not (result.rc == 1 and result.out):
            problems.append(f"{len(lines)} lines on stderr: {result.err.strip()[:300]!r}")
        if result.rc == 2 and broken.name not in line:
            problems.append(f"the line does not name {broken.name}: {line!r}")
        if result.rc == 2 and listing(out):
            problems.append(f"left in the output folder: {listing(out)}")
    else:
        problems.append(f"exit code {result.rc}: {result.err.strip()[-300:]!r}")
    made = set(listing(case)) - {"in", "out", f"in/{broken.name}"}
    stray = sorted(p for p in made if result.rc != 0 and not p.startswith("out/") or Path(p).name.startswith("."))
    if stray:
        problems.append(f"stray files: {stray}")
    if result.rc == 2:
        problems += _api_problems(target, files, case, lines[-1] if lines else "")
    if variant.name == "renamed" and result.rc != good_rc:
        problems.append(f"exit {result.rc} under another name, {good_rc} under its own")
    return problems, result.rc


def _api_problems(target: Target, files: dict[str, Path], case: Path, line: str) -> list[str]:
    """The front door's call on the same files: an LTMPError with the CLI's message."""
    if target.api is None:
        return []
    api_out = case.with_name(case.name + "-api")
    api_out.mkdir()
    message = line.split(": error: ", 1)[-1]
    try:
        target.api(files, api_out)
    except LTMPError as err:
        if str(err) != message:
            return [f"the API says {str(err)!r}, the CLI {message!r}"]
        if listing(api_out):
            return [f"the API left {listing(api_out)}"]
        return []
    except Exception as err:  # noqa: BLE001
        return [f"the API raised {type(err).__name__}: {str(err)[:200]}"]
    return [f"the API succeeded where the CLI said {message!r}"]


def run_target(target: Target, good: dict[str, Path], root: Path, capsys, quick: bool) -> None:
    failures, good_rc = [], None
    tried = cases(target, good, quick)
    for variant in tried:
        problems, rc = check_case(target, variant, good, root, capsys, good_rc)
        good_rc = rc if variant.name == "good" else good_rc
        failures += [f"{target.name} {target.slot} [{variant.name}]: {p}" for p in problems]
    assert not failures, f"{len(failures)} of {len(tried)} cases broke the rules:\n" + "\n".join(failures)


def _id(target: Target) -> str:
    return f"{target.name}-{target.slot}"


def _quick(target: Target) -> bool:
    return not {"bench", "resume"} & {target.slot, *target.others}  # made by a bench or a learning run


@pytest.mark.parametrize("target", [t for t in TARGETS if _quick(t)], ids=_id)
def test_broken_files_are_refused_with_one_line(target, good, tmp_path, capsys):
    run_target(target, good, tmp_path, capsys, quick=True)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=_id)
def test_every_broken_variant_holds_the_rules(target, good, tmp_path, capsys):
    run_target(target, good, tmp_path, capsys, quick=False)


def refused_in_one_line(good_file: Path, tmp_path: Path, use) -> None:
    """Every broken variant of ``good_file`` either works with ``use(path)`` or fails with a one-line
    LTMPError naming the file; variants that must fail do."""
    for variant in variants(good_file.read_bytes(), random.Random(SEED)):
        path = tmp_path / f"{variant.name.replace(' ', '_').replace('%', 'pc')}{good_file.suffix}"
        path.write_bytes(variant.data)
        try:
            use(path)
        except LTMPError as err:
            assert path.name in str(err) and "\n" not in str(err), (variant.name, str(err))
        else:
            assert not variant.must_fail, variant.name


def test_the_front_door_load_refuses_broken_checkpoints(good, tmp_path):
    refused_in_one_line(good["checkpoint"], tmp_path, ld.load)
    for kind in ("onnx", "description", "image", "accuracy"):
        with pytest.raises(LTMPError, match=good[kind].name):
            ld.load(good[kind])
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_front_door_session_refuses_broken_graphs(good, tmp_path):
    def predict(path: Path) -> None:
        with ld.Session(path) as session:
            session.predict([good["image"]])

    refused_in_one_line(good["onnx"], tmp_path, predict)


def test_build_without_tensorrt_says_so_in_one_line(good, tmp_path, capsys):
    from ltmp_deploy.runtime.engine import tensorrt_version

    if tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here: build gets past this point")
    result = run_cli(["build", str(good["onnx"]), "--preset", "datacenter", "-o", str(tmp_path / "m.engine")], capsys)
    assert result.rc == 2 and result.crash is None, result
    (line,) = result.err.strip().splitlines()
    assert "TensorRT is not installed" in line and good["onnx"].name in line, line
    assert listing(tmp_path) == []
