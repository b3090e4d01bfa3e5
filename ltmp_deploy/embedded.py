"""The embedded default model: a small timm ViT trained by the toolkit on the digits set.

No weights can be downloaded, so the default base model is trained here, once, from
scikit-learn's digits (``ltmp_deploy.data.digits``) and cached as a plain timm state dict in
safetensors. The model itself (registered with timm as ``vit_digits_56``) is defined in
``ltmp_deploy.ltmp.embedded_vit``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from ltmp_deploy.data.digits import digits_arrays
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import atomic_output, ensure_writable
from ltmp_deploy.ltmp.embedded_vit import (  # noqa: F401  MODEL_NAME and the sizes are used through this module
    DIGITS_MEAN,
    DIGITS_STD,
    IMAGE_SIZE,
    MODEL_ARGS,
    MODEL_NAME,
    NUM_CLASSES,
    vit_digits_56,
)

# Bump when the architecture or the training recipe changes: it is part of the cache file name,
# so an old cached checkpoint is never mistaken for the new one.
RECIPE_VERSION = 2
DEFAULT_EPOCHS = 30
DEFAULT_SEED = 0
# The training recipe (train_base).
BATCH_SIZE, BASE_LR, WARMUP_EPOCHS, WEIGHT_DECAY, LABEL_SMOOTHING = 64, 1e-3, 2, 0.05, 0.1
# Each training step sees a random quarter of the patches (timm's PatchDropout, as FLIP trains):
# a step costs about a quarter, and neighbouring patches carry nearly the same picture anyway.
PATCH_DROP = 0.75
AUG_SHIFT = 0.1  # largest random shift, as a fraction of the image width
AUG_SCALE = 0.1  # random zoom within 1 +- this
POS_INIT_SCALE = 0.5
CACHE_ENV = "LTMP_DEPLOY_CACHE"


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "ltmp-deploy"


def default_base_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached base checkpoint, training it first (a few minutes on CPU) if missing."""
    folder = _cache_dir(cache_dir)
    path = folder / f"{MODEL_NAME}-r{RECIPE_VERSION}.safetensors"
    if path.is_file() and _is_current(path):
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LTMPError(f"{folder}: cannot create the model cache folder ({exc.strerror})") from exc
    # Two processes racing here both train; the atomic rename makes the last one win whole.
    return train_base(path, epochs=DEFAULT_EPOCHS, seed=DEFAULT_SEED)


def _is_current(path: Path) -> bool:
    """Whether a cached file is a whole checkpoint from this recipe (else it is trained anew)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # unreadable header: treat as stale, retraining overwrites it atomically
        return False
    return meta.get("timm_model") == MODEL_NAME and meta.get("recipe_version") == str(RECIPE_VERSION)


def load_base_model(checkpoint: str | os.PathLike | None = None) -> VisionTransformer:
    """``vit_digits_56`` in eval mode with weights from ``checkpoint`` (default: the cached one)."""
    from safetensors.torch import load_file

    path = Path(checkpoint) if checkpoint is not None else default_base_checkpoint()
    if not path.is_file():
        raise LTMPError(f"{path}: base checkpoint does not exist")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise LTMPError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    model = vit_digits_56()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LTMPError(
            f"{path}: not a {MODEL_NAME} state dict (missing {len(missing)} keys, unexpected {len(unexpected)})"
        )
    return model.eval()


def _augment(images: torch.Tensor, background: float, gen: torch.Generator) -> torch.Tensor:
    """Random shift (up to ``AUG_SHIFT`` of the width) and zoom (1 +- ``AUG_SCALE``) per image,
    the uncovered border filled with black."""
    n = len(images)
    scale = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * AUG_SCALE
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * AUG_SHIFT)  # grid units: the width is 2
    zeros = torch.zeros(n)
    rows = [torch.stack([1 / scale, zeros, shift[:, 0]], 1), torch.stack([zeros, 1 / scale, shift[:, 1]], 1)]
    grid = F.affine_grid(torch.stack(rows, 1), list(images.shape), align_corners=False)
    moved = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + background


def _init_position_embedding(model: VisionTransformer) -> None:
    """Start the learned position embedding from a 2-D sin-cos grid (the class token's at 0).

    With 196 patches and 1259 images, a ViT starting from random position embeddings spends
    most of its epochs discovering which patches are neighbours; this start hands it that.
    """
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    grid = list(model.patch_embed.grid_size)
    with torch.no_grad():
        model.pos_embed.zero_()
        model.pos_embed[0, model.num_prefix_tokens :] = POS_INIT_SCALE * build_sincos2d_pos_embed(grid, model.embed_dim)


def _lr_schedule(epochs: int, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to 1e-5, per step."""
    total = epochs * steps_per_epoch
    warmup = min(WARMUP_EPOCHS * steps_per_epoch, total // 2)

    def lr_at(step: int) -> float:
        if step < warmup:
            return BASE_LR * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 1e-5 + (BASE_LR - 1e-5) * 0.5 * (1.0 + math.cos(math.pi * t))

    return lr_at


@torch.no_grad()
def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(dim=1) == y).sum()) for x, y in zip(images.split(256), labels.split(256)))
    return correct / len(labels)


WEAK_BASE_ACCURACY = 0.95


def train_base(
    out: str | os.PathLike,
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    max_train_images: int | None = None,
) -> Path:
    """Train ``vit_digits_56`` on the digits train split and write it to ``out`` (safetensors).

    AdamW, linear warm-up then cosine decay per step, label smoothing, random shifts and zooms,
    patch dropout, the position embedding started from a sin-cos grid. Seeded and run inside
    ``fork_rng`` so the caller's RNG state is left alone; the same seed gives the same weights on
    the same machine and thread count. ``max_train_images`` cuts the train set, and the test set
    it is scored on, to that many images (for quick tests of the file format only).
    """
    if epochs < 1:
        raise LTMPError(f"epochs must be at least 1, got {epochs}")
    out = ensure_writable(out)  # before minutes of training
    x_train, y_train = _digits_tensors("train", max_train_images)
    x_test, y_test = _digits_tensors("test", max_train_images)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = vit_digits_56(patch_drop_rate=PATCH_DROP)  # PatchDropout holds no weights
        _init_position_embedding(model)
        _fit(model, x_train, y_train, epochs, gen, progress)
        accuracy = _accuracy(model, x_test, y_test)

    _save_base(model, out, accuracy=accuracy, epochs=epochs, seed=seed)
    if accuracy < WEAK_BASE_ACCURACY and max_train_images is None:
        warnings.warn(
            f"{out}: the base model reached only {accuracy:.1%} test accuracy (seed {seed}); try another --seed",
            stacklevel=2,
        )
    return out


def _digits_tensors(split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a digits split, cut to ``limit`` images."""
    images, labels = (torch.from_numpy(a) for a in digits_arrays(split))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _fit(
    model: VisionTransformer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    epochs: int,
    gen: torch.Generator,
    progress: bool,
) -> None:
    """The training loop of :func:`train_base`: every random draw comes from ``gen`` and the seeded global RNG."""
    from tqdm import tqdm

    background = -DIGITS_MEAN[0] / DIGITS_STD[0]  # a black pixel after normalisation
    steps_per_epoch = math.ceil(len(y_train) / BATCH_SIZE)
    lr_at = _lr_schedule(epochs, steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=BASE_LR, weight_decay=WEIGHT_DECAY)
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"training {MODEL_NAME}", unit="step", disable=not progress)
    step = 0  # counted here: a disabled tqdm bar does not count
    with bar:
        for epoch in range(epochs):
            model.train()
            for batch in torch.randperm(len(y_train), generator=gen).split(BATCH_SIZE):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
                x = _augment(x_train[batch], background, gen)
                loss = F.cross_entropy(model(x), y_train[batch], label_smoothing=LABEL_SMOOTHING)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")


def _save_base(model: VisionTransformer, out: Path, *, accuracy: float, epochs: int, seed: int) -> None:
    """``model`` as a plain timm state dict in safetensors, with what made it in the metadata (written whole)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "timm_model": MODEL_NAME,
        "test_accuracy": f"{accuracy:.6f}",
        "format": "timm-state-dict",
        "epochs": str(epochs),
        "seed": str(seed),
        "recipe_version": str(RECIPE_VERSION),
    }
    with atomic_output(out, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=metadata)
