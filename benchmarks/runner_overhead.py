"""What running a graph through the runner contract costs per call, against a raw ``InferenceSession.run``.

Session.run (so predict) and ``ltmp-deploy bench`` run an ONNX graph as
``ltmp_deploy.runtime.backends.infer`` on the runner ``open_runner`` opens (``LeanOnnxrtRunner``, a
Polygraphy ``OnnxrtRunner``). Three calls are timed on one and the same InferenceSession (CPU
provider, ``--threads`` intra-op threads), interleaved round by round with the toolkit's own
``runtime.bench.interleaved``:

- ``raw``: ``session.run(None, {input: batch})``;
- ``polygraphy``: Polygraphy's stock ``OnnxrtRunner(session).infer(feed, check_inputs=False)``;
- ``runner``: ``infer(target, batch)``, the toolkit's path.

Graphs: the tiny test ViT (32x32 in 8 px patches, 3 blocks of width 48, 5 classes: the tests' model,
random weights) and the embedded default (``vit_digits_56`` with its cached base weights, which
``default_base_checkpoint`` trains once if they are missing; nothing is downloaded), each in fixed
mode at ``schedule_for_flops(model, 0.5)``, exported without and with decision outputs. Rounds per
graph and batch: enough for about ``--seconds`` of timing, at least ``--min-rounds``. Each ratio is
the median over rounds of that round's ratio (and quartiles); the cost is the median per-round
difference in microseconds.

    OMP_NUM_THREADS=1 python benchmarks/runner_overhead.py --threads 1 --batch 1 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from ltmp_deploy.export.onnx_export import export_onnx
from ltmp_deploy.ltmp.checkpoint import create_model
from ltmp_deploy.ltmp.flops import schedule_for_flops
from ltmp_deploy.runtime.backends import close, infer, open_runner
from ltmp_deploy.runtime.bench import interleaved, paired_samples

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=5)


def build_model(name: str) -> torch.nn.Module:
    from ltmp_deploy.embedded import MODEL_NAME, default_base_checkpoint

    if name == MODEL_NAME:
        return create_model(MODEL_NAME, weights=default_base_checkpoint())
    torch.manual_seed(0)
    tiny = create_model("vit_tiny_patch16_224", **TINY)
    with torch.no_grad():
        for blk in tiny.blocks:  # peaked attention, as the tests' tiny ViT
            blk.attn.qkv.weight[: 2 * blk.attn.attn_dim] *= 4.0
    return tiny


def graphs(folder: Path, names: list[str]) -> dict[str, Path]:
    out = {}
    for name in names:
        model = build_model(name)
        model.eval().ltmp_set_mode("fixed", schedule_for_flops(model, 0.5))
        for decisions in (False, True):
            label = f"{name} fixed{' +decisions' if decisions else ''}"
            path = folder / f"{name}{'_dec' if decisions else ''}.onnx"
            out[label] = export_onnx(model, path, decisions=decisions, validate=False).path
    return out


def time_graph(path: Path, batch: int, threads: int, seconds: float, min_rounds: int) -> dict[str, object]:
    from polygraphy.backend.onnxrt import OnnxrtRunner

    target = open_runner(path, "onnxruntime", ["CPUExecutionProvider"], threads)
    session = target.runner.sess
    stock = OnnxrtRunner(session, name="stock")
    stock.activate()
    images = np.random.default_rng(0).standard_normal((batch, *target.input_shape[1:])).astype(np.float32)
    feed = {target.input_name: images}
    calls = {
        "raw": lambda: session.run(None, feed),
        "polygraphy": lambda: stock.infer(feed, check_inputs=False),
        "runner": lambda: infer(target, images),
    }
    probe = interleaved(calls, batch, rounds=5, warmup=3)
    per_round = sum(t.median_ms for t in probe.values()) / 1e3
    rounds = max(min_rounds, int(seconds / per_round))
    timings = interleaved(calls, batch, rounds=rounds, warmup=20)
    stock.deactivate()
    close(target)
    raw = timings["raw"].samples_ms
    row: dict[str, object] = {"rounds": rounds, "raw_us": statistics.median(raw) * 1e3}
    for name in ("polygraphy", "runner"):
        got = timings[name].samples_ms
        row[name] = paired_samples(got, raw)
        row[f"{name}_us"] = statistics.median(g - r for g, r in zip(got, raw)) * 1e3
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0, help="timing per graph and batch (default 20)")
    parser.add_argument("--min-rounds", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=["tiny", "vit_digits_56"], help="tiny, vit_digits_56")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ltmp-runner-overhead-") as tmp:
        found = graphs(Path(tmp), args.models)
        print(
            "| graph | batch | rounds | raw run, median µs | Polygraphy OnnxrtRunner / raw | its cost, µs "
            "| toolkit runner path / raw | its cost, µs |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for label, path in found.items():
            for batch in args.batch:
                r = time_graph(path, batch, args.threads, args.seconds, args.min_rounds)
                cells = [label, str(batch), str(r["rounds"]), f"{r['raw_us']:.0f}"]
                for name in ("polygraphy", "runner"):
                    median, q1, q3 = r[name]
                    cells += [f"{median:.3f} ({q1:.3f}-{q3:.3f})", f"{r[f'{name}_us']:+.1f}"]
                print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
