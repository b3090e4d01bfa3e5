"""``report.md`` and a self-contained ``report.html`` from bench and accuracy results.

The headline: the FLOPs one LTMP variant saves, the latency it saves at batch 1 and 8 (the median
per-round ratio to the unpatched model, on one backend), and its accuracy change against the
unpatched model. Then accuracy against FLOPs (LTMP and ToMe), latency against FLOPs, tokens kept
per block, token-visualization grids, and the tables behind the figures. The page is one file:
every figure is inlined as a base64 PNG, with no script and no outside link. ``report.md`` shows
the same, its figures written next to it.
"""

from __future__ import annotations

import base64
import contextlib
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltmp_deploy.bench.tables import LATENCY_HEADER, latency_rows, markdown_table
from ltmp_deploy.errors import LTMPError, first_line
from ltmp_deploy.files import atomic_output, ensure_writable_folder, refuse_overwriting_inputs
from ltmp_deploy.report.accuracy import check_accuracy, read_accuracy
from ltmp_deploy.runtime.bench_results import (
    FIXED,
    THRESHOLD,
    UNPATCHED,
    backends,
    batches,
    check_bench,
    find_record,
    noise_warning,
    read_bench,
)

HEADLINE_BATCHES = (1, 8)
PREFERRED_BACKEND = "onnxruntime-cpu"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Source = str | os.PathLike | dict | None


@dataclass
class Headline:
    variant: str
    backend: str | None
    flops_saved: float | None  # fraction of block FLOPs
    latency_saved: dict[int, float | None] = field(default_factory=dict)  # batch -> fraction (paired median)
    accuracy_change: float | None = None  # percentage points
    accuracy: tuple[float, float] | None = None  # (unpatched, variant), fractions

    def lines(self) -> list[str]:
        """The headline as sentences; each number appears exactly as the page prints it."""
        out = [f"Variant: {self.variant}" + (f" (latency on {self.backend})" if self.backend else "")]
        out.append(f"FLOPs saved: {_pct(self.flops_saved)} of the block FLOPs")
        for batch, saved in self.latency_saved.items():
            out.append(f"Latency saved at batch {batch}: {_pct(saved)}")
        if self.accuracy_change is not None and self.accuracy is not None:
            base, own = self.accuracy
            out.append(f"Accuracy change: {self.accuracy_change:+.2f} points ({100 * base:.2f}% to {100 * own:.2f}%)")
        else:
            out.append("Accuracy change: not measured")
        return out


def _pct(x: float | None) -> str:
    return "not measured" if x is None else f"{100 * x:.1f}%"


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path]
    headline: Headline


def _load(source: Source, reader: Any, checker: Any) -> dict[str, Any] | None:
    if source is None:
        return None
    return checker(source) if isinstance(source, dict) else reader(source)


def choose_headline(bench: dict[str, Any] | None, accuracy: dict[str, Any] | None) -> str:
    """The accuracy result's own headline, else the LTMP fixed-mode variant (every backend runs it;
    threshold mode when there is none) keeping the fewest FLOPs, among the variants both results
    hold (or the one result given)."""
    if accuracy is not None and accuracy.get("headline"):
        return accuracy["headline"]
    measured = (
        {v["name"]: (v["method"], v["flops_ratio"]) for v in accuracy["variants"]} if accuracy is not None else {}
    )
    timed = {n: (v["kind"], v["flops_ratio"]) for n, v in bench["variants"].items()} if bench is not None else {}
    kinds = {n: k for n, k in measured.items() if n in timed} or measured or timed
    ranked = sorted((kind != FIXED, flops, name) for name, (kind, flops) in kinds.items() if kind in (FIXED, THRESHOLD))
    if not ranked:
        raise LTMPError("report: no LTMP variant in the results to headline (pass --headline)")
    return ranked[0][2]


def headline(
    bench: dict[str, Any] | None, accuracy: dict[str, Any] | None, variant: str, backend: str | None = None
) -> Headline:
    acc = {v["name"]: v for v in accuracy["variants"]} if accuracy is not None else {}
    flops = acc[variant]["flops_ratio"] if variant in acc else None
    out = Headline(variant, None, None, {b: None for b in HEADLINE_BATCHES})
    if bench is not None:
        if variant not in bench["variants"] and variant not in acc:
            raise LTMPError(f"report: variant {variant!r} is in neither result")
        out.backend = backend or (PREFERRED_BACKEND if PREFERRED_BACKEND in backends(bench) else backends(bench)[0])
        if out.backend not in backends(bench):
            raise LTMPError(f"report: --backend {out.backend}: the bench result has {', '.join(backends(bench))}")
        if flops is None and variant in bench["variants"]:
            flops = bench["variants"][variant]["flops_ratio"]
        for b in HEADLINE_BATCHES:
            rec = find_record(bench, out.backend, b, variant)
            out.latency_saved[b] = None if rec is None or rec["vs_unpatched"] is None else 1.0 - rec["vs_unpatched"]
    elif variant not in acc:
        raise LTMPError(f"report: variant {variant!r} is not in the accuracy result")
    out.flops_saved = None if flops is None else 1.0 - flops
    if variant in acc and UNPATCHED in acc:
        base, own = acc[UNPATCHED]["accuracy"], acc[variant]["accuracy"]
        out.accuracy, out.accuracy_change = (base, own), 100 * (own - base)
    return out


def sampling_error_text(variant: dict[str, Any]) -> str:
    """A variant's sampling error as the tables print it: +-points on n images, or "-" unmeasured."""
    if variant.get("accuracy_stderr") is None:
        return "-"
    images = f" (n={variant['images']})" if variant.get("images") else ""
    return f"+-{100 * variant['accuracy_stderr']:.2f} pts{images}"


def _accuracy_rows(accuracy: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for v in accuracy["variants"]:
        std = f" +- {100 * v['accuracy_std']:.2f}" if v.get("accuracy_std") is not None else ""
        rows.append(
            (
                v["name"],
                v["method"],
                f"{v['flops_ratio']:.3f}",
                f"{100 * v['accuracy']:.2f}%{std}",
                sampling_error_text(v),
                str(len(v.get("runs") or [])),
            )
        )
    return rows


# "sampling error": the binomial standard error on the images scored; "+- x" beside the accuracy:
# the spread over runs (learning seeds), a different uncertainty.
ACCURACY_HEADER = ("variant", "method", "block FLOPs kept", "accuracy", "sampling error", "runs")


def _sections(
    bench: dict[str, Any] | None, accuracy: dict[str, Any] | None, head: Headline, grids: Sequence[bytes]
) -> list[tuple]:
    """The document as blocks: ("h2", text), ("p", text), ("headline", lines), ("table", header, rows),
    ("img", name, alt, png). Both writers render the same blocks."""
    from ltmp_deploy import plots

    out: list[tuple] = [("h2", "Headline"), ("headline", head.lines())]
    if accuracy is not None:
        ds = accuracy["dataset"]
        where = (
            f"{ds['name']}"
            + (f", {ds['split']} split" if ds.get("split") else "")
            + (f", {ds['images']} images" if ds.get("images") else "")
        )
        out += [
            ("h2", "Accuracy against FLOPs"),
            ("p", f"Model {accuracy['model']}, measured on {where}."),
            ("img", "accuracy_vs_flops.png", "accuracy against block FLOPs", plots.accuracy_vs_flops(accuracy)),
            ("table", ACCURACY_HEADER, _accuracy_rows(accuracy)),
        ]
    if bench is not None and head.backend is not None:
        shown = [b for b in batches(bench) if b in HEADLINE_BATCHES] or batches(bench)
        out += [
            ("h2", f"Latency against FLOPs ({head.backend})"),
            (
                "p",
                f"Measured on {bench['machine']['cpu']} by `{bench.get('command') or 'ltmp-deploy bench'}` "
                f"({bench['created']}). {bench.get('note') or ''}".strip(),
            ),
            (
                "img",
                "latency_vs_flops.png",
                "latency against block FLOPs",
                plots.latency_vs_flops(bench, [head.backend], shown),
            ),
        ]
        warning = noise_warning(bench)
        if warning:  # the headline's latency comes from these figures
            out.append(("p", f"Warning: {warning}."))
        for b in shown:
            out += [
                ("p", f"Batch {b}:"),
                ("table", LATENCY_HEADER, [tuple(r) for r in latency_rows(bench, head.backend, b)]),
            ]
    if accuracy is not None and accuracy.get("tokens_per_block"):
        out += [
            ("h2", "Tokens kept per block"),
            ("img", "tokens_per_block.png", "tokens kept per block", plots.tokens_per_block(accuracy)),
        ]
    if grids:
        out += [
            ("h2", "What the model threw away"),
            (
                "p",
                "Per block, for a few images: pruned patches greyed or darkened, merged patches in their "
                "group's colour.",
            ),
        ]
        out += [("img", f"grid_{i}.png", f"token grid {i}", png) for i, png in enumerate(grids, start=1)]
    return out


def _markdown(title: str, sections: list[tuple], prefix: str) -> str:
    lines = [f"# {title}", ""]
    for block in sections:
        kind = block[0]
        if kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "headline":
            lines += [f"- **{item}**" for item in block[1]] + [""]
        elif kind == "table":
            lines += [markdown_table(block[1], block[2]), ""]
        elif kind == "img":
            lines += [f"![{block[2]}]({prefix}{block[1]})", ""]
    return "\n".join(lines)


STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em}"
    "td:not(:first-child){text-align:right}img{max-width:100%;display:block;margin:1em 0}"
    ".headline li{font-size:1.2em;margin:.2em 0}"
)


def _html(title: str, sections: list[tuple]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for block in sections:
        kind = block[0]
        if kind == "h2":
            body.append(f"<h2>{e(block[1])}</h2>")
        elif kind == "p":
            body.append(f"<p>{e(block[1])}</p>")
        elif kind == "headline":
            body.append('<ul class="headline">' + "".join(f"<li>{e(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(block[3]).decode("ascii")
            body.append(f'<img alt="{e(block[2])}" src="data:image/png;base64,{data}">')
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _read_png(path: str | os.PathLike) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise LTMPError(f"{path}: cannot read the image ({err.strerror})") from None
    if not data.startswith(PNG_SIGNATURE):
        raise LTMPError(f"{path}: not a PNG image")
    import io

    from PIL import Image

    from ltmp_deploy.images import to_rgb

    try:  # decoded whole: a truncated PNG has the signature and would show as a broken picture
        with Image.open(io.BytesIO(data)) as picture:
            to_rgb(picture, os.fspath(path))
    except LTMPError:
        raise
    except Exception as err:  # noqa: BLE001  (Pillow raises OSError, SyntaxError, zlib errors)
        raise LTMPError(f"{path}: a truncated or corrupt PNG image ({first_line(err, 200)})") from None
    return data


def write_report(
    out_dir: str | os.PathLike,
    bench: Source = None,
    accuracy: Source = None,
    grids: Sequence[str | os.PathLike] = (),
    *,
    variant: str | None = None,
    backend: str | None = None,
    title: str | None = None,
) -> ReportFiles:
    """Write ``report.md``, its figures and ``report.html`` into ``out_dir``.

    ``bench`` / ``accuracy``: a result file or its document (at least one). ``grids``: PNG token
    grids. ``variant``: the headline's variant (default :func:`choose_headline`); ``backend``: the
    one its latency is read on (default ONNX Runtime CPU when measured)."""
    ensure_writable_folder(out_dir, "-o")
    bench_doc = _load(bench, read_bench, check_bench)
    acc_doc = _load(accuracy, read_accuracy, check_accuracy)
    if bench_doc is None and acc_doc is None:
        raise LTMPError("report: give a bench result, an accuracy result, or both")
    pngs = [_read_png(p) for p in grids]
    head = headline(bench_doc, acc_doc, variant or choose_headline(bench_doc, acc_doc), backend)
    model = (acc_doc or {}).get("model") or (bench_doc or {}).get("model", {}).get("name")
    title = title or f"LTMP report: {model}"
    sections = _sections(bench_doc, acc_doc, head, pngs)
    out = Path(out_dir)
    contents = {out / f"report_{b[1]}": b[3] for b in sections if b[0] == "img"}
    contents[out / "report.md"] = _markdown(title, sections, "report_").encode("utf-8")
    contents[out / "report.html"] = _html(title, sections).encode("utf-8")
    inputs = [s for s in (bench, accuracy) if isinstance(s, (str, os.PathLike))]
    refuse_overwriting_inputs([("-o", p) for p in contents], [*inputs, *grids])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LTMPError(f"{out}: cannot create the report folder ({err.strerror})") from err
    with contextlib.ExitStack() as stack:  # every file written before any is moved into place
        for path, data in contents.items():
            stack.enter_context(atomic_output(path)).write_bytes(data)
    figures = [p for p in contents if p.suffix == ".png"]
    return ReportFiles(out / "report.md", out / "report.html", figures, head)
