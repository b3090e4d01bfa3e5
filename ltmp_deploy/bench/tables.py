"""A bench result as text: Markdown tables (and the header that says where and how it was measured),
and CSV rows. Plain Python: reading a result needs neither torch nor a plotting library."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from ltmp_deploy.runtime.bench_results import RECORD_FIELDS, backends, batches, noise_warning


def ratio_text(rec: Mapping[str, Any], key: str) -> str:
    """``0.612 (0.601-0.630)``: the median per-round ratio and its quartiles, or a dash."""
    if rec.get(key) is None:
        return "-"
    q1, q3 = rec.get(f"{key}_q1"), rec.get(f"{key}_q3")
    if q1 is None or q3 is None:  # a result edited by hand, or by a tool that dropped them
        return f"{rec[key]:.3f}"
    return f"{rec[key]:.3f} ({q1:.3f}-{q3:.3f})"


def flops_text(rec: Mapping[str, Any]) -> str:
    padded = rec.get("flops_ratio_padded")
    if padded is not None and abs(padded - rec["flops_ratio"]) > 5e-4:
        return f"{rec['flops_ratio']:.3f} (padded {padded:.3f})"
    return f"{rec['flops_ratio']:.3f}"


LATENCY_HEADER = ("variant", "block FLOPs kept", "p50 ms", "p90 ms", "p99 ms", "images/s", "vs unpatched", "vs oracle")


def latency_rows(doc: Mapping[str, Any], backend: str, batch: int) -> list[tuple[str, ...]]:
    """One row of text per variant timed on ``backend`` at ``batch`` (columns: LATENCY_HEADER)."""
    return [
        (
            rec["variant"],
            flops_text(rec),
            f"{rec['p50_ms']:.3f}",
            f"{rec['p90_ms']:.3f}",
            f"{rec['p99_ms']:.3f}",
            f"{rec['throughput_img_s']:.1f}",
            ratio_text(rec, "vs_unpatched"),
            ratio_text(rec, "vs_oracle"),
        )
        for rec in doc["records"]
        if rec["backend"] == backend and rec["batch"] == batch
    ]


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table, the first column left-aligned and the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_text(doc: Mapping[str, Any]) -> str:
    m = doc["machine"]
    lib = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v is not None)
    load = (
        f"load average {_load(m.get('load_average_start'))} at the start, {_load(m.get('load_average_end'))} at the end"
    )
    gpu = f"; GPU {m['gpu']['name']} (CUDA {m['gpu']['cuda']})" if m.get("gpu") else "; no GPU"
    return (
        f"{m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), {m['threads']} threads "
        f"per backend; {load}{gpu}; {m['os']}; {lib}"
    )


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:g}" for v in values) if values else "unknown"


def markdown(
    doc: Mapping[str, Any], links: Mapping[str, str] | None = None, images: Mapping[str, str] | None = None
) -> str:
    """The whole result as Markdown. ``links``: text -> relative path of the raw files;
    ``images``: alt text -> relative path of the figures."""
    model, cfg = doc["model"], doc["config"]
    out = [f"# LTMP benchmark: {model['name']}", ""]
    if doc.get("note"):
        out += [f"> **Note:** {doc['note']}", ""]
    out += [
        f"Written by `{doc.get('command') or 'ltmp-deploy bench'}` on {doc['created']}: do not edit by hand, run the "
        "command again.",
        "",
        f"- Model: {model['name']} ({model['source']}), {model['tokens']} tokens, {model['depth']} blocks, width "
        f"{model['width']}, input {'x'.join(map(str, model['input_size']))}.",
        f"- Machine: {machine_text(doc)}.",
        f"- Timing: {cfg['warmup']} warm-up calls per variant, then {cfg['rounds']} rounds with every variant called "
        "once per round, interleaved; ONNX graphs exported with opset "
        f"{cfg['opset']} and a dynamic batch axis.",
        "- Ratios: the median of the per-round ratios (each variant against the unpatched model, or against its "
        "oracle, in the same round), quartiles in brackets; below 1 is faster. The oracle is the same ViT keeping the "
        "same token counts with no merge or prune operations: the floor. p99 over fewer than 100 rounds is the "
        "slowest run.",
    ]
    warning = noise_warning(doc)
    if warning:
        out.append(f"- **Warning:** {warning}.")
    for skip in doc.get("skipped", []):
        what = f"{skip['backend']}" + (f", {skip['variant']}" if skip.get("variant") else "")
        out.append(f"- Not measured: {what}: {skip['reason']}.")
    if links:
        out.append("- Raw results: " + ", ".join(f"[{text}]({path})" for text, path in links.items()) + ".")
    for backend in backends(doc):
        for batch in batches(doc):
            out += [
                "",
                f"## {backend}, batch {batch}",
                "",
                markdown_table(LATENCY_HEADER, latency_rows(doc, backend, batch)),
            ]
    for alt, path in (images or {}).items():
        out += ["", f"![{alt}]({path})"]
    return "\n".join(out) + "\n"


def records_csv(doc: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECORD_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(doc["records"])
    return buffer.getvalue()


def samples_csv(doc: Mapping[str, Any]) -> str:
    """Every timed call: one row per backend, batch, variant and round."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["backend", "batch", "variant", "round", "latency_ms"])
    for rec in doc["records"]:
        for i, ms in enumerate(rec["samples_ms"]):
            writer.writerow([rec["backend"], rec["batch"], rec["variant"], i, repr(ms)])
    return buffer.getvalue()
