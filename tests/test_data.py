"""Datasets, preprocessing parity with timm, and the embedded default model (fast checks only).

The full ``train_base`` run is too long for the tests; here it runs for one step to check the
file it writes.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image

from ltmp_deploy import embedded
from ltmp_deploy.data import digits
from ltmp_deploy.data.digits import DIGITS_MEAN, DIGITS_STD, DigitsDataset, digits_arrays, split_indices
from ltmp_deploy.data.folder import ImageFolderDataset, check_classes, transform_for_model, warn_skipped
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.runtime.preprocess import preprocess

IMAGENET_CFG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}


# ---------------------------------------------------------------- digits


def test_splits_fixed_disjoint_stratified():
    split_indices.cache_clear()
    first = {k: v.copy() for k, v in split_indices().items()}
    split_indices.cache_clear()
    again = split_indices()
    for name in digits.SPLITS:
        assert np.array_equal(first[name], again[name])
    assert {k: len(v) for k, v in first.items()} == {"train": 1259, "val": 179, "test": 359}
    together = np.concatenate(list(first.values()))
    assert len(np.unique(together)) == len(together) == 1797
    # Pin the split itself: a change would silently make cached base checkpoints' accuracy lie.
    digest = hashlib.sha256(first["test"].astype(np.int64).tobytes()).hexdigest()[:16]
    assert digest == "1fd94c44edcb2804"
    _, labels = digits._load()
    for name, frac in (("test", 0.2), ("val", 0.1)):
        counts = np.bincount(labels[first[name]], minlength=10)
        expected = np.bincount(labels, minlength=10) * frac
        assert np.all(np.abs(counts - expected) <= 0.5 + 1e-9), (name, counts)


def test_digits_arrays_and_dataset():
    raw, raw_labels = digits_arrays("val", normalize=False)
    assert raw.shape == (179, 3, 56, 56) and raw.dtype == np.float32
    assert raw.min() == 0.0 and raw.max() == 1.0
    assert np.array_equal(raw[:, 0], raw[:, 1]) and np.array_equal(raw[:, 0], raw[:, 2])
    norm, labels = digits_arrays("val")
    assert np.array_equal(labels, raw_labels) and labels.dtype == np.int64
    np.testing.assert_allclose(norm, (raw - DIGITS_MEAN[0]) / DIGITS_STD[0], atol=1e-6)
    ds = DigitsDataset("test")
    x, y = ds[5]
    assert len(ds) == 359 and x.shape == (3, 56, 56) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < 10
    with pytest.raises(ValueError):
        digits_arrays("holdout")  # type: ignore[arg-type]


def test_mean_std_constants_match_train_split():
    mean, std = digits.compute_mean_std()
    np.testing.assert_allclose(mean, DIGITS_MEAN, atol=1e-6)
    np.testing.assert_allclose(std, DIGITS_STD, atol=1e-6)


# ---------------------------------------------------------------- embedded model


def test_vit_digits_56_builds_with_matching_data_config():
    model = timm.create_model("vit_digits_56")
    assert model.patch_embed.num_patches == 196 and model.num_prefix_tokens == 1
    assert model.global_pool == "token" and model.num_classes == 10
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg == {
        "input_size": (3, 56, 56),
        "interpolation": "bilinear",
        "mean": DIGITS_MEAN,
        "std": DIGITS_STD,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    assert model.pretrained_cfg["num_classes"] == 10
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 56, 56)).shape == (2, 10)
    with pytest.raises(LTMPError, match="vit_digits_56"):
        timm.create_model("vit_digits_56", pretrained=True)


def test_digits_match_timm_transform_and_runtime_preprocess():
    # The dataset is, bit for bit, timm's eval transform applied to the 8x8 pictures.
    pictures, _ = digits.raw_images("test")
    expected, _ = digits_arrays("test")
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("vit_digits_56"))
    transform = timm.data.create_transform(**cfg, is_training=False)
    pil = [Image.fromarray(p, mode="L").convert("RGB") for p in pictures[:40]]
    via_timm = torch.stack([transform(im) for im in pil]).numpy()
    assert np.abs(via_timm - expected[:40]).max() <= 1e-6
    assert np.abs(preprocess(pil, cfg) - expected[:40]).max() <= 1e-6
    assert np.abs(preprocess(pictures[:40, :, :, None], cfg) - expected[:40]).max() <= 1e-6


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    embedded.train_base(out, epochs=1, seed=3, progress=False, max_train_images=32)
    return out


@pytest.mark.slow
def test_train_base_writes_timm_state_dict(tiny_checkpoint):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(tiny_checkpoint), "pt") as f:
        meta = f.metadata()
    assert meta["timm_model"] == "vit_digits_56" and meta["format"] == "timm-state-dict"
    assert 0.0 <= float(meta["test_accuracy"]) <= 1.0
    model = timm.create_model("vit_digits_56")
    model.load_state_dict(load_file(str(tiny_checkpoint)), strict=True)
    assert [p.name for p in tiny_checkpoint.parent.iterdir()] == ["tiny.safetensors"]  # no temp left
    loaded = embedded.load_base_model(tiny_checkpoint)
    assert not loaded.training


@pytest.mark.slow
def test_train_base_is_atomic_and_seeded(tmp_path, tiny_checkpoint, monkeypatch):
    from safetensors.torch import load_file

    again = embedded.train_base(tmp_path / "again.safetensors", epochs=1, seed=3, progress=False, max_train_images=32)
    a, b = load_file(str(tiny_checkpoint)), load_file(str(again))
    assert all(torch.equal(a[k], b[k]) for k in a)

    import safetensors.torch

    def broken_save(state, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    target = tmp_path / "broken.safetensors"
    with pytest.raises(OSError):
        embedded.train_base(target, epochs=1, seed=0, progress=False, max_train_images=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.safetensors"]


def test_default_base_checkpoint_trains_once_and_caches(tmp_path, tiny_checkpoint, monkeypatch):
    calls = []

    def fake_train(out, *, epochs, seed, progress=True):
        calls.append(out)
        Path(out).write_bytes(tiny_checkpoint.read_bytes())
        return Path(out)

    monkeypatch.setattr(embedded, "train_base", fake_train)
    monkeypatch.setenv("LTMP_DEPLOY_CACHE", str(tmp_path / "cache"))
    first = embedded.default_base_checkpoint()
    second = embedded.default_base_checkpoint()
    assert first == second and first.parent == tmp_path / "cache" and len(calls) == 1
    explicit = embedded.default_base_checkpoint(tmp_path / "other")
    assert explicit.parent == tmp_path / "other" and len(calls) == 2
    explicit.write_bytes(b"a stale or damaged cache file")  # not a checkpoint of this recipe
    assert embedded.default_base_checkpoint(tmp_path / "other") == explicit and len(calls) == 3
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(LTMPError, match="blocker"):
        embedded.default_base_checkpoint(tmp_path / "blocker" / "cache")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LTMPError, match="junk.safetensors"):
        embedded.load_base_model(tmp_path / "junk.safetensors")


# ---------------------------------------------------------------- image folders


def _write_image(path: Path, size: tuple[int, int], seed: int, fmt: str | None = None) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)


@pytest.fixture
def image_tree(tmp_path) -> Path:
    root = tmp_path / "images"
    _write_image(root / "cat" / "a.png", (40, 30), 0)
    _write_image(root / "cat" / "nested" / "b.jpg", (33, 50), 1)
    _write_image(root / "dog" / "c.png", (32, 32), 2)
    (root / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "dog" / "notes.txt").write_text("labelling notes")
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored, not counted
    _write_image(root / "emu" / "d.png", (20, 64), 3)
    return root


def test_image_folder_skips_and_counts_unreadable_files(image_tree):
    model = timm.create_model("vit_digits_56")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # listing opens nothing but the first image: no warning yet
        ds = ImageFolderDataset(image_tree, transform=transform_for_model(model))
    # notes.txt is not named as an image: left out when listing; corrupt.jpg is found when read.
    assert ds.classes == ["cat", "dog", "emu"] and ds.skipped == 1
    assert len(ds) == 5 and ds.targets == [0, 0, 1, 1, 2]
    items = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (3, 56, 56) and x.dtype == torch.float32 for x, _ in items)
    assert [label for _, label in items] == [0, 0, 1, 2, 2]  # corrupt.jpg replaced by the next image
    assert torch.equal(items[3][0], items[4][0])
    assert ds.skipped == 2 and sorted(p.name for p in ds.skipped_files) == ["corrupt.jpg", "notes.txt"]
    with pytest.warns(UserWarning, match="skipped 2 file"):
        warn_skipped(torch.utils.data.Subset(ds, [0, 1]))
    check_classes(ds, 3, image_tree)
    with pytest.raises(LTMPError, match=r"images.*3 class folder\(s\).*10 classes"):
        check_classes(ds, 10, image_tree)


def test_image_folder_counts_files_found_unreadable_in_dataloader_workers(image_tree):
    ds = ImageFolderDataset(image_tree)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=lambda items: items)
    labels = [label for batch in loader for _, label in batch]
    assert labels == [0, 0, 1, 2, 2] and ds.skipped == 2


def test_image_folder_survives_a_file_that_breaks_after_indexing(image_tree):
    ds = ImageFolderDataset(image_tree)
    assert ds[1][1] == 0
    # Truncate an indexed JPEG that was read once: decoding it now fails.
    victim = ds.samples[1][0]
    victim.write_bytes(victim.read_bytes()[:200])
    image, label = ds[1]
    assert isinstance(image, Image.Image) and label == ds.samples[2][1]
    assert victim in ds.skipped_files


def _synthetic_folder():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "folder_scale.py"
    spec = importlib.util.spec_from_file_location("folder_scale", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_folder


@pytest.mark.slow
def test_image_folder_of_10k_images_in_1000_classes(tmp_path):
    corrupt = _synthetic_folder()(tmp_path, 10_000, classes=1000, corrupt_every=499)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolderDataset(tmp_path)
    assert corrupt == 20 and len(ds) == 10_000 and len(ds.classes) == 1000 and ds.skipped == 0
    # c0000 holds images 0, 1000, ..., 9000: sample i is image (i % 10) * 1000 + i // 10 of class i // 10.
    assert ds.targets == [i // 10 for i in range(10_000)]
    names = [ds.samples[i][0].name for i in (0, 1, 10, 9999)]
    assert names == ["0000000.png", "0001000.png", "0000001.png", "0009999.png"]
    loader = torch.utils.data.DataLoader(ds, batch_size=500, num_workers=2, collate_fn=lambda items: items)
    labels = [label for batch in loader for _, label in batch]
    broken = sorted(f"{i:07d}.png" for i in range(498, 10_000, 499))
    assert ds.skipped == 20 and sorted(p.name for p in ds.skipped_files) == broken
    # A corrupt file's slot holds the next image: of the same class unless it was the class's last.
    expected = [i // 10 for i in range(10_000)]
    for name in broken:
        image = int(name[:7])
        index = (image % 1000) * 10 + image // 1000
        expected[index] = (index + 1) // 10
    assert labels == expected
    with pytest.warns(UserWarning, match="skipped 20 file"):
        warn_skipped(ds)


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(LTMPError, match="missing.*does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(LTMPError, match="file.png: not a folder"):
        ImageFolderDataset(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LTMPError, match="empty: no class subfolders"):
        ImageFolderDataset(tmp_path / "empty")
    flat = tmp_path / "flat"
    _write_image(flat / "only.png", (8, 8), 0)
    with pytest.raises(LTMPError, match="flat: no class subfolders"):
        ImageFolderDataset(flat)
    (tmp_path / "junk" / "a").mkdir(parents=True)
    (tmp_path / "junk" / "a" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(LTMPError, match="junk: no readable images"):
        ImageFolderDataset(tmp_path / "junk")


# ---------------------------------------------------------------- runtime preprocessing


def _timm_eval(images: list[Image.Image], cfg: dict) -> np.ndarray:
    transform = timm.data.create_transform(**cfg, is_training=False)
    return torch.stack([transform(im) for im in images]).numpy()


# Odd sizes on purpose: truncation of the long side and half-to-even rounding of crop offsets.
SIZES = [(300, 200), (199, 257), (100, 100), (256, 256), (51, 400), (640, 481), (225, 225)]


@pytest.mark.parametrize(
    "cfg",
    [
        IMAGENET_CFG,
        dict(IMAGENET_CFG, interpolation="bilinear", crop_pct=0.95),
        dict(IMAGENET_CFG, input_size=(3, 160, 224)),
        dict(IMAGENET_CFG, crop_mode="squash", crop_pct=1.0),
        dict(IMAGENET_CFG, crop_mode="border", crop_pct=1.0),
        dict(IMAGENET_CFG, input_size=(3, 96, 96), crop_pct=1.0, interpolation="lanczos"),
    ],
    ids=["resnet224-bicubic-0.875", "bilinear-0.95", "non-square", "squash", "border", "lanczos"],
)
def test_runtime_preprocess_matches_timm_eval_transform(cfg):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]
    expected = _timm_eval(images, cfg)
    got = preprocess(images, cfg)
    assert got.shape == expected.shape == (len(SIZES), 3) + tuple(cfg["input_size"][1:])
    assert got.dtype == np.float32
    # Same Pillow resize, same integer geometry, same float32 arithmetic: exact in practice.
    assert np.abs(got - expected).max() <= 1e-5


def test_runtime_preprocess_inputs_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    png = tmp_path / "x.png"
    Image.fromarray(arr).save(png)
    grey = Image.fromarray(arr[:, :, 0])
    rgba = Image.fromarray(np.dstack([arr, arr[:, :, :1]]))
    expected = _timm_eval([Image.fromarray(arr)] * 3 + [grey.convert("RGB"), rgba.convert("RGB")], IMAGENET_CFG)
    got = preprocess([arr, str(png), png, grey, rgba], IMAGENET_CFG)
    assert np.abs(got - expected).max() <= 1e-5
    assert preprocess(arr, IMAGENET_CFG).shape == (1, 3, 224, 224)  # a single image
    assert preprocess(np.stack([arr, arr]), IMAGENET_CFG).shape == (2, 3, 224, 224)  # NHWC batch
    assert preprocess([], IMAGENET_CFG).shape == (0, 3, 224, 224)

    (tmp_path / "fake.jpg").write_text("not an image")
    with pytest.raises(LTMPError, match="fake.jpg: not an image"):
        preprocess([png, tmp_path / "fake.jpg"], IMAGENET_CFG)
    with pytest.raises(LTMPError, match="gone.png: image file does not exist"):
        preprocess(tmp_path / "gone.png", IMAGENET_CFG)
    with pytest.raises(LTMPError, match="image 0: expected a uint8"):
        preprocess(arr.astype(np.float32), IMAGENET_CFG)
    with pytest.raises(LTMPError, match="crop_mode"):
        preprocess(arr, dict(IMAGENET_CFG, crop_mode="zoom"))


def test_runtime_preprocess_needs_no_torch_and_parses_as_python_310():
    source = Path(__file__).parents[1] / "ltmp_deploy" / "runtime" / "preprocess.py"
    ast.parse(source.read_text(), feature_version=(3, 10))
    code = (
        "import sys; import ltmp_deploy.runtime.preprocess as p; "
        "bad = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_train_base_seed_without_output_is_refused(capsys, monkeypatch, tmp_path):
    from ltmp_deploy.cli import main

    monkeypatch.setenv("LTMP_DEPLOY_CACHE", str(tmp_path))
    assert main(["train-base", "--seed", "3"]) == 2
    assert "--seed needs -o OUT" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written
