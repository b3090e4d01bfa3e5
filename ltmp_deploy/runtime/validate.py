"""Parity validation: Polygraphy's Comparator over PyTorch, ONNX Runtime and TensorRT runners.

``validate(["model.onnx"], against="model.safetensors")`` runs the toolkit's PyTorch runner (the
reference) and every file's runner on the same sample batches through ``Comparator.run``, then
judges each against the reference by the file's precision (tolerances in
:mod:`ltmp_deploy.export.tolerances`):

- fp32: max |logit diff| <= 1e-4 and identical token decisions in every block;
- fp16 / bf16 / int8: top-1 agreement >= 99.5% and max |logit diff| within the precision's
  documented bound; decisions are reported, not gated (near-threshold scores may flip).

Token decisions (when the file carries decision outputs) are compared image by image, block by
block, naming the first block where the backends diverge. The reference may also be an ONNX
graph (an engine checked against its source graph on a device without torch). Nothing here
imports torch unless a checkpoint is involved; the result is a :class:`ParityReport` with a
readable summary and a JSON form, and ``ok`` False is what makes the CLI exit 1.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ltmp_deploy import __version__
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.export.tolerances import LOGIT_TOL, LOW_PRECISION_TOP1, PRECISIONS
from ltmp_deploy.files import ensure_writable, write_text_atomic
from ltmp_deploy.export.metadata import decode
from ltmp_deploy.runtime.backends import TORCH_HINT, Provider, ort_session, require, resolve_backend, shape_batch_range, static_dims
from ltmp_deploy.runtime.engine import batch_range, engine_runner, quiet_polygraphy

DEFAULT_IMAGES = 16
DEFAULT_BATCH = 4
DIGITS_MODEL = "vit_digits_56"


@dataclass
class Comparison:
    """One runner against the reference, over all sample images."""

    runner: str
    backend: str
    file: str
    precision: str
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    logit_tolerance: float
    decision_agreement: Optional[list[float]] = None  # per block: share of images with identical decisions
    first_divergent_block: Optional[int] = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class ParityReport:
    files: list[str]
    reference: str
    reference_backend: str
    precision: str
    mode: Optional[str]
    images: int
    batch_size: int
    data: str
    comparisons: list[Comparison]
    tolerances: dict[str, float]
    notes: list[str] = field(default_factory=list)
    versions: dict[str, Optional[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["comparisons"] = [c.to_dict() for c in self.comparisons]
        return {"ok": self.ok, **doc}

    def write_json(self, path: str | os.PathLike) -> Path:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return Path(path)

    def summary(self) -> str:
        mode = f"{self.mode} mode, " if self.mode else ""
        lines = [
            f"{'PASS' if self.ok else 'FAIL'}: {', '.join(Path(f).name for f in self.files)} ({mode}{self.precision}), "
            f"{self.images} images in batches of {self.batch_size} ({self.data}), reference {self.reference}",
        ]
        for c in self.comparisons:
            shown = f" ({c.precision})" if c.precision != self.precision else ""
            lines.append(f"  {c.runner}{shown}: {'PASS' if c.ok else 'FAIL'}")
            lines.append(
                f"    max |logit diff| {c.max_abs_diff:.3g} (tolerance {c.logit_tolerance:g}), mean {c.mean_abs_diff:.3g}, "
                f"top-1 agreement {c.top1_agreement:.1%}"
            )
            if c.decision_agreement is None:
                lines.append("    token decisions not compared (the file has no decision outputs; export with --decisions)")
            elif c.first_divergent_block is None:
                lines.append(f"    token decisions identical in all {len(c.decision_agreement)} blocks")
            else:
                per_block = ", ".join(f"{a:.0%}" for a in c.decision_agreement)
                lines.append(f"    token decisions differ: first divergence in block {c.first_divergent_block} (images agreeing per block: {per_block})")
            lines += [f"    failed: {f}" for f in c.failures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- sample data ------------------------------------------------------------------------------


def sample_batches(meta: dict[str, Any], shape: Sequence[int], count: int, batch: int) -> tuple[list[np.ndarray], str]:
    """``count`` images (rounded up to whole batches) as float32 batches, and what they are.

    The embedded digits model gets real digits (scikit-learn's, through the runtime's own
    preprocessing, so no torch); any other model gets seeded standard-normal images in its
    normalised input space, as the check after export uses.
    """
    total = -(-count // batch) * batch
    images, what = None, "seeded random images"
    arch = meta.get("architecture") or {}
    cfg = meta.get("data_config")
    if arch.get("timm_model") == DIGITS_MODEL and isinstance(cfg, dict):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            pass
        else:
            from ltmp_deploy.runtime.preprocess import preprocess

            raw = load_digits().images  # 8x8 counts 0..16, as ltmp_deploy.data.digits reads them
            pick = np.linspace(0, len(raw) - 1, total).round().astype(int)
            pictures = np.rint(raw[pick] * (255.0 / 16.0)).astype(np.uint8)
            images, what = preprocess(list(pictures), cfg), "scikit-learn digits"
    if images is None:
        images = np.random.default_rng(0).standard_normal((total, *shape)).astype(np.float32)
    return [np.ascontiguousarray(images[i : i + batch]) for i in range(0, total, batch)], what


# -- runners ----------------------------------------------------------------------------------


@dataclass
class _Target:
    path: Path
    backend: str
    runner: Any
    metadata: dict[str, Any]
    input_shape: tuple[Optional[int], ...]
    batch_range: tuple[int, Optional[int]]
    precision: Optional[str] = None


def _ort_target(path: Path, providers: Optional[Sequence[Provider]], label: str = "onnxruntime") -> _Target:
    from polygraphy.backend.onnxrt import OnnxrtRunner

    session = ort_session(path, providers if providers is not None else ["CPUExecutionProvider"])
    used = [p.replace("ExecutionProvider", "") for p in session.get_providers()]
    meta = decode(session.get_modelmeta().custom_metadata_map)
    shape = static_dims(session.get_inputs()[0].shape)
    runner = OnnxrtRunner(session, name=f"{label}[{'+'.join(used)}] {path.name}")
    return _Target(path, "onnxruntime", runner, meta, shape, shape_batch_range(shape), meta.get("precision"))


def _trt_target(path: Path) -> _Target:
    runner, sidecar = engine_runner(path, name=f"tensorrt {path.name}")
    meta = dict(sidecar.get("metadata") or {})
    with quiet_polygraphy():
        runner.activate()
        try:
            (name, (_, shape)), = runner.get_input_metadata(use_numpy_dtypes=False).items()
            dims = static_dims(shape)
            rng = batch_range(runner.engine, name, dims[0] if dims else None)
        finally:
            runner.deactivate()
    return _Target(path, "tensorrt", runner, meta, dims, rng, sidecar.get("precision") or meta.get("precision"))


def _torch_target(path: Path, mode: Optional[str]) -> _Target:
    require("torch", path, TORCH_HINT)
    from ltmp_deploy.ltmp.checkpoint import read_metadata
    from ltmp_deploy.ltmp.runner import LTMPTorchRunner

    meta = read_metadata(path)  # the header only: the weights load when Comparator activates the runner
    runner = LTMPTorchRunner(path, decisions=True, mode=mode, name=f"pytorch {path.name}")
    shape = (None, *(int(d) for d in meta["data_config"]["input_size"]))
    return _Target(path, "torch", runner, meta, shape, (1, None), "fp32")


def _target(path: Path, backend: str, providers: Optional[Sequence[Provider]], mode: Optional[str]) -> _Target:
    name = resolve_backend(path, backend)
    if name == "onnxruntime":
        return _ort_target(path, providers)
    if name == "tensorrt":
        return _trt_target(path)
    return _torch_target(path, mode)


def _export_for(checkpoint: Path, mode: Optional[str], folder: str) -> Path:
    """An ONNX graph of ``checkpoint`` with decision outputs, to compare a checkpoint on its own."""
    require("torch", checkpoint, TORCH_HINT)
    from ltmp_deploy.export.onnx_export import export_onnx

    out = Path(folder) / f"{checkpoint.stem}.onnx"
    return export_onnx(checkpoint, out, mode=mode, decisions=True, validate=False).path


# -- comparing --------------------------------------------------------------------------------


def _strip(row: np.ndarray) -> np.ndarray:
    """A decision row without its trailing -1 padding (widths follow the batch's largest count)."""
    valid = np.flatnonzero(row != -1)
    return row[: valid[-1] + 1] if len(valid) else row[:0]


def _decision_agreement(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> Optional[list[float]]:
    blocks = []
    while f"block{len(blocks)}_kept" in ref[0] and f"block{len(blocks)}_kept" in got[0]:
        blocks.append(len(blocks))
    if not blocks:
        return None
    agreement = []
    for i in blocks:
        same = total = 0
        for r, g in zip(ref, got):
            for key_rows in zip(r[f"block{i}_kept"], g[f"block{i}_kept"], r[f"block{i}_merge_dst"], g[f"block{i}_merge_dst"]):
                rk, gk, rm, gm = (_strip(np.asarray(a)) for a in key_rows)
                same += bool(np.array_equal(rk, gk) and np.array_equal(rm, gm))
                total += 1
        agreement.append(same / total if total else 1.0)
    return agreement


def compare(name: str, target: _Target, ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> Comparison:
    """Judge one runner's outputs against the reference's, batch by batch, by its precision."""
    precision = target.precision or "fp32"
    ref_logits = np.concatenate([np.asarray(r["logits"], dtype=np.float64) for r in ref])
    logits = np.concatenate([np.asarray(g["logits"], dtype=np.float64) for g in got])
    if logits.shape != ref_logits.shape:
        raise LTMPError(f"{target.path}: logits of shape {logits.shape}, the reference gives {ref_logits.shape}: not the same model")
    diff = np.abs(logits - ref_logits)
    tol = LOGIT_TOL[precision]
    c = Comparison(
        runner=name, backend=target.backend, file=str(target.path), precision=precision,
        max_abs_diff=float(diff.max()) if diff.size else 0.0, mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=float((logits.argmax(-1) == ref_logits.argmax(-1)).mean()), logit_tolerance=tol,
    )
    if not np.isfinite(logits).all():
        c.failures.append("non-finite logits")
    if not c.max_abs_diff <= tol:
        c.failures.append(f"max |logit diff| {c.max_abs_diff:.3g} > {tol:g}")
    if precision != "fp32" and c.top1_agreement < LOW_PRECISION_TOP1:
        c.failures.append(f"top-1 agreement {c.top1_agreement:.1%} < {LOW_PRECISION_TOP1:.1%}")
    c.decision_agreement = _decision_agreement(ref, got)
    if c.decision_agreement is not None:
        c.first_divergent_block = next((i for i, a in enumerate(c.decision_agreement) if a < 1.0), None)
        if precision == "fp32" and c.first_divergent_block is not None:
            c.failures.append(f"token decisions differ from block {c.first_divergent_block} on")
    return c


def _versions() -> dict[str, Optional[str]]:
    import importlib.metadata as md

    found: dict[str, Optional[str]] = {"ltmp-deploy": __version__, "python": platform.python_version()}
    for dist in ("polygraphy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return found


def validate(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    against: Optional[str | os.PathLike] = None,
    *,
    images: int = DEFAULT_IMAGES,
    batch: Optional[int] = None,
    backend: str = "auto",
    providers: Optional[Sequence[Provider]] = None,
    mode: Optional[str] = None,
    json_path: Optional[str | os.PathLike] = None,
) -> ParityReport:
    """Compare each of ``files`` (.onnx, .engine/.plan) with the reference ``against``.

    ``against``: a toolkit checkpoint (PyTorch runner) or an ONNX graph (ONNX Runtime on the CPU).
    Without it, ``files`` must be one checkpoint: it is exported to a temporary graph (in
    ``mode``, default its own) with decision outputs, and that graph is compared with it.
    ``providers``: ONNX Runtime execution providers for the files (default CPU). ``batch``:
    the batch size for dynamic-batch files (default 4). Writes ``json_path`` when given.
    """
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    if not paths:
        raise LTMPError("validate: no file given")
    if images < 1:
        raise LTMPError(f"--images {images}: must be at least 1")
    if batch is not None and batch < 1:
        raise LTMPError(f"--batch {batch}: must be at least 1")
    if json_path is not None:
        ensure_writable(json_path)
    for p in paths + ([Path(against)] if against is not None else []):
        if not p.is_file():
            raise LTMPError(f"{p}: no such file")

    with tempfile.TemporaryDirectory(prefix="ltmp-validate-") as work:
        notes: list[str] = []
        if against is None:
            if len(paths) != 1 or resolve_backend(paths[0], "auto") != "torch":
                raise LTMPError(
                    f"{paths[0]}: --against is required: the checkpoint it was exported from (PyTorch reference), "
                    "or for an engine its source ONNX graph"
                )
            against, paths = paths[0], [_export_for(paths[0], mode, work)]
            notes.append(f"{Path(against).name} exported to a temporary ONNX graph with decision outputs for this check")
        reference_path = Path(against)
        ref_kind = resolve_backend(reference_path, "auto")
        if ref_kind == "tensorrt":
            raise LTMPError(f"{reference_path}: --against takes a toolkit checkpoint or an ONNX graph, not an engine")

        targets = [_target(p, backend, providers, mode) for p in paths]
        meta = next((t.metadata for t in targets if t.metadata), {})
        graph_mode = meta.get("mode")
        if ref_kind == "torch":
            reference = _torch_target(reference_path, graph_mode if graph_mode in ("fixed", "threshold") else mode)
            _check_same_model(reference, meta)
        else:
            reference = _ort_target(reference_path, None, label="reference onnxruntime")
        for t in targets:
            t.precision = t.precision or "fp32"
            if t.precision not in PRECISIONS:
                raise LTMPError(f"{t.path}: unknown precision {t.precision!r} in its metadata; expected one of {', '.join(PRECISIONS)}")
        precision = targets[0].precision
        _unique_names([reference] + targets)

        shape, size = _batching(targets, batch)
        feeds, data = sample_batches(meta or reference.metadata, shape[1:], images, size)
        input_name = meta.get("input_name", "images")
        loader = [{input_name: b} for b in feeds]
        results = _run([reference.runner] + [t.runner for t in targets], loader)

    ref_out = results[reference.runner.name]
    comparisons = [compare(t.runner.name, t, ref_out, results[t.runner.name]) for t in targets]
    for low in sorted({t.precision for t in targets} - {"fp32"}):
        notes.append(f"{low}: token decisions may legitimately differ where a score sits near a threshold; top-1 agreement is the gate")
    report = ParityReport(
        files=[str(t.path) for t in targets], reference=reference.runner.name, reference_backend=reference.backend,
        precision=precision, mode=graph_mode, images=sum(len(f) for f in feeds), batch_size=size, data=data,
        comparisons=comparisons, tolerances={"logit_abs": LOGIT_TOL[precision], **({"top1": LOW_PRECISION_TOP1} if precision != "fp32" else {})},
        notes=notes, versions=_versions(),
    )
    if json_path is not None:
        report.write_json(json_path)
    return report


def _unique_names(targets: list[_Target]) -> None:
    """Comparator keys results by runner name: two files of the same name get a number."""
    seen: set[str] = set()
    for t in targets:
        base, n = t.runner.name, 2
        while t.runner.name in seen:
            t.runner.name, n = f"{base} #{n}", n + 1
        seen.add(t.runner.name)


def _check_same_model(reference: _Target, meta: dict[str, Any]) -> None:
    for key in ("architecture", "num_classes"):
        if key in meta and key in reference.metadata and meta[key] != reference.metadata[key]:
            raise LTMPError(f"{reference.path}: its {key} ({reference.metadata[key]}) differs from the file's ({meta[key]}): not the checkpoint it was exported from")


def _batching(targets: list[_Target], batch: Optional[int]) -> tuple[tuple[Optional[int], ...], int]:
    """The image shape and one batch size every target takes."""
    shape = targets[0].input_shape
    low = max(t.batch_range[0] for t in targets)
    highs = [t.batch_range[1] for t in targets if t.batch_range[1] is not None]
    high = min(highs) if highs else None
    for t in targets[1:]:
        if tuple(t.input_shape[1:]) != tuple(shape[1:]):
            raise LTMPError(f"{t.path}: input {t.input_shape} differs from {targets[0].path}'s {shape}")
    if high is not None and low > high:
        raise LTMPError(f"{targets[0].path}: the files take no common batch size (from {low} to {high})")
    size = batch if batch is not None else (low if low == high else max(low, min(DEFAULT_BATCH, high or DEFAULT_BATCH)))
    if size < low or (high is not None and size > high):
        span = f"{low}" if low == high else f"{low} to {high if high is not None else 'any'}"
        raise LTMPError(f"--batch {size}: {targets[0].path} takes batches of {span}")
    return shape, size


def _run(runners: list[Any], loader: list[dict[str, np.ndarray]]) -> dict[str, list[dict[str, np.ndarray]]]:
    from polygraphy.comparator import Comparator
    from polygraphy.exception import PolygraphyException

    try:
        with quiet_polygraphy():
            run_results = Comparator.run(runners, data_loader=loader)
    except LTMPError:
        raise
    except Exception as err:  # noqa: BLE001  (PolygraphyException, or a backend's own error)
        kind = "Polygraphy" if isinstance(err, PolygraphyException) else type(err).__name__
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else kind
        raise LTMPError(f"validate: inference failed in one of {', '.join(r.name for r in runners)} ({reason})") from err
    return {name: [dict(it) for it in iterations] for name, iterations in run_results.items()}


__all__ = ["Comparison", "ParityReport", "compare", "sample_batches", "validate"]
