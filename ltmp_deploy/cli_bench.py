"""The ``bench``, ``estimate`` and ``report`` subcommands: each turns its options into one library call.

Imports nothing heavy at module level: ``ltmp-deploy --help`` stays instant, and ``estimate`` runs
on a field install (no torch, no matplotlib).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def _bench_command(args: argparse.Namespace) -> str:
    """The command that repeats this run (but for its --note): every setting spelled out."""
    parts = ["ltmp-deploy", "bench"] + ([args.checkpoint] if args.checkpoint else [])
    if args.weights:
        parts += ["--weights", args.weights]
    parts += ["--targets", *map(str, args.targets)]
    parts += ["--no-threshold"] if args.no_threshold else ["--threshold-target", str(args.threshold_target)]
    parts += ["--from-checkpoint"] if args.from_checkpoint else []
    parts += [
        "--batch",
        *map(str, args.batch),
        "--backends",
        *args.backends,
        "--rounds",
        str(args.rounds),
        "--warmup",
        str(args.warmup),
    ]
    parts += ["--threads", str(args.threads)] if args.threads else []
    parts += ["--opset", str(args.opset), "--merge-threshold", str(args.merge_threshold)]
    parts += (["--results-md", args.results_md] if args.results_md else []) + ["-o", args.output_dir]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_bench(args: argparse.Namespace) -> int:
    from ltmp_deploy.bench.run import BenchConfig, run_bench
    from ltmp_deploy.bench.tables import LATENCY_HEADER, latency_rows, markdown_table
    from ltmp_deploy.bench.write import FILES, prepare_output, write_bench
    from ltmp_deploy.files import ensure_writable_folder, refuse_overwriting_inputs
    from ltmp_deploy.runtime.bench_results import backends, batches

    prepare_output(args.output_dir, args.results_md, create=False)  # fail now, not after the timing
    if args.workdir:
        ensure_writable_folder(args.workdir, "--workdir")
    written = [("-o", f"{args.output_dir}/{name}") for name in FILES.values()] + [("--results-md", args.results_md)]
    refuse_overwriting_inputs(written, [args.checkpoint, args.weights])
    config = BenchConfig(
        checkpoint=args.checkpoint,
        weights=args.weights,
        targets=tuple(args.targets),
        threshold_target=None if args.no_threshold else args.threshold_target,
        from_checkpoint=args.from_checkpoint,
        batches=tuple(args.batch),
        backends=tuple(args.backends),
        rounds=args.rounds,
        warmup=args.warmup,
        threads=args.threads,
        opset=args.opset,
        merge_threshold=args.merge_threshold,
        workdir=args.workdir,
        note=args.note or "",
        command=_bench_command(args),
    )
    doc = run_bench(config)
    for skip in doc["skipped"]:
        print(f"skipped {skip['backend']}{', ' + skip['variant'] if skip.get('variant') else ''}: {skip['reason']}")
    for backend in backends(doc):
        for batch in batches(doc):
            print(f"\n{backend}, batch {batch}:\n{markdown_table(LATENCY_HEADER, latency_rows(doc, backend, batch))}")
    paths = write_bench(doc, args.output_dir, args.results_md)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from ltmp_deploy.files import ensure_writable, refuse_overwriting_inputs, write_text_atomic
    from ltmp_deploy.runtime.estimate import cost_document, cost_table, estimate_file

    if args.json not in (None, "-"):
        ensure_writable(args.json)
        refuse_overwriting_inputs([("--json", args.json)], [args.bench])
    rows = estimate_file(args.bench, args.price_per_hour, args.images_per_day)
    if args.json is None:
        print(cost_table(rows, args.price_per_hour, args.images_per_day))
        return 0
    text = json.dumps(cost_document(rows, args.bench, args.price_per_hour, args.images_per_day), indent=1) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        write_text_atomic(args.json, text)
        print(cost_table(rows, args.price_per_hour, args.images_per_day))
        print(f"wrote {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ltmp_deploy.report.document import write_report

    files = write_report(
        args.output_dir, args.bench, args.accuracy, args.grid or (), variant=args.headline, backend=args.backend
    )
    print("\n".join(files.headline.lines()))
    print(f"wrote {files.markdown} and {files.html}")
    return 0
