"""A hand-built case checked by value: the arithmetic of docs/arithmetic.md, step by step."""

import json
import math

import pytest
import torch
from conftest import MODEL_KINDS, tiny_ltmp
from timm.layers import Attention

from ltmp_deploy.ltmp.block import proportional_attention
from ltmp_deploy.ltmp.reduce import (
    Mode,
    Plan,
    Tokens,
    merge_and_prune,
    merges_only,
    prefix_importance,
    token_importance,
)
from ltmp_deploy.ltmp.schedule import Schedule

PREFIX = prefix_importance(torch.float32)  # what a prefix token's importance is, above every threshold


def case():
    # Sources: positions 0, 2, 4, 6; destinations 1, 3, 5. Token 0 is the class token.
    metric = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0.1], [0, 0.1, 1], [0.6, 0, 0.8]], dtype=torch.float32
    )[None]
    x = torch.tensor([[t, 10.0 * t] for t in range(7)])[None]
    size = torch.tensor([[1.0, 1, 2, 1, 3, 1, 1]])[..., None]  # per-token values are columns (B, N, 1)
    imp = torch.tensor([[PREFIX, 0.1, 0.5, 0.05, 0.2, 0.01, 0.3]])
    return Tokens(x, size), metric, imp


def threshold_plan(merge, prune):
    return Plan("threshold", merge_threshold=torch.tensor([merge]), prune_threshold=torch.tensor([prune]))


@pytest.mark.parametrize("plan", [threshold_plan(0.9, 0.1), Plan("fixed", r=2, k=4)], ids=["threshold", "fixed"])
def test_merge_then_prune_by_value(plan):
    tokens, metric, imp = case()
    out, decision = merge_and_prune(tokens, metric, imp, num_prefix=1, plan=plan)
    # 2 -> 5 and 4 -> 1 merge (similarity 0.995); 6's best (0.796) is below the threshold;
    # the class token, identical to token 3, may never merge.
    assert decision.merge_dst.tolist() == [[-1, 5, 1, -1]]
    # Order: unmerged sources (0, 6) then destinations (1, 3, 5); 3 is pruned (importance 0.05),
    # 1 inherits importance 0.2 from 4 and survives, 5 inherits 0.5 from 2.
    assert decision.kept.tolist() == [[0, 6, 1, 5]]
    assert out.size[..., 0].tolist() == [[1.0, 1.0, 4.0, 3.0]]
    x = tokens.x[0]
    expected = torch.stack([x[0], x[6], (x[1] * 1 + x[4] * 3) / 4, (x[5] * 1 + x[2] * 2) / 3])
    torch.testing.assert_close(out.x[0], expected)
    assert decision.n_out.tolist() == [4]


def test_importance_is_carried_by_max_not_mean():
    tokens, metric, imp = case()
    imp[0, 1] = 0.0  # destination 1 itself unimportant; only its merged source (0.2) keeps it
    out, decision = merge_and_prune(tokens, metric, imp, num_prefix=1, plan=threshold_plan(0.9, 0.15))
    assert 1 in decision.kept[0].tolist()


@pytest.mark.parametrize("num_prefix", [2, 5])
def test_prefix_tokens_never_merge_or_get_pruned_and_stay_in_front(num_prefix):
    n = 12
    torch.manual_seed(0)
    metric = torch.randn(1, n, 4)
    metric[0, 1] = metric[0, 2]  # a prefix destination identical to a patch source
    metric[0, 0] = metric[0, 3]  # a prefix source identical to a patch destination
    x = torch.randn(1, n, 2)
    imp = torch.rand(1, n)
    imp[0, :num_prefix] = PREFIX
    out, decision = merge_and_prune(Tokens(x, torch.ones(1, n, 1)), metric, imp, num_prefix, threshold_plan(-1.0, 0.5))
    kept = decision.kept[0].tolist()
    assert kept[:num_prefix] == list(range(num_prefix))
    merge_dst = decision.merge_dst[0].tolist()
    for s, d in enumerate(merge_dst):
        if 2 * s < num_prefix:
            assert d == -1, "a prefix token merged away"
        assert d == -1 or d >= num_prefix, "a token merged into a prefix token"
    torch.testing.assert_close(out.x[0, :num_prefix], x[0, :num_prefix])


def test_proportional_attention_equals_duplicated_tokens():
    """A token of size 2 is attended to exactly like two identical copies of it."""
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(1, 5, 16)
    dup = torch.cat([x, x[:, 2:3]], dim=1)
    with torch.no_grad():
        merged_out, probs, _ = proportional_attention(
            attn, x, torch.tensor([[1.0, 1, 2, 1, 1]])[..., None], None, soft=False
        )
        dup_out, dup_probs, _ = proportional_attention(attn, dup, torch.ones(1, 6, 1), None, soft=False)
    torch.testing.assert_close(merged_out, dup_out[:, :5], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs[..., 2], dup_probs[..., :5, 2] + dup_probs[..., :5, 5], atol=1e-6, rtol=1e-5)


def test_importance_ignores_padding_queries_and_keys():
    a = torch.zeros(1, 2, 4, 4)
    a[0, :, :3, :3] = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    a[0, :, 3, :] = 0.25  # a padding query row (garbage that must not count)
    imp = token_importance(a, torch.tensor([[1.0, 1, 1, 0]])[..., None], num_prefix=1)
    assert imp[0, 0] == PREFIX
    torch.testing.assert_close(imp[0, 1:], torch.tensor([(0.25 + 0.6 + 0.1) / 3, (0.25 + 0.2 + 0.8) / 3, 0.0]))
    assert not math.isnan(float(imp.sum()))


def test_a_block_left_with_only_the_class_token_still_runs():
    tokens = Tokens(torch.randn(2, 1, 4), torch.ones(2, 1, 1))
    imp = torch.full((2, 1), PREFIX)
    out, decision = merge_and_prune(tokens, torch.randn(2, 1, 3), imp, 1, threshold_plan(0.1, 0.5))
    assert out.x.shape == (2, 1, 4) and decision.merge_dst.tolist() == [[-1], [-1]]


def test_without_prefix_tokens_the_most_important_token_survives():
    tokens, metric, imp = case()
    imp[0, 0] = 0.02
    out, decision = merge_and_prune(tokens, metric, imp, num_prefix=0, plan=threshold_plan(2.0, 10.0))
    assert decision.kept.tolist() == [[2]] and decision.n_out.tolist() == [1]


def test_a_mode_is_its_name_in_text_json_and_lookups():
    mode = Mode("fixed")
    assert mode is Mode.FIXED and mode == "fixed" and {"fixed": 1}[mode] == 1
    assert (str(mode), f"{mode}", repr(mode), json.dumps(mode)) == ("fixed", "fixed", "'fixed'", '"fixed"')
    assert Plan("train").mode is Mode.TRAIN and Plan("train").mode.soft and not Plan("threshold").mode.soft
    assert [m for m in Mode if m.reduces] == ["train", "threshold", "fixed"]
    assert [m for m in Mode if m.scheduled] == ["fixed", "oracle"]
    with pytest.raises(ValueError):
        Mode("fast")
    with pytest.raises(ValueError, match="no merging in mode 'oracle'"):
        merge_and_prune(*case(), num_prefix=1, plan=Plan("oracle", k=3))


def assert_the_shortcut_changes_nothing(model, shortcut: str, monkeypatch) -> None:
    """Logits, source maps and decisions the same with the blocks' ``shortcut`` (a predicate of
    ``ltmp.block``) taken and with it closed, every block then taking the whole reduction."""
    import ltmp_deploy.ltmp.block as block

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = model.forward_ltmp(x, track_source=True)
        monkeypatch.setattr(block, shortcut, lambda plan, n: False)
        full = model.forward_ltmp(x, track_source=True)
    assert torch.equal(fast.logits, full.logits)
    assert torch.equal(fast.tokens.source, full.tokens.source)
    for a, b in zip(fast.decisions, full.decisions):
        assert torch.equal(a.kept, b.kept) and torch.equal(a.merge_dst, b.merge_dst)


def test_a_block_that_keeps_every_token_passes_them_through_as_the_full_reduction_would(monkeypatch):
    model = tiny_ltmp("fixed")
    model.ltmp_set_mode("fixed", Schedule((0, 3, 0), (17, 12, 12)))
    assert_the_shortcut_changes_nothing(model, "passes_through", monkeypatch)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_block_that_only_merges_keeps_what_the_full_reduction_keeps(kind, monkeypatch):
    """k = n - r: the survivors taken without the importance are those the k most important give."""
    model = tiny_ltmp("fixed", kind)
    n = model.ltmp_num_tokens
    schedule = Schedule((4, 3, 2), (n - 4, n - 7, n - 10))  # only merges, only merges, merges and prunes
    model.ltmp_set_mode("fixed", schedule)
    plans = [(Plan("fixed", r=r, k=k), m) for r, (m, k) in zip(schedule.merges, schedule.token_counts(n))]
    assert [merges_only(plan, m) for plan, m in plans] == [True, True, False]
    assert_the_shortcut_changes_nothing(model, "merges_only", monkeypatch)
