"""Which models patch, which are refused, and that patching keeps weights, head and pooling."""

import pytest
import timm
import torch
from conftest import MODEL_KINDS, tiny_vit
from timm.models.vision_transformer import ResPostBlock, VisionTransformer

from ltmp_deploy.errors import UnsupportedModelError
from ltmp_deploy.ltmp.patch import apply_patch

NAMES = [
    f"{family}_{size}_patch16_{res}"
    for family in ("vit", "deit")
    for size in ("tiny", "small", "base")
    for res in (224, 384)
    if not (family == "deit" and size in ("tiny", "small") and res == 384)  # timm has no such models
] + [
    "vit_large_patch16_224",
    "vit_large_patch16_384",
    "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_384",
    "vit_small_patch16_224.augreg_in21k",
    "vit_base_patch16_reg4_gap_256",
    "deit3_small_patch16_224",
]


@pytest.mark.parametrize("name", NAMES)
def test_timm_family_patches(name):
    with torch.device("meta"):  # architecture only: no memory, no init cost
        model = timm.create_model(name, pretrained=False)
    patched = apply_patch(model)
    assert all(hasattr(b, "merge_masker") for b in patched.blocks)
    assert patched.ltmp_num_tokens == model.patch_embed.num_patches + model.num_prefix_tokens


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_patch_keeps_weights_and_names(kind):
    plain = tiny_vit(kind)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    patched = apply_patch(plain)
    after = patched.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v)
    extra = set(after) - set(before)
    assert extra == {f"blocks.{i}.{m}.threshold" for i in range(3) for m in ("merge_masker", "prune_masker")}


def test_swin_is_refused_by_name():
    with torch.device("meta"):
        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    with pytest.raises(UnsupportedModelError, match="swin_tiny_patch4_window7_224.*VisionTransformer"):
        apply_patch(model)


def test_unknown_block_type_is_refused():
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, block_fn=ResPostBlock)
    with pytest.raises(UnsupportedModelError, match="block 0 is a ResPostBlock"):
        apply_patch(model)


def test_attention_pooling_is_refused():
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False)
    with pytest.raises(UnsupportedModelError, match="global_pool"):
        apply_patch(model)
