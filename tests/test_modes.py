"""The three modes on one patched model agree with each other and with unpatched timm."""

import copy

import numpy as np
import pytest
import torch
from conftest import MODEL_KINDS, tiny_vit

from ltmp_deploy.ltmp.patch import apply_patch
from ltmp_deploy.ltmp.schedule import Schedule


def images(n, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def reducing(model):
    """Thresholds that make a tiny random model merge and prune a varying amount."""
    n = model.ltmp_num_tokens
    model.ltmp_set_thresholds([0.6, 0.5, 0.4], [0.6 / n, 0.8 / n, 1.0 / n])
    return model


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_no_reduction_gives_the_unpatched_output(kind):
    plain = tiny_vit(kind)
    x = images(4)
    with torch.no_grad():
        expected = plain(x)
        model = apply_patch(copy.deepcopy(plain))
        model.ltmp_set_thresholds([float("inf")] * 3, [float("-inf")] * 3)
        got_threshold = model(x)
        model.ltmp_set_mode("fixed", Schedule.identity(3, model.ltmp_num_tokens))
        got_fixed = model(x)
    assert (got_threshold - expected).abs().max() <= 1e-5
    assert (got_fixed - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_batched_threshold_mode_equals_each_image_alone(kind):
    model = reducing(apply_patch(tiny_vit(kind)))
    x = images(8, seed=1)
    x[0] = 0.0  # flat: tokens differ by position only
    x[1] *= 50.0  # extreme contrast
    with torch.no_grad():
        batch = model.forward_ltmp(x)
        for i in range(len(x)):
            alone = model.forward_ltmp(x[i : i + 1])
            assert (batch.logits[i] - alone.logits[0]).abs().max() <= 1e-5, f"image {i}"
            for blk, (b, a) in enumerate(zip(batch.decisions, alone.decisions)):
                assert b.n_out[i] == a.n_out[0], f"image {i} block {blk}"
                k = a.kept.shape[1]
                assert torch.equal(b.kept[i, :k], a.kept[0]) and bool((b.kept[i, k:] == -1).all())
                assert torch.equal(b.merge_dst[i, : a.merge_dst.shape[1]], a.merge_dst[0])
    final = batch.decisions[-1].n_out
    assert final.max() > final.min(), "the batch should be ragged, or padding is not exercised"


def test_batch_mixes_unpruned_heavily_reduced_and_ordinary_images(golden_model, golden_expected):
    """Eight images: the authors' six plus two; one is never pruned, one loses most tokens."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.from_numpy(golden_expected["images"]), 10 * torch.randn(2, 3, 64, 64, generator=g)])
    model = golden_model
    # Block 0 prunes nothing of image 6 at the authors' thresholds; lower the later prune
    # thresholds a little so that this image is never pruned while the all-zero one still is.
    model.ltmp_set_thresholds(model.ltmp_thresholds()[0], [0.012, 0.005, 0.005, 0.005])
    with torch.no_grad():
        batch = model.forward_ltmp(x)
        pruned = [torch.stack([d.n_in - (d.merge_dst >= 0).sum(1) - d.n_out for d in batch.decisions]).T]
        for i in range(len(x)):
            alone = model.forward_ltmp(x[i : i + 1])
            assert (batch.logits[i] - alone.logits[0]).abs().max() <= 1e-5, f"image {i}"
    pruned = pruned[0]
    final = batch.decisions[-1].n_out
    assert bool((pruned == 0).all(dim=1).any()), f"no image kept every token from pruning: {pruned.tolist()}"
    assert float(final.min()) <= 0.15 * model.ltmp_num_tokens, f"no image lost most tokens: {final.tolist()}"


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_fixed_mode_with_one_images_counts_equals_threshold_mode(kind):
    model = reducing(apply_patch(tiny_vit(kind)))
    x = images(1, seed=2)
    with torch.no_grad():
        thr = model.forward_ltmp(x)
        schedule = Schedule(
            tuple(int((d.merge_dst >= 0).sum()) for d in thr.decisions),
            tuple(int(d.n_out[0]) for d in thr.decisions),
        )
        assert schedule.merges != (0, 0, 0) and schedule.keeps[-1] < model.ltmp_num_tokens - schedule.merges[0]
        model.ltmp_set_mode("fixed", schedule)
        fixed = model.forward_ltmp(x)
    assert (fixed.logits - thr.logits).abs().max() <= 1e-5
    for f, t in zip(fixed.decisions, thr.decisions):
        assert torch.equal(f.kept, t.kept) and torch.equal(f.merge_dst, t.merge_dst)


@pytest.mark.parametrize("kind", ["vit", "registers"])
def test_train_mode_forward_equals_threshold_mode_and_thresholds_get_gradients(kind):
    model = reducing(apply_patch(tiny_vit(kind)))
    x = images(4, seed=3)
    with torch.no_grad():
        expected = model(x)
    model.ltmp_set_mode("train")
    out = model.forward_ltmp(x)
    assert (out.logits - expected).abs().max() <= 1e-4
    from ltmp_deploy.ltmp.flops import kept_flops_ratio

    loss = out.logits.logsumexp(-1).mean() + kept_flops_ratio(model, out.decisions)
    loss.backward()
    grads = [b.merge_masker.threshold.grad for b in model.blocks] + [
        b.prune_masker.threshold.grad for b in model.blocks
    ]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_source_map_accounts_for_every_patch():
    model = reducing(apply_patch(tiny_vit("registers")))
    x = images(3, seed=4)
    with torch.no_grad():
        out = model.forward_ltmp(x, track_source=True)
    src, size, valid = out.tokens.source, out.tokens.size, out.tokens.valid
    prefix = model.num_prefix_tokens
    # Every real patch token stands for exactly `size` patches, each patch at most once.
    np.testing.assert_allclose((src.sum(-1) * valid)[:, prefix:], (size * valid)[:, prefix:], atol=1e-5)
    assert float((src * valid[..., None]).sum(1).max()) <= 1.0 + 1e-5
    assert float(src[:, :prefix].abs().sum()) == 0.0


def test_every_token_is_kept_merged_or_pruned_exactly_once():
    model = reducing(apply_patch(tiny_vit("registers")))
    with torch.no_grad():
        out = model.forward_ltmp(images(5, seed=6))
    total_pruned = 0
    for d in out.decisions:
        merged, pruned = d.merged().sum(1), d.pruned().sum(1)
        torch.testing.assert_close((merged + pruned + d.n_out.long()).float(), d.n_in)
        total_pruned += int(pruned.sum())
    assert total_pruned > 0


@pytest.mark.parametrize("mode", ["threshold", "fixed"])
def test_plain_forward_skips_the_decisions_and_gives_the_same_logits(mode):
    model = reducing(apply_patch(tiny_vit()))
    x = images(3)
    with torch.no_grad():
        recorded = model.forward_ltmp(x)
        if mode == "fixed":
            model.ltmp_set_mode("fixed", Schedule((2, 1, 1), (12, 9, 6)))
            recorded = model.forward_ltmp(x)
        bare = model.forward_ltmp(x, record=False)
        logits = model(x)
    assert len(recorded.decisions) == 3 and bare.decisions == []
    assert torch.equal(bare.logits, recorded.logits) and torch.equal(logits, recorded.logits)
