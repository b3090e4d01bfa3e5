"""One parity comparator: a reference runner against others on the same batches, by one set of gates.

Polygraphy's ``Comparator.run`` runs the reference and every other runner (PyTorch, ONNX Runtime,
TensorRT: anything that keeps Polygraphy's runner contract) on one list of batches, and
``Comparator.compare_accuracy`` with Polygraphy's simple comparison judges the logits: their
largest absolute difference against the precision's bound in :mod:`ltmp_deploy.runtime.parity.tolerances`.
On top come the checks Polygraphy has no notion of: top-1 agreement, and every block's token
decisions (kept and merged indices) compared image by image, naming the first block where the
two diverge. The verdict is one :class:`ParityReport`, with a readable summary and a JSON form.

The check right after export and both paths of ``ltmp-deploy validate`` (a checkpoint as the
reference, or an ONNX graph on a device without torch) judge through :func:`run_parity`; this
module imports neither torch nor onnx.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltmp_deploy import __version__
from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.extras import installed_versions
from ltmp_deploy.files import ensure_writable, write_text_atomic
from ltmp_deploy.runtime.metadata import INPUT_NAME, OUTPUT_NAME
from ltmp_deploy.runtime.parity.tolerances import decisions_gated, gates
from ltmp_deploy.schemas import check

DEFAULT_IMAGES = 16
DEFAULT_BATCH = 4
RANDOM_IMAGES = "seeded random images"
RANDOM_WARNING = "seeded random images: threshold mode may merge nothing"
DIGITS_IMAGES = "digits test split"
SAMPLE_KINDS = {RANDOM_IMAGES: "random", DIGITS_IMAGES: "embedded digits"}  # input kinds of the sample images


@dataclass
class Target:
    """A model on its Polygraphy runner, and what running and comparing it needs to know of it (None:
    a dynamic axis). The one record a Session, validate and bench hold; running is the runner's
    (``ltmp_deploy.runtime.backends.open_runner`` opens files into one)."""

    runner: Any
    backend: str
    file: str
    metadata: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int | None, ...] = ()
    batch_range: tuple[int, int | None] = (1, None)
    precision: str = "fp32"
    input_name: str = INPUT_NAME
    input_dtype: np.dtype = np.dtype(np.float32)
    output_names: list[str] = field(default_factory=list)
    providers: list[str] | None = None  # ONNX Runtime's execution providers in use
    sidecar: dict[str, Any] | None = None  # a TensorRT engine's build sidecar


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
    decision_agreement: list[float] | None = None  # per block: share of images with identical decisions
    first_divergent_block: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary_lines(self) -> list[str]:
        lines = [
            f"    max |logit diff| {self.max_abs_diff:.3g} (tolerance {self.logit_tolerance:g}), "
            f"mean {self.mean_abs_diff:.3g}, top-1 agreement {self.top1_agreement:.1%}"
        ]
        if self.decision_agreement is None:
            lines.append("    token decisions not compared (the file has no decision outputs; export with --decisions)")
        elif self.first_divergent_block is None:
            lines.append(f"    token decisions identical in all {len(self.decision_agreement)} blocks")
        else:
            per_block = ", ".join(f"{a:.0%}" for a in self.decision_agreement)
            lines.append(
                f"    token decisions differ: first divergence in block {self.first_divergent_block} "
                f"(images agreeing per block: {per_block})"
            )
        return lines + [f"    failed: {f}" for f in self.failures]


@dataclass
class Reductions:
    """How many merges and prunes the reference's decisions made over all images, per block and in
    all: what "token decisions identical" was tested on. ``pruned`` is None when the tokens entering
    the first block are unknown (an export by an older ltmp-deploy)."""

    merged: list[int]
    pruned: list[int] | None

    @property
    def total_merged(self) -> int:
        return sum(self.merged)

    @property
    def total_pruned(self) -> int | None:
        return None if self.pruned is None else sum(self.pruned)

    @property
    def none(self) -> bool:
        return self.total_merged == 0 and not self.total_pruned

    def to_dict(self) -> dict[str, Any]:
        return {
            "merged": self.total_merged,
            "pruned": self.total_pruned,
            "blocks": [
                {"merged": m, "pruned": None if self.pruned is None else self.pruned[i]}
                for i, m in enumerate(self.merged)
            ],
        }

    def summary(self, images: int) -> str:
        pruned = "prunes not counted" if self.pruned is None else f"{self.total_pruned} prunes"
        per_block = ", ".join(
            f"{m}/{'?' if self.pruned is None else self.pruned[i]}" for i, m in enumerate(self.merged)
        )
        return f"{self.total_merged} merges and {pruned} over {images} images (merges/prunes per block: {per_block})"


@dataclass
class ParityReport:
    files: list[str]
    reference: str
    reference_backend: str
    precision: str
    mode: str | None
    images: int
    batch_size: int
    data: str
    comparisons: list[Comparison]
    tolerances: dict[str, float]
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    input_kind: str = "random"  # random, embedded digits, folder, files or pictures (runtime.parity.inputs)
    input_source: str | None = None  # the folder, for a folder
    reductions: Reductions | None = None  # None: the reference gives no decisions
    failures: list[str] = field(default_factory=list)  # the report's own gates (--require-reductions)

    @property
    def ok(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons) and not self.failures

    def reductions_line(self) -> str:
        """What the decisions compared were made of, plainly: none at all is said so."""
        if self.reductions is None:
            return "merges and prunes not counted (the reference gives no token decisions)"
        if self.reductions.none:
            return (
                f"NO merge and NO prune on these {self.images} images ({self.data}): the token decisions compared "
                "never reduced a token; validate on real images (--images FOLDER)"
            )
        return f"exercised {self.reductions.summary(self.images)}"

    # The worst over all comparisons: what a single-file check (the one after export) reads.
    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.comparisons), default=0.0)

    @property
    def top1_agreement(self) -> float:
        return min((c.top1_agreement for c in self.comparisons), default=0.0)

    @property
    def first_divergent_block(self) -> int | None:
        blocks = [c.first_divergent_block for c in self.comparisons if c.first_divergent_block is not None]
        return min(blocks, default=None)

    @property
    def decisions_identical(self) -> bool | None:
        compared = [c for c in self.comparisons if c.decision_agreement is not None]
        return all(c.first_divergent_block is None for c in compared) if compared else None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["comparisons"] = [c.to_dict() for c in self.comparisons]
        doc["reductions"] = self.reductions.to_dict() if self.reductions is not None else None
        return {"ok": self.ok, **doc}

    def to_json(self, where: str = "validation report") -> str:
        doc = check(self.to_dict(), "validation-report", where)  # what is written follows the published schema
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    def write_json(self, path: str | os.PathLike) -> Path:
        write_text_atomic(path, self.to_json(str(path)))
        return Path(path)

    def summary(self) -> str:
        mode = f"{self.mode} mode, " if self.mode else ""
        names = ", ".join(Path(f).name for f in self.files)
        lines = [
            f"{'PASS' if self.ok else 'FAIL'}: {names} ({mode}{self.precision}), {self.images} images in batches of "
            f"{self.batch_size} ({self.data}), reference {self.reference}"
        ]
        lines.append(f"  {self.reductions_line()}")
        lines += [f"  failed: {f}" for f in self.failures]
        for c in self.comparisons:
            shown = f" ({c.precision})" if c.precision != self.precision else ""
            lines.append(f"  {c.runner}{shown}: {'PASS' if c.ok else 'FAIL'}")
            lines += c.summary_lines()
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- what to compare on -------------------------------------------------------------------------


def check_request(paths: Sequence[Path], images: int, batch: int | None, json_path: str | os.PathLike | None) -> None:
    """The options every validation takes, refused before anything is opened."""
    if images < 1:
        raise LTMPError(f"--images {images}: must be at least 1")
    if batch is not None and batch < 1:
        raise LTMPError(f"--batch {batch}: must be at least 1")
    if json_path is not None:
        ensure_writable(json_path)
    for p in paths:
        if not p.is_file():
            raise LTMPError(f"{p}: no such file")


def common_batch(targets: Sequence[Target], batch: int | None) -> int:
    """One batch size every target takes (``batch`` when given), after checking they take one image shape."""
    shape = targets[0].input_shape
    for t in targets[1:]:
        if tuple(t.input_shape[1:]) != tuple(shape[1:]):
            raise LTMPError(f"{t.file}: input {t.input_shape} differs from {targets[0].file}'s {shape}")
    low = max(t.batch_range[0] for t in targets)
    highs = [t.batch_range[1] for t in targets if t.batch_range[1] is not None]
    high = min(highs) if highs else None
    if high is not None and low > high:
        raise LTMPError(f"{targets[0].file}: the files take no common batch size (from {low} to {high})")
    size = batch if batch is not None else (low if low == high else max(low, min(DEFAULT_BATCH, high or DEFAULT_BATCH)))
    if size < low or (high is not None and size > high):
        span = f"{low}" if low == high else f"{low} to {high if high is not None else 'any'}"
        raise LTMPError(f"--batch {size}: {targets[0].file} takes batches of {span}")
    return size


def whole_batches(count: int, size: int) -> int:
    """``count`` rounded up to whole batches of ``size``."""
    return -(-count // size) * size


def random_images(image_shape: Sequence[int], count: int) -> np.ndarray:
    """``count`` seeded standard-normal images: random pictures in a model's normalised input space."""
    return np.random.default_rng(0).standard_normal((count, *(int(d) for d in image_shape))).astype(np.float32)


def split_batches(images: np.ndarray, size: int) -> list[np.ndarray]:
    """``images`` as float32 batches of ``size``, the last filled up by starting over."""
    pick = np.arange(whole_batches(len(images), size)) % len(images)
    batches = np.ascontiguousarray(np.asarray(images, dtype=np.float32)[pick])
    return [batches[i : i + size] for i in range(0, len(batches), size)]


# -- comparing ----------------------------------------------------------------------------------


def run_parity(
    reference: Target,
    targets: Sequence[Target],
    batches: Sequence[np.ndarray],
    *,
    data: str,
    mode: str | None = None,
    notes: Sequence[str] = (),
    input_kind: str | None = None,
    input_source: str | None = None,
    require_reductions: bool = False,
) -> ParityReport:
    """Run ``reference`` and every target on ``batches`` and judge each target against the reference.

    ``input_kind``/``input_source``: what the images are (default: from ``data``, the sample images'
    description). ``require_reductions``: the report fails when the reference's decisions merged and
    pruned nothing (or it gives none to count)."""
    if not targets:
        raise LTMPError("validate: nothing to compare with the reference")
    for t in targets:
        try:
            gates(t.precision)
        except LTMPError as err:
            raise LTMPError(f"{t.file}: {err} (from its metadata)") from err
    _unique_names([reference, *targets])
    input_name = targets[0].metadata.get("input_name", INPUT_NAME)
    results = _run([reference.runner, *(t.runner for t in targets)], [{input_name: b} for b in batches])
    comparisons = [_judge(results, reference, i + 1, t) for i, t in enumerate(targets)]
    low = sorted({t.precision for t in targets if not decisions_gated(t.precision)})
    notes = [
        *notes,
        *(
            f"{p}: token decisions may legitimately differ where a score sits near a threshold; "
            "top-1 agreement is the gate"
            for p in low
        ),
    ]
    input_kind = input_kind or SAMPLE_KINDS.get(data, "pictures")
    if input_kind == "random" and mode == "threshold":
        notes.append(f"{RANDOM_WARNING} on them (validate on real images: --images FOLDER)")
    precision = targets[0].precision
    reductions = _reductions([dict(it) for it in results[reference.runner.name]], _first_tokens([reference, *targets]))
    report = ParityReport(
        files=[t.file for t in targets],
        reference=reference.runner.name,
        reference_backend=reference.backend,
        precision=precision,
        mode=mode,
        images=sum(len(b) for b in batches),
        batch_size=len(batches[0]),
        data=data,
        comparisons=comparisons,
        tolerances=gates(precision),
        notes=notes,
        versions=versions(),
        input_kind=input_kind,
        input_source=input_source,
        reductions=reductions,
    )
    if require_reductions and (reductions is None or reductions.none):
        what = "gave no token decisions to count" if reductions is None else "exercised no merge and no prune"
        report.failures.append(f"the {report.images} images ({data}) {what} (--require-reductions)")
    return report


def _judge(results: Any, reference: Target, index: int, target: Target) -> Comparison:
    """One target's outputs against the reference's: Polygraphy on the logits, then top-1 and decisions."""
    ref = [dict(it) for it in results[reference.runner.name]]
    got = [dict(it) for it in results[target.runner.name]]
    ref_logits = np.concatenate([np.asarray(r[OUTPUT_NAME], dtype=np.float64) for r in ref])
    logits = np.concatenate([np.asarray(g[OUTPUT_NAME], dtype=np.float64) for g in got])
    if logits.shape != ref_logits.shape:
        raise LTMPError(
            f"{target.file}: logits of shape {logits.shape}, the reference gives {ref_logits.shape}: not the same model"
        )
    bounds = gates(target.precision)
    per_batch = _logit_accuracy(results, index, bounds["logit_abs"])
    sizes = np.array([len(g[OUTPUT_NAME]) for g in got], dtype=np.float64)
    c = Comparison(
        runner=target.runner.name,
        backend=target.backend,
        file=target.file,
        precision=target.precision,
        max_abs_diff=max(float(r.max_absdiff) for r in per_batch),
        mean_abs_diff=float(np.dot([r.mean_absdiff for r in per_batch], sizes) / sizes.sum()),
        top1_agreement=float((logits.argmax(-1) == ref_logits.argmax(-1)).mean()),
        logit_tolerance=bounds["logit_abs"],
    )
    if not np.isfinite(logits).all():
        c.failures.append("non-finite logits")
    if not all(bool(r) for r in per_batch):
        c.failures.append(f"max |logit diff| {c.max_abs_diff:.3g} > {bounds['logit_abs']:g}")
    if "top1" in bounds and c.top1_agreement < bounds["top1"]:
        c.failures.append(f"top-1 agreement {c.top1_agreement:.1%} < {bounds['top1']:.1%}")
    c.decision_agreement = _decision_agreement(ref, got)
    if c.decision_agreement is not None:
        c.first_divergent_block = next((i for i, a in enumerate(c.decision_agreement) if a < 1.0), None)
        if decisions_gated(target.precision) and c.first_divergent_block is not None:
            c.failures.append(f"token decisions differ from block {c.first_divergent_block} on")
    return c


def _logit_accuracy(results: Any, index: int, atol: float) -> list[Any]:
    """Polygraphy's own verdict on the logits of runner ``index`` against runner 0, one per batch."""
    from polygraphy.comparator import Comparator

    try:
        from polygraphy.comparator import SimpleCompareFunc as simple
    except ImportError:  # Polygraphy before 0.53
        from polygraphy.comparator import CompareFunc

        simple = CompareFunc.simple

    def logits_only(name: str, _index: int, _result: Any) -> list[str] | None:
        return [name] if name == OUTPUT_NAME else None

    func = simple(atol=atol, rtol=0.0, check_error_stat="max", find_output_func=logits_only)
    with quiet_polygraphy(critical=True):  # the report says what failed
        accuracy = Comparator.compare_accuracy(results, comparisons=[(0, index)], compare_func=func)
    pairs = accuracy if hasattr(accuracy, "keys") else accuracy[0]  # one AccuracyResult per compare function
    (iterations,) = pairs.values()
    return [it[OUTPUT_NAME] for it in iterations]


def _strip(row: np.ndarray) -> np.ndarray:
    """A decision row without its trailing -1 padding (widths follow the batch's largest count)."""
    valid = np.flatnonzero(row != -1)
    return row[: valid[-1] + 1] if len(valid) else row[:0]


def _first_tokens(targets: Sequence[Target]) -> int | None:
    """Tokens entering the first block (prefix tokens and patches), from the first metadata that says."""
    for t in targets:
        grid, prefix = t.metadata.get("patch_grid"), t.metadata.get("num_prefix_tokens")
        if isinstance(grid, list) and len(grid) == 2 and isinstance(prefix, int):
            return prefix + int(grid[0]) * int(grid[1])
    return None


def _reductions(ref: list[dict[str, Any]], first: int | None) -> Reductions | None:
    """Merges and prunes in the reference's decisions, per block, summed over its images: a block's
    merged tokens are its merge_dst entries, and whatever else entered and did not stay was pruned."""
    if not ref or "block0_kept" not in ref[0]:
        return None
    blocks = 0
    while f"block{blocks}_kept" in ref[0]:
        blocks += 1
    merged, pruned = [0] * blocks, [0] * blocks
    for r in ref:
        for row in range(len(r["block0_kept"])):
            entering = first
            for i in range(blocks):
                kept = int((np.asarray(r[f"block{i}_kept"][row]) >= 0).sum())
                merges = int((np.asarray(r[f"block{i}_merge_dst"][row]) >= 0).sum())
                merged[i] += merges
                if entering is not None:
                    pruned[i] += entering - merges - kept
                entering = kept
    return Reductions(merged, pruned if first is not None else None)


def _decision_agreement(ref: list[dict[str, Any]], got: list[dict[str, Any]]) -> list[float] | None:
    """Per block, the share of images whose kept and merged indices are identical in both."""
    blocks = []
    while f"block{len(blocks)}_kept" in ref[0] and f"block{len(blocks)}_kept" in got[0]:
        blocks.append(len(blocks))
    if not blocks:
        return None
    agreement = []
    for i in blocks:
        same = total = 0
        for r, g in zip(ref, got):
            rows = zip(r[f"block{i}_kept"], g[f"block{i}_kept"], r[f"block{i}_merge_dst"], g[f"block{i}_merge_dst"])
            for row in rows:
                rk, gk, rm, gm = (_strip(np.asarray(a)) for a in row)
                same += bool(np.array_equal(rk, gk) and np.array_equal(rm, gm))
                total += 1
        agreement.append(same / total if total else 1.0)
    return agreement


def _unique_names(targets: Sequence[Target]) -> None:
    """Comparator keys results by runner name: two files of the same name get a number."""
    seen: set[str] = set()
    for t in targets:
        base, n = t.runner.name, 2
        while t.runner.name in seen:
            t.runner.name, n = f"{base} #{n}", n + 1
        seen.add(t.runner.name)


@contextlib.contextmanager
def quiet_polygraphy(critical: bool = False) -> Iterator[None]:
    """Polygraphy logs progress at INFO (and each failed comparison at ERROR); keep what we need."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL if critical else G_LOGGER.ERROR):
        yield


def _run(runners: list[Any], loader: list[dict[str, np.ndarray]]) -> Any:
    from polygraphy.comparator import Comparator

    try:
        with quiet_polygraphy():
            return Comparator.run(runners, data_loader=loader)
    except LTMPError:
        raise
    except Exception as err:  # noqa: BLE001  (PolygraphyException, or a backend's own error)
        reason = first_line(err, 300)
        names = ", ".join(r.name for r in runners)
        raise LTMPError(f"validate: inference failed in one of {names} ({reason})") from err


def versions() -> dict[str, str | None]:
    """The versions a report was made with (read from the installed distributions, nothing imported)."""
    found = installed_versions(("polygraphy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch"))
    return {"ltmp-deploy": __version__, **{k: v for k, v in found.items() if v is not None}}


__all__ = [
    "Comparison",
    "ParityReport",
    "Reductions",
    "Target",
    "check_request",
    "common_batch",
    "random_images",
    "run_parity",
    "split_batches",
    "whole_batches",
]
