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
            from ltmp_deploy.runtime.int8.calibration_data import write_calibration_data

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
    from ltmp_deploy.runtime.trt.parser_check import check_model

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
                                             "--images", "2", "-o", _s(o / "parity.json")],
           ("description", "image", "engine"), _validate_api),
    Target("validate", "checkpoint", lambda f, o: ["validate", _s(f["onnx"]), "--against", _s(f["checkpoint"]),
                                                   "--images", "2", "-o", _s(o / "parity.json")],
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
    Target("estimate", "bench", lambda f, o: ["estimate", _s(f["bench"]), "--price-per-hour", "1", "-o",
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
    for kind in ("onnx", "image", "accuracy"):
        with pytest.raises(LTMPError, match=good[kind].name):
            ld.load(good[kind])
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_front_door_session_refuses_broken_graphs(good, tmp_path):
    def predict(path: Path) -> None:
        with ld.Session(path) as session:
            session.predict([good["image"]])

    refused_in_one_line(good["onnx"], tmp_path, predict)


def test_build_without_tensorrt_says_so_in_one_line(good, tmp_path, capsys):
    from ltmp_deploy.runtime.trt.engine import tensorrt_version

    if tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here: build gets past this point")
    result = run_cli(["build", str(good["onnx"]), "--preset", "datacenter", "-o", str(tmp_path / "m.engine")], capsys)
    assert result.rc == 2 and result.crash is None, result
    (line,) = result.err.strip().splitlines()
    assert "TensorRT is not installed" in line and good["onnx"].name in line, line
    assert listing(tmp_path) == []


# -- files the toolkit wrote, broken field by field --------------------------------------------------
#
# The byte-level variants above say whether a file is one at all. These break a good JSON document
# (an audit log line, a bench, accuracy or estimate result, an engine sidecar, the metadata of a
# checkpoint or a graph) one field at a time: the field missing, null, of another type, out of
# range, an extra field beside it; the document truncated; and the same document spelled another
# way (spaces, indentation, key order), which must still load. Every command and front-door call
# that reads the format runs on each, and must work or refuse in one line naming the file, exit 2,
# nothing written.

EXTRA = "zz_extra_field"
SPELLINGS = {  # valid JSON spellings of the same document: each must load as the original does
    "re-serialised with spaces": {"separators": (", ", ": ")},
    "re-serialised indented and sorted": {"indent": 4, "sort_keys": True},
    "re-serialised compact": {"separators": (",", ":")},
}
JSON_COUNTS: dict[str, list[int]] = {}  # target -> [cases, failures]


@dataclass
class DocVariant:
    name: str
    text: str | None  # the whole file's text (None: from ``doc``)
    doc: object = None
    must_load: bool = False


def _paths(node: object, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    """Every field of ``node`` (keys of objects, the first item of lists), depth first."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            if depth < 4:
                found += _paths(value, (*prefix, key), depth + 1)
    elif isinstance(node, list) and node and isinstance(node[0], (dict, list)):
        found.append((*prefix, 0))
        found += _paths(node[0], (*prefix, 0), depth + 1)
    return found


def _get(doc: object, path: tuple) -> object:
    for p in path:
        doc = doc[p]
    return doc


def _replaced(doc: object, path: tuple, value: object, delete: bool = False) -> object:
    new = json.loads(json.dumps(doc))
    parent = _get(new, path[:-1])
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return new


def _wrong_type(value: object) -> object:
    if isinstance(value, bool) or value is None:
        return "yes"
    if isinstance(value, (int, float)):
        return "12"
    if isinstance(value, str):
        return {"text": value}
    if isinstance(value, list):
        return {"0": value[:1]}
    return ["not", "an", "object"]


def _out_of_range(value: object) -> object:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return -1 if value else -3.5
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return [0] * len(value) if any(value) else [-1] * len(value)
    return None


def doc_variants(doc: object, dump: Callable[[object], str]) -> list[DocVariant]:
    """The broken and the re-spelled variants of ``doc``; ``dump`` writes one as the file's text."""
    out = []
    for path in _paths(doc):
        field = ".".join(str(p) for p in path)
        value = _get(doc, path)
        if isinstance(path[-1], str):
            out.append(DocVariant(f"{field} missing", None, _replaced(doc, path, None, delete=True)))
        out.append(DocVariant(f"{field} null", None, _replaced(doc, path, None)))
        out.append(DocVariant(f"{field} wrong type", None, _replaced(doc, path, _wrong_type(value))))
        bad = _out_of_range(value)
        if bad is not None:
            out.append(DocVariant(f"{field} out of range", None, _replaced(doc, path, bad)))
        if isinstance(value, dict):
            out.append(DocVariant(f"{field} extra field", None, _replaced(doc, (*path, EXTRA), 1)))
    out.append(DocVariant("extra field", None, _replaced(doc, (EXTRA,), [1, 2])))
    text = dump(doc)
    out.append(DocVariant("truncated", text[: len(text) // 2]))
    for name, how in SPELLINGS.items():
        out.append(DocVariant(name, None, ("spelled", how), must_load=True))
    return out


@dataclass
class Format:
    """A file format: how to read a good file's document, and how to write one back."""

    name: str
    good: str  # the GoodFiles kind
    read: Callable[[Path], object]
    write: Callable[[Path, object, dict], None]  # (path, document, json.dumps options)


def _read_text_json(path: Path) -> object:
    return json.loads(path.read_text().splitlines()[0] if path.suffix == ".jsonl" else path.read_text())


def _write_text_json(path: Path, doc: object, how: dict) -> None:
    path.write_text(json.dumps(doc, **how) + "\n")


def _write_audit(path: Path, doc: object, how: dict) -> None:
    """One line, compact as AuditLog writes it unless ``how`` spells it otherwise (never indented:
    a log is one document per line)."""
    how = {k: v for k, v in how.items() if k != "indent"} or {"separators": (",", ":")}
    path.write_text(json.dumps(doc, **how) + "\n")


def _read_graph_meta(path: Path) -> object:
    import onnx

    from ltmp_deploy.runtime.metadata import read_metadata

    return read_metadata(onnx.load(str(path), load_external_data=False))


def _write_graph_meta(path: Path, doc: object, how: dict) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    del graph.metadata_props[:]
    for key, value in doc.items():
        graph.metadata_props.append(onnx.StringStringEntryProto(key=key, value=json.dumps(value, **how)))
    onnx.save(graph, str(path))


def _read_checkpoint_meta(path: Path) -> object:
    from ltmp_deploy.formats import CHECKPOINT_METADATA_KEY, safetensors_metadata

    return json.loads(safetensors_metadata(path)[CHECKPOINT_METADATA_KEY])


def _write_checkpoint_meta(path: Path, doc: object, how: dict) -> None:
    from ltmp_deploy.formats import CHECKPOINT_METADATA_KEY

    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"][CHECKPOINT_METADATA_KEY] = json.dumps(doc, **how)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])


FORMATS = {
    f.name: f
    for f in (
        Format("audit", "audit", _read_text_json, _write_audit),
        Format("bench", "bench", _read_text_json, _write_text_json),
        Format("accuracy", "accuracy", _read_text_json, _write_text_json),
        Format("sidecar", "sidecar", _read_text_json, _write_text_json),
        Format("graph", "onnx", _read_graph_meta, _write_graph_meta),
        Format("checkpoint", "checkpoint", _read_checkpoint_meta, _write_checkpoint_meta),
    )
}


def _sidecar(good: GoodFiles) -> Path:
    """An engine's sidecar as ``build --sidecar-only`` writes it (the engine: bytes with the plan magic)."""
    engine = good.root / "sidecar" / "model.engine"
    if not engine.exists():
        engine.parent.mkdir()
        engine.write_bytes(good["engine"].read_bytes())
        argv = ["build", str(good["onnx"]), "--preset", "datacenter", "--sidecar-only", "10.3.0", "-o", str(engine)]
        assert _cli(argv) == 0
    return engine.with_name("model.engine.json")


@dataclass
class JsonTarget:
    """A command (``argv``) or a front-door call (``api``) that reads the file ``fmt`` names."""

    name: str
    fmt: str
    argv: Argv | None = None
    api: Api | None = None
    limit: int | None = None  # a seeded sample of this many cases, for commands that take a while


def _engine_of(f: dict[str, Path]) -> str:
    return str(f["sidecar"].with_suffix(""))


JSON_TARGETS = [
    JsonTarget("show", "audit", lambda f, o: ["show", _s(f["audit"]), "--image", "0", "-o", _s(o / "s.png")]),
    JsonTarget("read_log", "audit", api=lambda f, o: list(__import__("ltmp_deploy.runtime.audit").runtime.audit
                                                        .read_log(f["audit"]))),
    JsonTarget("estimate", "bench", lambda f, o: ["estimate", _s(f["bench"]), "--price-per-hour", "1",
                                                  "--images-per-day", "1000", "-o", _s(o / "e.json")]),
    JsonTarget("estimate_file", "bench", api=_estimate_api),
    JsonTarget("report", "bench", lambda f, o: ["report", "--bench", _s(f["bench"]), "--headline", "unpatched", "-o",
                                              _s(o / "report")],
               limit=40),
    JsonTarget("report", "accuracy", lambda f, o: ["report", "--accuracy", _s(f["accuracy"]), "--headline",
                                                   "unpatched", "-o", _s(o / "report")], limit=40),
    JsonTarget("read_accuracy", "accuracy", api=lambda f, o: __import__("ltmp_deploy.report.accuracy").report
               .accuracy.read_accuracy(f["accuracy"])),
    JsonTarget("inspect", "sidecar", lambda f, o: ["inspect", _engine_of(f)]),
    JsonTarget("inspect_file", "sidecar", api=lambda f, o: _inspect_api("engine")({"engine": _engine_of(f)}, o)),
    JsonTarget("predict", "graph", lambda f, o: ["predict", _s(f["onnx"]), _s(f["image"]), "--no-progress",
                                                 "--log-decisions", _s(o / "a.jsonl")], limit=90),
    JsonTarget("Session.predict", "graph", api=_predict_api, limit=90),
    JsonTarget("show", "graph", lambda f, o: ["show", _s(f["onnx"]), _s(f["image"]), "-o", _s(o / "s.png")],
               limit=90),
    JsonTarget("inspect", "graph", lambda f, o: ["inspect", _s(f["onnx"])]),
    JsonTarget("inspect", "checkpoint", lambda f, o: ["inspect", _s(f["checkpoint"])]),
    JsonTarget("inspect_file", "checkpoint", api=_inspect_api("checkpoint")),
]  # fmt: skip


def _json_case(target: JsonTarget, variant: DocVariant, good: GoodFiles, root: Path, capsys) -> list[str]:
    fmt = FORMATS[target.fmt]
    source = _sidecar(good) if target.fmt == "sidecar" else good[fmt.good]
    case = root / f"case{len(list(root.iterdir()))}"
    inputs, out = case / "in", case / "out"
    inputs.mkdir(parents=True)
    out.mkdir()
    broken = inputs / source.name
    if target.fmt == "sidecar":
        shutil.copyfile(source.with_suffix(""), broken.with_suffix(""))
    if variant.text is not None:
        shutil.copyfile(source, broken)  # a graph or checkpoint keeps its weights; JSON files are replaced
        broken.write_text(variant.text)
    elif isinstance(variant.doc, tuple):
        shutil.copyfile(source, broken)
        fmt.write(broken, fmt.read(source), variant.doc[1])
    else:
        shutil.copyfile(source, broken)
        fmt.write(broken, variant.doc, {})
    files = Files(good, **{fmt.good: broken, "sidecar": broken})
    before = listing(case)
    if target.api is not None:
        return _json_api_problems(target, files, out, broken, variant)
    with contextlib.chdir(case):
        result = run_cli(target.argv(files, out), capsys)
    if result.crash is not None:
        return [f"traceback: {result.crash}"]
    problems = []
    lines = result.err.strip().splitlines()
    if "Traceback" in result.err + result.out:
        problems.append("a traceback in its output")
    if variant.must_load and result.rc != 0:
        problems.append(f"a valid spelling refused: {result.err.strip()[:300]!r}")
    elif result.rc == 2:
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr: {result.err.strip()[:300]!r}")
        elif broken.name not in lines[0]:
            problems.append(f"the line does not name {broken.name}: {lines[0][:300]!r}")
        made = sorted(set(listing(case)) - set(before))
        if made:
            problems.append(f"written on a refusal: {made}")
    elif result.rc != 0:
        problems.append(f"exit code {result.rc}: {result.err.strip()[-300:]!r}")
    return problems


def _json_api_problems(target: JsonTarget, files: dict, out: Path, broken: Path, variant: DocVariant) -> list[str]:
    try:
        target.api(files, out)
    except LTMPError as err:
        if variant.must_load:
            return [f"a valid spelling refused: {err}"]
        if "\n" in str(err) or broken.name not in str(err):
            return [f"not one line naming {broken.name}: {str(err)[:300]!r}"]
        return [f"left {listing(out)}"] if listing(out) else []
    except Exception as err:  # noqa: BLE001  (what the test looks for)
        return [f"raised {type(err).__name__}: {str(err)[:200]}"]
    return []


def _json_id(target: JsonTarget) -> str:
    return f"{target.name}-{target.fmt}"


@pytest.mark.parametrize("target", JSON_TARGETS, ids=_json_id)
def test_toolkit_files_broken_field_by_field(target, good, tmp_path, capsys):
    fmt = FORMATS[target.fmt]
    source = _sidecar(good) if target.fmt == "sidecar" else good[fmt.good]
    dump = (lambda d: json.dumps(d) + "\n") if fmt.write in (_write_text_json, _write_audit) else json.dumps
    tried = doc_variants(fmt.read(source), dump)
    if target.limit is not None and len(tried) > target.limit:
        keep = [v for v in tried if v.must_load or v.name == "truncated"]
        tried = keep + random.Random(f"{SEED}-{_json_id(target)}").sample(
            [v for v in tried if v not in keep], target.limit - len(keep)
        )
    failures = []
    for variant in tried:
        failures += [f"{_json_id(target)} [{variant.name}]: {p}" for p in _json_case(target, variant, good, tmp_path,
                                                                                     capsys)]  # fmt: skip
    JSON_COUNTS[_json_id(target)] = [len(tried), len(failures)]
    assert not failures, f"{len(failures)} of {len(tried)} cases broke the rules:\n" + "\n".join(failures)


@pytest.fixture(scope="module", autouse=True)
def _json_counts():
    yield
    for name, (cases, failed) in sorted(JSON_COUNTS.items()):
        print(f"\nfuzz cases {name}: {cases} ({failed} broke the rules)", end="")


# -- an output that is an input, options naming files, untrusted images ----------------------------


def _refused(result: Outcome, *names: str) -> list[str]:
    lines = result.err.strip().splitlines()
    if result.crash is not None:
        return [f"traceback: {result.crash}"]
    if result.rc != 2 or len(lines) != 1:
        return [f"exit {result.rc}, stderr {result.err.strip()[-300:]!r}"]
    return [f"the line does not name {n}: {lines[0]!r}" for n in names if n not in lines[0]]


# (name, slot, argv with the output in place of the file in ``slot``)
OVERWRITES = [
    ("predict --log-decisions", "onnx", lambda f, p: ["predict", _s(f["onnx"]), _s(f["image"]), "--no-progress",
                                                      "--log-decisions", p]),
    ("predict --log-decisions", "image", lambda f, p: ["predict", _s(f["onnx"]), _s(f["image"]), "--no-progress",
                                                       "--log-decisions", p]),
    ("estimate -o", "bench", lambda f, p: ["estimate", _s(f["bench"]), "--price-per-hour", "1", "-o", p]),
    ("show -o", "image", lambda f, p: ["show", _s(f["onnx"]), _s(f["image"]), "-o", p]),
    ("show -o", "audit", lambda f, p: ["show", _s(f["audit"]), "--image", "0", "-o", p]),
    ("export -o", "checkpoint", lambda f, p: ["export", _s(f["checkpoint"]), "--no-validate", "-o", p]),
    ("calibrate -o", "checkpoint", lambda f, p: ["calibrate", _s(f["checkpoint"]), "--flops-target", "0.5",
                                                 "--no-evaluate", "-o", p]),
    ("learn -o", "checkpoint", lambda f, p: ["learn", _s(f["checkpoint"]), "--data", _s(f["data"]), *LEARN, "-o", p]),
    ("patch -o", "weights", lambda f, p: ["patch", _s(f["description"]), "--weights", _s(f["weights"]), "-o", p]),
    ("validate -o", "onnx", lambda f, p: ["validate", _s(f["onnx"]), "--against", _s(f["checkpoint"]),
                                              "--images", "2", "-o", p]),
    ("build -o", "onnx", lambda f, p: ["build", _s(f["onnx"]), "--preset", "datacenter", "-o", p]),
    ("bench --results-md", "checkpoint", lambda f, p: ["bench", _s(f["checkpoint"]), "--targets", "--no-threshold",
                                                       *ONE_ROUND, "--results-md", p, "-o", "b"]),
]  # fmt: skip


@pytest.mark.parametrize("how", ["same path", "through a link"])
@pytest.mark.parametrize("case", OVERWRITES, ids=lambda c: f"{c[0]}={c[1]}")
def test_an_output_never_replaces_an_input(case, how, good, tmp_path, capsys):
    name, slot, argv = case
    source = tmp_path / good[slot].name
    shutil.copyfile(good[slot], source)
    target = source
    if how == "through a link":
        target = tmp_path / "link" / f"other{source.suffix}"
        target.parent.mkdir()
        target.symlink_to(source)
    files = Files(good, **{slot: source})
    before = listing(tmp_path)
    with contextlib.chdir(tmp_path):
        result = run_cli(argv(files, str(target)), capsys)
    problems = _refused(result, target.name)
    if source.read_bytes() != good[slot].read_bytes():
        problems.append("the input was changed")
    if listing(tmp_path) != before:
        problems.append(f"written: {sorted(set(listing(tmp_path)) - set(before))}")
    JSON_COUNTS[f"{name} is {slot}, {how}"] = [1, int(bool(problems))]
    assert not problems, problems


def test_show_writes_all_its_pictures_or_none(good, tmp_path, capsys):
    missing = tmp_path / "gone.png"
    result = run_cli(["show", str(good["onnx"]), str(good["image"]), str(missing), "-o", str(tmp_path / "pics")],
                     capsys)  # fmt: skip
    problems = _refused(result, missing.name)
    assert not problems and not (tmp_path / "pics").exists(), (problems, listing(tmp_path))


def _bomb(path: Path) -> Path:
    """A PNG over Pillow's decompression-bomb limit as the test lowers it (MAX_IMAGE_PIXELS)."""
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    return path


BOMB_PIXELS = 1000  # the 64x64 image is over twice this: Pillow's DecompressionBombError


IMAGE_USES = [
    ("predict", lambda f, img: run_cli_quiet(["predict", _s(f["onnx"]), _s(img), "--no-progress"])),
    ("show", lambda f, img: run_cli_quiet(["show", _s(f["onnx"]), _s(img), "-o", _s(img.with_name("o.png"))])),
    ("Session.predict", lambda f, img: ld.Session(f["onnx"]).predict([img])),
    ("preprocess", lambda f, img: __import__("ltmp_deploy.runtime.preprocess").runtime.preprocess.preprocess(
        img, {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3})),
]  # fmt: skip


def run_cli_quiet(argv: list[str]) -> int:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    if rc == 2:
        raise LTMPError(err.getvalue().strip().split(": error: ", 1)[-1])
    return rc


@pytest.mark.parametrize("use", IMAGE_USES, ids=lambda u: u[0])
@pytest.mark.parametrize("kind", ["decompression bomb", "over the warning limit", "unsupported mode"])
def test_untrusted_images_are_one_line(use, kind, good, tmp_path, monkeypatch):
    image = tmp_path / "field.png"
    if kind == "unsupported mode":
        image = Image.new("La", (8, 8))  # a PIL image whose mode Pillow cannot turn into RGB
        if use[0] in ("predict", "show"):
            pytest.skip("the CLI takes files; no file format holds this mode")
    else:
        _bomb(image)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_PIXELS if kind == "decompression bomb" else 3000)
    try:
        use[1](good, image)
    except LTMPError as err:
        assert "\n" not in str(err) and (kind == "unsupported mode" or image.name in str(err)), str(err)
        JSON_COUNTS[f"image {kind} {use[0]}"] = [1, 0]
    except Exception as err:  # noqa: BLE001
        JSON_COUNTS[f"image {kind} {use[0]}"] = [1, 1]
        raise AssertionError(f"{type(err).__name__}: {err}") from err
    else:
        JSON_COUNTS[f"image {kind} {use[0]}"] = [1, 1]
        raise AssertionError("accepted")


def test_folders_skip_bombs_with_a_count(good, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copyfile(good["image"], folder / "a.png")
    Image.open(good["image"]).resize((30, 30)).save(folder / "b.png")
    _bomb(folder / "c.png")
    data = (folder / "b.png").read_bytes()
    (folder / "d.png").write_bytes(data[: len(data) // 2])  # its header reads, its pixels are cut off
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # a.png and b.png are under it, c.png over twice it
    result = run_cli(["predict", str(good["onnx"]), str(folder), "--no-progress", "--json"], capsys)
    assert result.rc == 0 and result.crash is None, result
    assert [json.loads(line)["image"] for line in result.out.splitlines()] == [str(folder / f"{n}.png") for n in "ab"]
    assert "skipped 2" in result.err and "c.png" in result.err and "d.png" in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    named = run_cli(["predict", str(good["onnx"]), str(folder / "d.png"), "--no-progress"], capsys)
    assert not _refused(named, "d.png"), named  # a file named on its own is refused, not skipped


# (option, argv whose option names the wrong kind of thing)
OPTION_PATHS = [
    ("bench --workdir FILE", lambda f, t: ["bench", _s(f["checkpoint"]), "--targets", "--no-threshold", *ONE_ROUND,
                                           "--workdir", _s(t["file"]), "-o", _s(t["dir"] / "b")]),
    ("bench -o FILE", lambda f, t: ["bench", _s(f["checkpoint"]), "--targets", "--no-threshold", *ONE_ROUND,
                                    "-o", _s(t["file"])]),
    ("report -o FILE", lambda f, t: ["report", "--accuracy", _s(f["accuracy"]), "-o", _s(t["file"])]),
    ("report --grid MISSING", lambda f, t: ["report", "--accuracy", _s(f["accuracy"]), "--grid", _s(t["missing"]),
                                            "-o", _s(t["dir"] / "r")]),
    ("estimate -o DIR", lambda f, t: ["estimate", _s(f["bench"]), "--price-per-hour", "1", "-o",
                                          _s(t["dir"])]),
    ("predict --log-decisions DIR", lambda f, t: ["predict", _s(f["onnx"]), _s(f["image"]), "--no-progress",
                                                  "--log-decisions", _s(t["dir"])]),
    ("predict --log-decisions NOFOLDER", lambda f, t: ["predict", _s(f["onnx"]), _s(f["image"]), "--no-progress",
                                                       "--log-decisions", _s(t["missing"] / "a.jsonl")]),
    ("show -o NOFOLDER", lambda f, t: ["show", _s(f["onnx"]), _s(f["image"]), "-o", _s(t["missing"] / "s.png")]),
    ("validate -o DIR", lambda f, t: ["validate", _s(f["onnx"]), "--against", _s(f["checkpoint"]), "-o",
                                          _s(t["dir"])]),
    ("calibrate --int8-calib FILE", lambda f, t: ["calibrate", _s(f["checkpoint"]), "--flops-target", "0.5",
                                                  "--no-evaluate", "--int8-calib", _s(t["file"]), "-o",
                                                  _s(t["dir"] / "c.safetensors")]),
    ("export --triton-repo FILE", lambda f, t: ["export", _s(f["checkpoint"]), "--no-validate", "--triton-repo",
                                                _s(t["file"]), "-o", _s(t["dir"] / "x.onnx")]),
    ("build --timing-cache DIR", lambda f, t: ["build", _s(f["onnx"]), "--preset", "datacenter", "--print-trtexec",
                                               "--timing-cache", _s(t["dir"]), "-o", _s(t["dir"] / "m.engine")]),
    ("build --calibration MISSING", lambda f, t: ["build", _s(f["onnx"]), "--preset", "datacenter", "--precision",
                                                  "int8", "--calibration", _s(t["missing"]), "--print-trtexec", "-o",
                                                  _s(t["dir"] / "m.engine")]),
    ("demo --workdir FILE", lambda f, t: ["demo", "--quick", "--workdir", _s(t["file"])]),
    ("learn --data FILE", lambda f, t: ["learn", _s(f["checkpoint"]), "--data", _s(t["file"]), *LEARN, "-o",
                                        _s(t["dir"] / "l.safetensors")]),
    ("learn -o DIR", lambda f, t: ["learn", _s(f["checkpoint"]), "--data", _s(f["data"]), *LEARN, "-o",
                                   _s(t["dir"])]),
    ("patch -o DIR", lambda f, t: ["patch", _s(f["description"]), "-o", _s(t["dir"])]),
    ("train-base -o DIR", lambda f, t: ["train-base", "-o", _s(t["dir"]), "--epochs", "1"]),
    ("calibrate -o DIR", lambda f, t: ["calibrate", _s(f["checkpoint"]), "--flops-target", "0.5", "--no-evaluate",
                                       "-o", _s(t["dir"])]),
    ("export -o NOFOLDER", lambda f, t: ["export", _s(f["checkpoint"]), "--no-validate", "-o",
                                         _s(t["missing"] / "x.onnx")]),
    ("build -o NOFOLDER", lambda f, t: ["build", _s(f["onnx"]), "--preset", "datacenter", "-o",
                                        _s(t["missing"] / "m.engine")]),
    ("validate -o NOFOLDER", lambda f, t: ["validate", _s(f["onnx"]), "--against", _s(f["checkpoint"]),
                                               "-o", _s(t["missing"] / "p.json")]),
    ("bench --results-md DIR", lambda f, t: ["bench", _s(f["checkpoint"]), "--targets", "--no-threshold",
                                             *ONE_ROUND, "--results-md", _s(t["dir"]), "-o", _s(t["dir"] / "b")]),
    ("show -o FILE for two images", lambda f, t: ["show", _s(f["onnx"]), _s(f["image"]), _s(f["image"]), "-o",
                                                  _s(t["file"])]),
    ("predict IMAGES MISSING", lambda f, t: ["predict", _s(f["onnx"]), _s(t["missing"]), "--no-progress"]),
]  # fmt: skip


@pytest.mark.parametrize("case", OPTION_PATHS, ids=lambda c: c[0])
def test_options_naming_files_are_checked_first(case, good, tmp_path, capsys):
    name, argv = case
    places = {"file": tmp_path / "a-file.txt", "dir": tmp_path / "a-folder", "missing": tmp_path / "missing"}
    places["file"].write_text("not a folder\n")
    places["dir"].mkdir()
    before = listing(tmp_path)
    with contextlib.chdir(tmp_path):
        result = run_cli(argv(good, places), capsys)
    problems = _refused(result)
    if listing(tmp_path) != before:
        problems.append(f"written: {sorted(set(listing(tmp_path)) - set(before))}")
    JSON_COUNTS[f"option {name}"] = [1, int(bool(problems))]
    assert not problems, problems


def _edited(good: GoodFiles, kind: str, tmp_path: Path, change: Callable[[dict], None]) -> Path:
    """A copy of a good file whose document ``change`` edited."""
    fmt = FORMATS[kind]
    source = _sidecar(good) if kind == "sidecar" else good[fmt.good]
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)
    if kind == "sidecar":
        shutil.copyfile(source.with_suffix(""), copy.with_suffix(""))
    doc = fmt.read(source)
    change(doc)
    fmt.write(copy, doc, {})
    return copy


# The tracebacks the issue names, one each: (format, the edit, the command on the edited file, what the line says)
ISSUE_EXAMPLES = [
    ("sidecar", lambda d: d.update(metadata=[1]), lambda p, o: ["inspect", _s(p.with_suffix(""))], "$.metadata"),
    ("sidecar", lambda d: d.update(profiles="min"), lambda p, o: ["inspect", _s(p.with_suffix(""))], "$.profiles"),
    ("audit", lambda d: d["input"].pop("data_config"), lambda p, o: ["show", _s(p), "--image", "0", "-o",
                                                                     _s(o / "s.png")], "$.input.data_config"),
    ("audit", lambda d: d["input"].update(grid=[4, 0]), lambda p, o: ["show", _s(p), "--image", "0", "-o",
                                                                      _s(o / "s.png")], "$.input.grid[1]"),
    ("bench", lambda d: d["records"][0].update(flops_ratio=None), lambda p, o: ["estimate", _s(p),
                                                                                "--price-per-hour", "1"],
     "$.records[0].flops_ratio"),
    ("bench", lambda d: d.pop("machine"), lambda p, o: ["report", "--bench", _s(p), "--headline", "unpatched", "-o",
                                                        _s(o / "r")], "$.machine"),
    ("graph", lambda d: d["data_config"].update(crop_pct=-0.5), lambda p, o: ["predict", _s(p), "--no-progress",
                                                                              _s(o.parent / "image.png")],
     "$.data_config.crop_pct"),
]  # fmt: skip


@pytest.mark.parametrize("example", ISSUE_EXAMPLES, ids=lambda e: f"{e[0]} {e[3]}")
def test_the_tracebacks_found_are_one_line_naming_file_and_field(example, good, tmp_path, capsys):
    kind, change, argv, field = example
    path = _edited(good, kind, tmp_path, change)
    shutil.copyfile(good["image"], tmp_path / "image.png")
    (tmp_path / "out").mkdir()
    result = run_cli(argv(path, tmp_path / "out"), capsys)
    assert not _refused(result, path.name, field), result
    assert listing(tmp_path / "out") == []


def test_image_folders_for_training_skip_bombs_with_a_count(good, tmp_path, monkeypatch):
    from ltmp_deploy.data.folder import ImageFolderDataset

    for c in ("ant", "bee"):
        (tmp_path / c).mkdir()
        shutil.copyfile(good["image"], tmp_path / c / "a.png")
    _bomb(tmp_path / "bee" / "c.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # over it (Pillow's warning), but not over twice it
    data = ImageFolderDataset(tmp_path)
    pictures = [data[i] for i in range(len(data))]
    assert all(p.size == (36, 40) for p, _ in pictures)  # the bomb's place taken by a readable image
    assert data.skipped == 1 and data.skipped_files == [tmp_path / "bee" / "c.png"]
