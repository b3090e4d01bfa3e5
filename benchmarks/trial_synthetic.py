"""A trial on a model and folder of our own making (not the digits): what ``ltmp-deploy trial`` gives a site.

1. A synthetic 3-class image folder (64 px; checked patches, discs and striped patches over clutter
   and noise), split train/val/test, made with Pillow and numpy, seeded.
2. A small ViT described in JSON (64 px, patch 8, width 192, 4 blocks, 3 classes), trained on the
   train split with plain torch and saved as timm weights in safetensors.
3. ``ltmp-deploy trial MODEL.json --weights BASE.safetensors --data FOLDER --target 0.5 -o WORKDIR``,
   run in-process through the CLI.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/trial_synthetic.py --out /tmp/synthetic-trial
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

CLASSES = ("checks", "disc", "stripes")
SPLITS = {"train": 200, "val": 50, "test": 100}  # images per class
SIZE = 64
MODEL = {
    "timm_class": "timm.models.vision_transformer.VisionTransformer",
    "config": {
        "img_size": SIZE,
        "patch_size": 8,
        "embed_dim": 192,
        "depth": 4,
        "num_heads": 3,
        "num_classes": len(CLASSES),
    },
    # no crop: the shape may sit near the border
    "preprocessing": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0, "interpolation": "bilinear"},
    "labels": list(CLASSES),
}
EPOCHS, BATCH, LR, WEIGHT_DECAY = 20, 64, 1e-3, 0.05
# Each training step sees a random half of the patches (timm's PatchDropout, as the embedded default
# trains): half the cost on a shared 2-core machine. It holds no weights; evaluation sees every patch.
PATCH_DROP = 0.5


def picture(kind: str, rng: np.random.Generator) -> Image.Image:
    """One image: a noisy background with a few distractor lines, and the class's object (random
    size, place, colour and angle): a plain disc, or a square patch of checks or of stripes."""
    background = tuple(int(c) for c in rng.integers(0, 160, 3))
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 4)):  # clutter the model must learn to ignore
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, SIZE, 4))
        draw.line((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3)))
    colour = tuple(int(c) for c in rng.integers(60, 256, 3))
    r = int(rng.integers(7, 16))
    cx, cy = (int(v) for v in rng.integers(r, SIZE - r, 2))
    if kind == "disc":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:  # checks and stripes share the outline and the colours: only the texture tells them apart
        patch = Image.new("RGB", (2 * r, 2 * r), background)
        pd = ImageDraw.Draw(patch)
        for x in range(0, 2 * r, 4):
            if kind == "stripes":
                pd.rectangle((x, 0, x + 1, 2 * r), fill=colour)
            else:
                for y in range(4 * ((x // 4) % 2), 2 * r, 8):
                    pd.rectangle((x, y, x + 3, y + 3), fill=colour)
        image.paste(patch.rotate(float(rng.integers(0, 180)), fillcolor=background), (cx - r, cy - r))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 18, (SIZE, SIZE, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_folder(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, count in SPLITS.items():
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                picture(kind, rng).save(folder / f"{i:04d}.png")


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as normalised tensors, preprocessed as the description says (mean and std 0.5, no crop)."""
    images, labels = [], []
    for label, kind in enumerate(CLASSES):
        for path in sorted((root / split / kind).glob("*.png")):
            images.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return (x - 0.5) / 0.5, torch.tensor(labels)


def train_base(root: Path, out: Path, seed: int = 0) -> float:
    """The ViT of MODEL trained on train/ (AdamW, warm-up then cosine, flips and shifts, patch dropout,
    the position embedding started from a sin-cos grid); returns its val accuracy."""
    from safetensors.torch import save_file
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    x, y = load_split(root, "train")
    xv, yv = load_split(root, "val")
    model = VisionTransformer(**MODEL["config"], patch_drop_rate=PATCH_DROP)
    with torch.no_grad():  # 600 images are too few to discover which patches are neighbours
        model.pos_embed.zero_()
        model.pos_embed[0, 1:] = 0.5 * build_sincos2d_pos_embed(list(model.patch_embed.grid_size), model.embed_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * math.ceil(len(y) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    for epoch in range(EPOCHS):
        model.train()
        for batch in torch.randperm(len(y)).split(BATCH):
            xb = x[batch]
            xb = torch.where(torch.rand(len(xb), 1, 1, 1) < 0.5, xb.flip(3), xb)
            shift = [int(s) for s in torch.randint(-6, 7, (2,))]
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[batch], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}, val accuracy {_accuracy(model, xv, yv):.3f}", flush=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return _accuracy(model, xv, yv)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((torch.cat([model(b).argmax(1) for b in x.split(256)]) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("synthetic-trial"))
    parser.add_argument("--target", type=float, default=0.5)
    args = parser.parse_args()
    data, model_json, base, workdir = (args.out / n for n in ("shapes", "vit64.json", "vit64.safetensors", "trial"))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not data.is_dir():
        make_folder(data)
    model_json.write_text(json.dumps(MODEL, indent=1))
    made = time.perf_counter()
    if not base.is_file():
        print(f"base model: val accuracy {train_base(data, base):.3f}")
    trained = time.perf_counter()

    from ltmp_deploy.cli import main as cli

    argv = ["trial", str(model_json), "--weights", str(base), "--data", str(data), "--target", str(args.target)]
    argv += ["-o", str(workdir)]
    print("ltmp-deploy " + " ".join(argv), flush=True)
    code = cli(argv)
    done = time.perf_counter()
    print(
        f"wall time: folder {made - started:.0f} s, base training {trained - made:.0f} s, "
        f"trial {done - trained:.0f} s (exit {code})"
    )


if __name__ == "__main__":
    main()
