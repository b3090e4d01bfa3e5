"""Measuring the saving: bench (the toolkit), estimate (the field install too) and report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable

from ltmp_deploy.bench.config import BenchConfig
from ltmp_deploy.files import refuse_overwriting_inputs
from ltmp_deploy.options import add_options, command_line, from_args, positive_float

# -- bench ----------------------------------------------------------------------------------------


def add_bench(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "bench",
        run_bench,
        "Time unpatched, oracle, LTMP fixed and threshold, and ToMe at equal FLOPs over batch sizes on PyTorch, "
        "ONNX Runtime and CUDA/TensorRT where present; write JSON, CSV, Markdown and plots.",
        "# random-weight DeiT-Tiny, ONNX Runtime and PyTorch on the CPU, one thread:",
        "ltmp-deploy bench deit_tiny_patch16_224 --backends onnxruntime-cpu torch-cpu --threads 1 -o bench-deit-tiny",
        toolkit=True,
    )
    add_options(p, BenchConfig)
    p.add_argument(
        "--results-md",
        metavar="FILE",
        help="also write the Markdown results page here, linking to the files in -o (e.g. benchmarks/RESULTS.md)",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        default="ltmp-bench",
        metavar="DIR",
        help="bench.json, bench.csv, bench_samples.csv, bench.md and the plots",
    )


def run_bench(args: argparse.Namespace) -> int:
    from ltmp_deploy.bench.run import run_bench
    from ltmp_deploy.bench.tables import LATENCY_HEADER, latency_rows, markdown_table
    from ltmp_deploy.bench.write import FILES, prepare_output, write_bench
    from ltmp_deploy.files import ensure_writable_folder
    from ltmp_deploy.runtime.bench_results import backends, batches, noise_warning

    prepare_output(args.output_dir, args.results_md, create=False)  # fail now, not after the timing
    if args.workdir:
        ensure_writable_folder(args.workdir, "--workdir")
    written = [("-o", f"{args.output_dir}/{name}") for name in FILES.values()] + [("--results-md", args.results_md)]
    refuse_overwriting_inputs(written, [args.checkpoint, args.weights])
    config = from_args(BenchConfig, args)
    # the command that repeats this run (but for where its graphs went and its --note): every setting spelled out
    outputs = (["--results-md", args.results_md] if args.results_md else []) + ["-o", args.output_dir]
    repeat = ["ltmp-deploy", "bench", *command_line(config, exclude=("workdir", "note")), *outputs]
    config.command = shlex.join(repeat)
    doc = run_bench(config)
    for skip in doc["skipped"]:
        print(f"skipped {skip['backend']}{', ' + skip['variant'] if skip.get('variant') else ''}: {skip['reason']}")
    for backend in backends(doc):
        for batch in batches(doc):
            print(f"\n{backend}, batch {batch}:\n{markdown_table(LATENCY_HEADER, latency_rows(doc, backend, batch))}")
    paths = write_bench(doc, args.output_dir, args.results_md)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    warning = noise_warning(doc)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


# -- cost -----------------------------------------------------------------------------------------


def add_cost(add: Callable[..., argparse.ArgumentParser]) -> None:
    from ltmp_deploy.bench.cost_config import CostConfig

    p = add(
        "cost",
        run_cost,
        "Measure a cost model on a backend: one block's time by its token count, and what a merging/pruning block "
        "adds in fixed and threshold mode, at the deployment's batch sizes; `calibrate --cost` chooses the fixed "
        "schedule for latency with it.",
        "ltmp-deploy cost --batch 1 8 --threads 1 -o cost.json",
        "ltmp-deploy calibrate learned.safetensors --cost cost.json -o fixed.safetensors",
        toolkit=True,
    )
    add_options(p, CostConfig)
    p.add_argument("-o", "--output", required=True, metavar="COST.json", help="the cost model (JSON)")


def run_cost(args: argparse.Namespace) -> int:
    from ltmp_deploy.bench.cost import measure_cost_model
    from ltmp_deploy.bench.cost_config import CostConfig
    from ltmp_deploy.files import ensure_writable, write_text_atomic
    from ltmp_deploy.ltmp.checkpoint import load

    config = from_args(CostConfig, args)
    config.check()
    ensure_writable(args.output)
    refuse_overwriting_inputs([("-o", args.output)], [args.checkpoint, args.weights])
    if config.checkpoint is None:
        from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint

        model = load(MODEL_NAME, weights=config.weights or default_base_checkpoint())
    else:
        model = load(config.checkpoint, weights=config.weights)
    doc = measure_cost_model(
        model,
        backend=config.backend,
        batches=config.batches,
        threads=config.threads,
        step=config.step,
        reduce_step=config.reduce_step,
        rounds=config.rounds,
        repeats=config.repeats,
    )
    write_text_atomic(args.output, json.dumps(doc, indent=1) + "\n")
    for entry in doc["batches"]:
        print(
            f"batch {entry['batch']}: a block at {entry['tokens'][-1]} tokens {entry['block_ms'][-1]:.3f} ms, "
            f"reducing adds {entry['fixed_extra_ms'][-1]:.3f} ms (fixed), {entry['merge_extra_ms'][-1]:.3f} ms "
            f"(fixed, merging only), {entry['threshold_extra_ms'][-1]:.3f} ms (threshold)"
        )
    print(f"wrote {args.output}")
    return 0


# -- estimate -------------------------------------------------------------------------------------


def add_estimate(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "estimate",
        run_estimate,
        "Turn a bench result into images/s, cost per million images and the saving against the unpatched "
        "model, per variant, backend and batch size.",
        "ltmp-deploy estimate ltmp-bench/bench.json --price-per-hour 2.50 --images-per-day 5000000",
    )
    p.add_argument("bench", metavar="BENCH.json", help="bench.json from `ltmp-deploy bench`")
    p.add_argument(
        "--price-per-hour",
        type=positive_float,
        required=True,
        metavar="P",
        help="what one machine of the benchmarked kind costs per hour (costs come out in its unit)",
    )
    p.add_argument(
        "--images-per-day",
        type=positive_float,
        metavar="N",
        help="also the machine-hours, cost and saving per day for this many images",
    )
    p.add_argument("--json", action="store_true", help="the estimate as JSON on stdout instead of the table")
    p.add_argument("-o", "--output", metavar="ESTIMATE.json", help="also write the estimate as JSON here")


def run_estimate(args: argparse.Namespace) -> int:
    from ltmp_deploy.files import ensure_writable, write_text_atomic
    from ltmp_deploy.runtime.estimate import cost_document, cost_table, estimate_file

    if args.output:
        ensure_writable(args.output)
        refuse_overwriting_inputs([("-o", args.output)], [args.bench])
    rows = estimate_file(args.bench, args.price_per_hour, args.images_per_day)
    if not args.json:
        print(cost_table(rows, args.price_per_hour, args.images_per_day))
    if not (args.json or args.output):
        return 0
    text = json.dumps(cost_document(rows, args.bench, args.price_per_hour, args.images_per_day), indent=1) + "\n"
    if args.json:
        sys.stdout.write(text)
    if args.output:
        write_text_atomic(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr if args.json else sys.stdout)
    return 0


# -- report ---------------------------------------------------------------------------------------


def add_report(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "report",
        run_report,
        "Write report.md and a self-contained report.html from bench and accuracy results: headline, accuracy "
        "and latency against FLOPs, tokens per block, token grids.",
        "ltmp-deploy report --bench ltmp-bench/bench.json --accuracy accuracy.json --grid digit0.png digit1.png "
        "-o report",
        toolkit=True,
    )
    p.add_argument("--bench", metavar="BENCH.json", help="bench.json from `ltmp-deploy bench`")
    p.add_argument(
        "--accuracy",
        metavar="ACCURACY.json",
        help="an accuracy result (schema ltmp-deploy-accuracy/1: per-variant accuracy and FLOPs, tokens per block)",
    )
    p.add_argument(
        "--grid", nargs="+", metavar="PNG", help="token-visualization grids to show (e.g. from `ltmp-deploy show`)"
    )
    p.add_argument(
        "--headline",
        metavar="VARIANT",
        help="the variant the headline is about, e.g. ltmp-fixed@0.5 (default: the accuracy result's, "
        "else the LTMP fixed-mode variant keeping the fewest FLOPs)",
    )
    p.add_argument(
        "--backend",
        metavar="NAME",
        help="the backend whose latency the headline quotes (default onnxruntime-cpu when measured)",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        default="ltmp-report",
        metavar="DIR",
        help="folder for report.md, report.html and the figures",
    )


def run_report(args: argparse.Namespace) -> int:
    from ltmp_deploy.report.document import write_report

    files = write_report(
        args.output_dir, args.bench, args.accuracy, args.grid or (), variant=args.headline, backend=args.backend
    )
    print("\n".join(files.headline.lines()))
    print(f"wrote {files.markdown} and {files.html}")
    return 0
