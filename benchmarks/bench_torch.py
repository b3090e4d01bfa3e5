"""PyTorch eager on CPU: LTMP fixed mode vs the unpatched model vs the oracle, interleaved.

The oracle is the same ViT whose blocks simply keep the first k_l tokens after attention (no
reduction operations at all): no merge/prune implementation can beat it, so the gap between
fixed mode and the oracle is the overhead of the reduction. Prints measured numbers from this one
run; nothing here is asserted.

    python benchmarks/bench_torch.py --model deit_small_patch16_224 --batch 8 --target 0.5
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from ltmp_deploy.ltmp.flops import schedule_flops, schedule_for_flops
from ltmp_deploy.ltmp.patch import apply_patch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--target", type=float, default=0.5, help="fraction of block FLOPs kept")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="also print where fixed mode spends its time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = apply_patch(timm.create_model(args.model, pretrained=False).eval())
    schedule = schedule_for_flops(model, args.target)
    flops = schedule_flops(model, schedule)
    size = model.patch_embed.img_size
    x = torch.randn(args.batch, 3, *size)

    variants = {"unpatched": ("off", None), "oracle": ("oracle", schedule), "ltmp-fixed": ("fixed", schedule)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for name, (mode, sched) in variants.items():  # warm-up
            model.ltmp_set_mode(mode, sched)
            model(x)
        for _ in range(args.rounds):  # interleaved: drift hits every variant alike
            for name, (mode, sched) in variants.items():
                model.ltmp_set_mode(mode, sched)
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"model {args.model}, batch {args.batch}, threads {args.threads}, torch {torch.__version__}")
    print(f"schedule (r, k) per block: {schedule.pairs()}")
    print(f"block FLOPs kept: {flops.ratio:.3f}; reduction matmuls add {flops.reduction / flops.unpatched_blocks:.4f} of the unpatched block FLOPs")
    print(f"{'variant':<12} {'median ms':>10} {'vs unpatched':>13} {'vs oracle':>10}")
    for k in variants:
        print(f"{k:<12} {med[k]:>10.1f} {med[k] / med['unpatched']:>13.3f} {med[k] / med['oracle']:>10.3f}")

    if args.profile:
        model.ltmp_set_mode("fixed", schedule)
        with torch.inference_mode(), torch.profiler.profile() as prof:
            model(x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
