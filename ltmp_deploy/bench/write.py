"""Writing a bench result: JSON, CSV (summary and every sample), Markdown and figures, all of them or
none; optionally a results page elsewhere (``benchmarks/RESULTS.md``) that links back to them."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ltmp_deploy.bench.tables import markdown, records_csv, samples_csv
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import atomic_output, ensure_writable
from ltmp_deploy.runtime.bench_results import check_bench

FILES = {
    "json": "bench.json",
    "csv": "bench.csv",
    "samples": "bench_samples.csv",
    "markdown": "bench.md",
    "latency_plot": "latency_vs_flops.png",
    "throughput_plot": "throughput_vs_batch.png",
}
RAW = {"bench.json": "json", "bench.csv": "csv", "every timed call (CSV)": "samples"}
FIGURES = {"latency against block FLOPs": "latency_plot", "throughput against batch size": "throughput_plot"}


def prepare_output(
    out_dir: str | os.PathLike, results_md: str | os.PathLike | None = None, create: bool = True
) -> Path:
    """Check both places can be written, before any long work; create ``out_dir`` when ``create``
    (a check before the run leaves no empty folder behind when the run fails)."""
    out = Path(out_dir)
    if not create and not out.exists():
        _check_creatable(out)
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LTMPError(f"{out}: cannot create the output folder ({err.strerror})") from err
        ensure_writable(out / FILES["json"])
    if results_md is not None:
        ensure_writable(results_md)
    return out


def _check_creatable(out: Path) -> None:
    """``mkdir -p out`` would succeed: its nearest existing parent is a writable folder."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise LTMPError(f"{out}: cannot create the output folder ({parent} is a file)")
    if not os.access(parent, os.W_OK):
        raise LTMPError(f"{out}: cannot create the output folder ({parent} is not writable)")


def write_bench(
    doc: dict[str, Any], out_dir: str | os.PathLike, results_md: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Write every file of ``doc`` into ``out_dir``; with ``results_md``, also a Markdown page there
    whose links point at those files. Returns what was written, by kind."""
    from ltmp_deploy import plots

    check_bench(doc)
    out = prepare_output(out_dir, results_md)
    paths = {kind: out / name for kind, name in FILES.items()}
    contents = {
        "json": json.dumps(doc, indent=1) + "\n",
        "csv": records_csv(doc),
        "samples": samples_csv(doc),
        "latency_plot": plots.latency_vs_flops(doc),
        "throughput_plot": plots.throughput_vs_batch(doc),
        "markdown": page(doc, paths, out),
    }
    if results_md is not None:
        contents["results_md"] = page(doc, paths, Path(results_md).parent)
        paths["results_md"] = Path(results_md)
    with contextlib.ExitStack() as stack:  # every file written before any is moved into place: all or none
        for kind, data in contents.items():
            tmp = stack.enter_context(atomic_output(paths[kind]))
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return paths


def page(doc: dict[str, Any], paths: dict[str, Path], folder: Path) -> str:
    """The Markdown page of ``doc`` for ``folder``, linking to the files in ``paths`` (by kind)."""

    def rel(kind: str) -> str:
        return Path(os.path.relpath(paths[kind].resolve(), folder.resolve())).as_posix()

    return markdown(
        doc, {text: rel(kind) for text, kind in RAW.items()}, {alt: rel(kind) for alt, kind in FIGURES.items()}
    )
