"""Image folders and long predict runs at scale: time to the first batch and peak memory.

Synthetic ImageNet-like folders (1000 class folders, the same 8x8 PNG in every file, one file in
499 corrupt) of each size are written to a temporary folder; every measurement runs in a fresh
Python process, which reports its peak resident memory (``resource.getrusage``) and the
resident memory right after its imports (torch and friends), so the difference is the cost of
the data itself.

- ``folder``: ``ImageFolderDataset`` with the embedded model's transform, a shuffled DataLoader
  (batch 256, no workers): seconds to the first batch, counting the listing; then one pass over
  every image (decoded, not transformed), and the number of files skipped at the end.
- ``predict``: ``ltmp-deploy predict`` of a tiny ONNX model over the first N images, JSON lines
  to a file.

    python benchmarks/folder_scale.py --sizes 10000 100000 --predict 1000 10000 -o results.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = 1000
CORRUPT_EVERY = 499  # prime: the corrupt files spread over the classes


def synthetic_folder(root: Path, images: int, classes: int = CLASSES, corrupt_every: int = CORRUPT_EVERY) -> int:
    """``images`` files in ``classes`` folders ``c0000``..., one PNG's bytes each, every
    ``corrupt_every``-th file a truncated PNG; returns the number of corrupt files written."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3)).save(buffer, format="PNG")
    good = buffer.getvalue()
    bad = good[: len(good) // 2]
    corrupt = 0
    for c in range(classes):
        folder = root / f"c{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(c, images, classes):
            broken = i % corrupt_every == corrupt_every - 1
            corrupt += broken
            (folder / f"{i:07d}.png").write_bytes(bad if broken else good)
    return corrupt


_MEASURE = """
import json, resource, sys, time, warnings
start = time.perf_counter()
import torch, timm
from torch.utils.data import DataLoader
import ltmp_deploy.ltmp.embedded_vit
from ltmp_deploy.data.folder import ImageFolderDataset, transform_for_model
torch.set_num_threads(1)
transform = transform_for_model(timm.create_model("vit_digits_56"))
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
dataset = ImageFolderDataset(sys.argv[1], transform)
listed = time.perf_counter() - t0
images, labels = next(iter(DataLoader(dataset, batch_size=256, shuffle=True)))
first = time.perf_counter() - t0
rss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
dataset.transform = None
t1 = time.perf_counter()
seen = sum(len(b) for b in DataLoader(dataset, batch_size=256, collate_fn=lambda items: items))
full = time.perf_counter() - t1
print(json.dumps({
    "images": len(dataset), "listing_s": listed, "first_batch_s": first, "batch": list(images.shape),
    "imports_rss_mb": imported / 1024, "first_batch_rss_mb": rss_first / 1024, "pass_s": full, "seen": seen,
    "skipped": dataset.skipped, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def measure_folder(root: Path, code: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(root)], cwd=code, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def tiny_onnx(out: Path, code: Path) -> Path:
    """A tiny threshold-mode ViT (32x32, 16 patches, 3 blocks) exported as predict takes it."""
    script = (
        "import sys, torch; sys.path.insert(0, 'tests'); from conftest import tiny_ltmp; "
        "from ltmp_deploy.export.onnx_export import export_onnx; "
        "export_onnx(tiny_ltmp(), sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", script, str(out)], cwd=code, check=True, capture_output=True)
    return out


_PREDICT = """
import resource, runpy, sys
files, out = sys.argv[1], sys.argv[2]
images = [line.rstrip("\\n") for line in open(files)]
sys.argv = ["ltmp-deploy", "predict", sys.argv[3], *images, "--json", "--no-progress"]
sys.stdout = open(out, "w")
try:
    runpy.run_module("ltmp_deploy.cli", run_name="__main__")
except SystemExit as done:
    assert not done.code, done.code
finally:
    sys.stdout.close()
sys.stderr.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) + "\\n")
"""


def measure_predict(onnx: Path, root: Path, count: int, work: Path, code: Path) -> dict:
    files = sorted(str(p) for p in root.rglob("*.png"))
    good = [f for i, f in enumerate(files) if (int(Path(f).stem) % CORRUPT_EVERY) != CORRUPT_EVERY - 1][:count]
    listing, out = work / f"files-{count}.txt", work / f"predict-{count}.jsonl"
    listing.write_text("\n".join(good) + "\n")
    import time

    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PREDICT, str(listing), str(out), str(onnx)],
        cwd=code,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    lines = sum(1 for _ in out.open())
    return {"images": count, "lines": lines, "seconds": seconds, "peak_rss_mb": float(done.stderr.split()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--predict", type=int, nargs="*", default=[1_000, 10_000], help="images per predict run")
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose ltmp_deploy is measured")
    parser.add_argument("-o", "--output", type=Path, help="also write the results, as JSON lines, here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="folder-scale-") as tmp:
        work = Path(tmp)
        for size in args.sizes:
            root = work / f"folder-{size}"
            corrupt = synthetic_folder(root, size)
            row = {"kind": "folder", "files": size, "corrupt": corrupt, **measure_folder(root, args.code)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.predict:
            root = work / f"folder-{args.sizes[-1]}" if args.sizes else work / "folder-predict"
            if not args.sizes:
                synthetic_folder(root, max(args.predict) * 2)
            onnx = tiny_onnx(work / "tiny.onnx", args.code)
            for count in args.predict:
                row = {"kind": "predict", **measure_predict(onnx, root, count, work, args.code)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.output:
        args.output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"python {os.path.relpath(__file__, REPO)} " + " ".join(sys.argv[1:]), file=sys.stderr)


if __name__ == "__main__":
    main()
