"""Figures of bench and accuracy results, as PNG bytes: matplotlib's Agg canvas, no display needed."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from ltmp_deploy.runtime.bench_results import FIXED, ORACLE, THRESHOLD, TOME, UNPATCHED, backends, batches

# kind -> (colour map for shades, marker, line style, legend text)
STYLE = {
    UNPATCHED: ("Greys", "*", "none", "unpatched"),
    ORACLE: ("Purples", "^", "--", "oracle (the floor)"),
    FIXED: ("Blues", "o", "-", "LTMP fixed"),
    TOME: ("Greens", "s", "-", "ToMe"),
    THRESHOLD: ("Oranges", "D", "none", "LTMP threshold"),
}
ORDER = (ORACLE, FIXED, TOME, THRESHOLD, UNPATCHED)
DPI = 110


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _colour(kind: str, shade: float = 0.75) -> Any:
    from matplotlib import colormaps

    return "black" if kind == UNPATCHED else colormaps[STYLE[kind][0]](shade)


def latency_vs_flops(
    doc: dict[str, Any], only_backends: Sequence[str] | None = None, only_batches: Sequence[int] | None = None
) -> bytes:
    """Median latency against the block FLOPs kept, one panel per backend and batch size, with the
    ideal line (latency proportional to FLOPs, from the unpatched model) and the oracle."""
    rows = [b for b in backends(doc) if only_backends is None or b in only_backends]
    cols = [b for b in batches(doc) if only_batches is None or b in only_batches]
    fig = _figure(4.0 * len(cols), 3.2 * len(rows))
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, backend in enumerate(rows):
        for j, batch in enumerate(cols):
            ax = axes[i][j]
            recs = [r for r in doc["records"] if r["backend"] == backend and r["batch"] == batch]
            base = next((r for r in recs if r["kind"] == UNPATCHED), None)
            if base is not None:
                ax.plot([0, 1], [0, base["p50_ms"]], ":", color="grey", label="ideal: latency proportional to FLOPs")
            for kind in ORDER:
                points = sorted((r["flops_ratio"], r["p50_ms"]) for r in recs if r["kind"] == kind)
                if points:
                    _, marker, style, text = STYLE[kind]
                    ax.plot(
                        *zip(*points),
                        marker=marker,
                        linestyle=style,
                        color=_colour(kind),
                        label=text,
                        markersize=9 if kind == UNPATCHED else 6,
                    )
            ax.set(
                title=f"{backend}, batch {batch}", xlabel="block FLOPs kept", ylabel="latency p50 (ms)", xlim=(0, 1.05)
            )
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    return _png(fig)


def _legend_below(fig: Any, axes: Any) -> None:
    """One legend for every panel, under them (panels share the series)."""
    seen: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(len(seen), 3), fontsize="small")


def throughput_vs_batch(doc: dict[str, Any]) -> bytes:
    """Images per second (at the median latency) against batch size, one panel per backend."""
    names = list(doc["variants"])
    rows = backends(doc)
    fig = _figure(6.0 * len(rows), 4.2)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, backend in zip(axes, rows):
        for name in names:
            points = sorted(
                (r["batch"], r["throughput_img_s"])
                for r in doc["records"]
                if r["backend"] == backend and r["variant"] == name
            )
            if not points:
                continue
            variant = doc["variants"][name]
            kind = variant["kind"]
            shade = 0.95 - 0.55 * float(variant["flops_ratio"])  # fewer FLOPs kept, darker
            ax.plot(
                *zip(*points),
                marker=STYLE[kind][1],
                linestyle="-" if kind != UNPATCHED else "--",
                color=_colour(kind, shade),
                label=name,
            )
        ax.set(title=backend, xlabel="batch size", ylabel="images/s (at p50 latency)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches(doc), [str(b) for b in batches(doc)])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small", ncol=2)
    return _png(fig)


def accuracy_vs_flops(acc: dict[str, Any]) -> bytes:
    """Accuracy against block FLOPs kept for each method (error bars: the spread over runs, or for a
    single run its sampling error on the images scored)."""
    fig = _figure(5.5, 4.0)
    ax = fig.subplots()
    for kind in (FIXED, THRESHOLD, TOME, ORACLE, UNPATCHED):
        rows = sorted(
            (v["flops_ratio"], 100 * v["accuracy"], 100 * (v.get("accuracy_std") or v.get("accuracy_stderr") or 0.0))
            for v in acc["variants"]
            if v["method"] == kind
        )
        if rows:
            x, y, err = zip(*rows)
            _, marker, _, text = STYLE[kind]
            ax.errorbar(
                x,
                y,
                yerr=err,
                marker=marker,
                linestyle="none" if kind == UNPATCHED else "-",
                color=_colour(kind),
                label=text,
                capsize=3,
                markersize=9 if kind == UNPATCHED else 6,
            )
    ax.set(xlabel="block FLOPs kept", ylabel="accuracy (%)", title=f"accuracy on {acc['dataset']['name']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def tokens_per_block(acc: dict[str, Any]) -> bytes:
    """Tokens leaving each block, mean over images with the spread (q10-q90 when given, else +-1 std)."""
    fig = _figure(5.5, 4.0)
    ax = fig.subplots()
    for name, t in acc["tokens_per_block"].items():
        blocks = list(range(len(t["mean"])))
        lower, upper = (
            (t["q10"], t["q90"])
            if "q10" in t and "q90" in t
            else ([m - s for m, s in zip(t["mean"], t["std"])], [m + s for m, s in zip(t["mean"], t["std"])])
        )
        line = ax.plot(blocks, t["mean"], marker="o", label=name)[0]
        ax.fill_between(blocks, lower, upper, color=line.get_color(), alpha=0.2)
    if acc.get("tokens"):
        ax.axhline(acc["tokens"], color="black", linestyle=":", label="unpatched")
    ax.set(xlabel="block", ylabel="tokens kept", title="tokens kept per block (band: spread over images)")
    ax.set_xticks(range(max(len(t["mean"]) for t in acc["tokens_per_block"].values())))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)
