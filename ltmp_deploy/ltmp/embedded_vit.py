"""The embedded default model: a small timm ViT for 56x56 digits, registered with timm.

Importing this module registers ``vit_digits_56``, so ``timm.create_model("vit_digits_56")`` and
``timm.data.resolve_data_config(model=...)`` work as for any timm model (``pretrained=False``
only). The model carries its preprocessing (timm's default cfg); the embedded digits set
(``ltmp_deploy.data.digits``) is prepared to match it. Training the base model, and its cache, are
``ltmp_deploy.embedded``'s.
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ltmp_deploy.errors import LTMPError

# 56 px in 4 px patches is a 14x14 grid, 196 patches: the token count of a 224 px ViT in 16 px
# patches. Seven output pixels per input pixel make neighbouring tokens alike, which is the
# redundancy that merging and pruning live on in real images.
IMAGE_SIZE = 56
NUM_CLASSES = 10
# Per-channel mean and std of the digits train split's [0, 1] pixels (all three channels are the
# same grey picture), rounded to 6 digits; tests/test_data.py recomputes them from the split
# (ltmp_deploy.data.digits.compute_mean_std). Change them with the split and IMAGE_SIZE.
DIGITS_MEAN: tuple[float, float, float] = (0.304911, 0.304911, 0.304911)
DIGITS_STD: tuple[float, float, float] = (0.325939, 0.325939, 0.325939)

MODEL_NAME = "vit_digits_56"
MODEL_ARGS = dict(
    img_size=IMAGE_SIZE,
    patch_size=4,  # 14x14 = 196 patches + class token: the token count of a 224 px ViT-S/16
    # Wide enough that a block's matmuls, not the per-operation overhead of the reduction ops,
    # set its latency, so fewer tokens run faster; narrow enough to train in minutes on 2 cores.
    embed_dim=96,
    depth=6,  # deep enough that per-block token schedules have room to differ
    num_heads=3,  # head width 32
    mlp_ratio=4.0,
    num_classes=NUM_CLASSES,
    global_pool="token",
)

# timm looks up ``default_cfgs`` in the module of a registered entrypoint.
default_cfgs = generate_default_cfgs(
    {
        MODEL_NAME: dict(
            input_size=(3, IMAGE_SIZE, IMAGE_SIZE),
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            interpolation="bilinear",
            crop_pct=1.0,
            crop_mode="center",
            num_classes=NUM_CLASSES,
            label_names=tuple(str(c) for c in range(NUM_CLASSES)),
            first_conv="patch_embed.proj",
            classifier="head",
            fixed_input_size=True,
            license="apache-2.0",
            description="ViT trained by ltmp-deploy on scikit-learn's digits (no hub weights)",
        )
    }
)


@register_model
def vit_digits_56(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for 56x56 digits: patch 4 (196 patches), width 96, depth 6, 3 heads, 10 classes."""
    if pretrained:
        raise LTMPError(f"{MODEL_NAME}: has no downloadable weights; load default_base_checkpoint() instead")
    return build_model_with_cfg(
        VisionTransformer,
        MODEL_NAME,
        pretrained=False,
        pretrained_filter_fn=checkpoint_filter_fn,
        **dict(MODEL_ARGS, **kwargs),
    )
