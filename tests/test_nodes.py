"""How many nodes LTMP's reduction adds per block to an exported graph (benchmarks/node_count.py).

Counted after ONNX Runtime's own graph optimizations, against the oracle (the same ViT keeping
the same token counts, no reduction work): a count, not a timing, so a change that adds nodes to
every block fails here. Per added block: the same tiny model at two depths, so that the first
block (no sizes yet) and the last (sizes unused) do not dilute the figure; width does not enter.
"""

import importlib.util
from pathlib import Path

import pytest
from conftest import one_torch_thread, tiny_vit

from ltmp_deploy.ltmp.flops import schedule_for_flops
from ltmp_deploy.ltmp.patch import apply_patch
from ltmp_deploy.ltmp.schedule import Schedule

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "node_count.py"
NODES_PER_BLOCK = {"fixed": 35, "threshold": 74}  # beyond the oracle's
MERGE_ONLY_NODES_PER_BLOCK = 28  # fixed mode, k = n - r: no importance, no carried maxima


def node_count():
    spec = importlib.util.spec_from_file_location("node_count", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reducing(depth: int):
    """A tiny ViT that merges and prunes in every block (fixed: half the block FLOPs)."""
    model = apply_patch(tiny_vit(depth=depth))
    n = model.ltmp_num_tokens
    model.ltmp_set_thresholds([0.6] * depth, [0.8 / n] * depth)
    model.ltmp_set_mode("fixed", schedule_for_flops(model, 0.5))
    assert all(r > 0 and k < n for r, k in model.ltmp.schedule.pairs()), "every block should merge and prune"
    return model


@pytest.mark.slow
def test_reduction_nodes_per_block_stay_within_bounds():
    counts = node_count()
    with one_torch_thread():
        extra = {depth: counts.extra_op_types(reducing(depth)) for depth in (3, 4)}
    for mode, bound in NODES_PER_BLOCK.items():
        added = extra[4][mode].copy()
        added.subtract(extra[3][mode])
        per_block = sum(added.values())
        assert per_block <= bound, f"{mode}: {per_block} nodes per block beyond the oracle: {dict(+added)}"


def merging(depth: int):
    """A tiny ViT whose fixed schedule merges two tokens in every block and prunes none."""
    model = apply_patch(tiny_vit(depth=depth))
    n = model.ltmp_num_tokens
    model.ltmp_set_mode("fixed", Schedule((2,) * depth, tuple(n - 2 * (i + 1) for i in range(depth))))
    return model


@pytest.mark.slow
def test_a_block_that_only_merges_adds_fewer_nodes():
    counts = node_count()
    with one_torch_thread():
        extra = {depth: counts.extra_op_types(merging(depth), modes=("fixed",))["fixed"] for depth in (3, 4)}
    added = extra[4].copy()
    added.subtract(extra[3])
    per_block = sum(added.values())
    assert per_block <= MERGE_ONLY_NODES_PER_BLOCK, f"{per_block} nodes per merging block: {dict(+added)}"
