"""A fixed schedule's graph with and without the shorter road for blocks that only merge (``k = n - r``).

The checkpoint's schedule is exported twice in fixed mode: as the toolkit exports it (a block that only
merges skips the importance and sorts the unmerged slots, ``ltmp.reduce.merges_only``), and with that
road closed, every block taking the k most important live tokens. Both graphs must give bit-identical
logits on the same images (checked, or the script stops); then they and the unpatched graph are called in
turn every round in ONNX Runtime CPU at one thread, and the per-round ratios are reported (medians and
quartiles; the clock is the calling thread's CPU time).

    python benchmarks/merge_only_ab.py ltmp-demo/fixed.safetensors --rounds 40
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from graph_ab import cpu_runners, quartiles, time_batch

import ltmp_deploy.ltmp.block as block
from ltmp_deploy.export.onnx_export import export_onnx
from ltmp_deploy.ltmp.checkpoint import load
from ltmp_deploy.runtime.backends import infer


def export_variants(checkpoint: str, folder: Path) -> dict[str, Path]:
    model = load(checkpoint, mode="fixed")
    print(f"{checkpoint}: schedule (r, k) {model.ltmp.schedule.pairs()}")
    paths = {name: folder / f"{name}.onnx" for name in ("merge-only road", "general road", "unpatched")}
    export_onnx(model, paths["merge-only road"], validate=False)
    shorter = block.merges_only
    block.merges_only = lambda plan, n: False  # every block takes the k most important live tokens
    try:
        export_onnx(model, paths["general road"], validate=False)
    finally:
        block.merges_only = shorter
    export_onnx(model.ltmp_set_mode("off"), paths["unpatched"], validate=False)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_variants(args.checkpoint, Path(tmp))
        with cpu_runners(paths) as runners:
            size = load(args.checkpoint).patch_embed.img_size
            for batch in args.batch:
                images = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
                short, general = infer(runners["merge-only road"], images), infer(runners["general road"], images)
                if not all(np.array_equal(a, b) for a, b in zip(short.values(), general.values())):
                    raise SystemExit("the two roads give different outputs")
                s = time_batch(runners, images, args.rounds, 20 if batch == 1 else 5)
                ratio = [a / b for a, b in zip(s["merge-only road"], s["general road"])]
                vs = {k: [a / b for a, b in zip(s[k], s["unpatched"])] for k in ("merge-only road", "general road")}
                print(
                    f"batch {batch}: merge-only road / general road {quartiles(ratio)}; vs unpatched: merge-only road "
                    f"{quartiles(vs['merge-only road'])}, general road {quartiles(vs['general road'])}; "
                    f"p50 ms {statistics.median(s['general road']) * 1e3:.3f} -> "
                    f"{statistics.median(s['merge-only road']) * 1e3:.3f}"
                )


if __name__ == "__main__":
    main()
