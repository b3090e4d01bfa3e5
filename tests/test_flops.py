"""Our FLOPs accounting against torch's own FlopCounterMode."""

import pytest
import timm
import torch
from conftest import tiny_vit
from torch.utils.flop_counter import FlopCounterMode

from ltmp_deploy.ltmp.flops import image_flops, schedule_flops, schedule_for_flops, unpatched_flops
from ltmp_deploy.ltmp.patch import apply_patch


def counted(model, x):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


@pytest.mark.slow
def test_vit_small_fixed_mode_matches_flop_counter_within_half_a_percent():
    model = apply_patch(timm.create_model("vit_small_patch16_224", pretrained=False).eval())
    schedule = schedule_for_flops(model, 0.5)
    model.ltmp_set_mode("fixed", schedule)
    ours = schedule_flops(model, schedule)
    assert 0.45 <= ours.ratio <= 0.55
    theirs = counted(model, torch.randn(1, 3, 224, 224))
    # Blocks, the reduction's matmuls, embedding and head: all of what the counter sees but the
    # head-mean of the keys (H x N*D MACs per block).
    assert abs(2 * ours.total - theirs) / theirs <= 0.005, (2 * ours.total, theirs)

    model.ltmp_set_mode("off")
    for blk in model.blocks:  # the counter does not see inside CPU fused attention: count the math path
        blk.attn.fused_attn = False
    plain = unpatched_flops(model)
    assert abs(2 * plain.total - counted(model, torch.randn(1, 3, 224, 224))) / (2 * plain.total) <= 0.02


def test_threshold_mode_per_image_flops_follow_each_images_counts():
    model = apply_patch(tiny_vit())
    n = model.ltmp_num_tokens
    model.ltmp_set_thresholds([0.6, 0.5, 0.4], [0.6 / n, 0.8 / n, 1.0 / n])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_ltmp(x)
    reports = image_flops(model, out.decisions)
    for i, report in enumerate(reports):
        with torch.no_grad():
            alone = counted(model, x[i : i + 1])
        # The counter also sees the importance / masking matmuls of the padded path; ours
        # counts blocks, reduction, embedding and head. They agree within 2%.
        assert abs(2 * report.total - alone) / alone <= 0.02, (i, 2 * report.total, alone)
        assert report.ratio < 1.0
    assert len({round(r.blocks) for r in reports}) > 1
