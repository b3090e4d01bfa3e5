"""Calibration: schedules from per-image counts or a FLOPs target, the ToMe baseline, INT8 data."""

import numpy as np
import pytest
import torch
from conftest import tiny_ltmp
from PIL import Image
from torch.utils.data import TensorDataset

from ltmp_deploy.calibration.calibrate import calibrate, parse_statistic, schedule_from_counts, tome_schedule
from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.ltmp.checkpoint import create_model, load_checkpoint, save_checkpoint
from ltmp_deploy.ltmp.flops import schedule_flops
from ltmp_deploy.runtime.int8.calibration_data import read_calibration_data, write_calibration_data


def reducing_model():
    return tiny_ltmp()


def images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g))


def test_schedule_is_the_mean_of_the_per_image_counts():
    model = reducing_model()  # 17 tokens
    merges = np.array([[4, 2, 1], [6, 2, 1], [5, 2, 0]])
    keeps = np.array([[10, 6, 4], [9, 5, 3], [11, 7, 5]])
    schedule = schedule_from_counts(model, merges, keeps, "mean")
    assert schedule.merges == (5, 2, 1) and schedule.keeps == (10, 6, 4)
    generous = schedule_from_counts(model, merges, keeps, 0.9)
    assert all(g >= m for g, m in zip(generous.keeps, schedule.keeps))
    assert all(g <= m for g, m in zip(generous.merges, schedule.merges))


def test_infeasible_means_are_clipped_to_what_each_block_receives():
    model = reducing_model()
    schedule = schedule_from_counts(model, np.array([[8, 8, 8]]), np.array([[3, 9, 9]]), "mean")
    schedule.validate(3, 17, 1)
    assert schedule.keeps[1] <= schedule.keeps[0]


@pytest.mark.parametrize("text,expected", [("mean", "mean"), ("q0.9", 0.9), ("0.25", 0.25)])
def test_statistic_parsing(text, expected):
    assert parse_statistic(text) == expected


def test_bad_statistic():
    with pytest.raises(LTMPError, match="--statistic"):
        parse_statistic("median-ish")


def test_calibrated_fixed_mode_costs_what_threshold_mode_costs_on_average():
    model = reducing_model()
    report = calibrate(model, images(), evaluation=images(16, seed=1), progress=False)
    assert model.ltmp.mode == "fixed" and model.ltmp.schedule == report.schedule
    assert report.threshold_flops < 1.0
    assert abs(report.fixed_flops - report.threshold_flops) < 0.1
    assert 0.0 <= report.fixed_accuracy <= 1.0 and "fixed mode" in report.summary()


def test_schedule_from_a_flops_target_needs_no_data():
    model = reducing_model()
    report = calibrate(model, None, flops_target=0.6, progress=False)
    assert abs(report.fixed_flops - 0.6) < 0.05
    with pytest.raises(LTMPError, match="--flops-target"):
        calibrate(model, None, flops_target=1.5, progress=False)


def test_tome_baseline_only_merges_at_the_asked_flops():
    model = reducing_model()
    schedule = tome_schedule(model, 0.7)
    n = model.ltmp_num_tokens
    for r, k in zip(schedule.merges, schedule.keeps):
        assert k == n - r and r > 0, "ToMe prunes nothing: every block keeps what merging leaves"
        n = k
    assert abs(schedule_flops(model, schedule).ratio - 0.7) < 0.08


def test_int8_calibration_data_in_every_layout(tmp_path):
    batch = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    paths = write_calibration_data(batch, tmp_path / "calib", batch_size=4)
    for layout in ("npy", "npz", "polygraphy"):
        np.testing.assert_array_equal(read_calibration_data(paths[layout]), batch)
    with np.load(paths["npz"]) as npz:
        assert list(npz.keys()) == ["images"]  # ModelOpt: arrays named by graph input
    from polygraphy.json import load_json

    feeds = load_json(str(paths["polygraphy"]))
    assert [f["images"].shape[0] for f in feeds] == [4, 4, 2]
    with pytest.raises(LTMPError, match="NaN"):
        write_calibration_data(np.full((2, 3, 4, 4), np.nan, np.float32), tmp_path / "bad")


@pytest.fixture
def digits_checkpoint(tmp_path):
    model = create_model("vit_digits_56")
    return save_checkpoint(model, tmp_path / "digits.safetensors")


@pytest.mark.slow
def test_cli_calibrate_writes_schedule_and_int8_data(tmp_path, digits_checkpoint, capsys):
    out = tmp_path / "fixed.safetensors"
    assert (
        main(
            [
                "calibrate",
                str(digits_checkpoint),
                "--data",
                "digits",
                "--int8-calib",
                str(tmp_path / "i8"),
                "--int8-images",
                "16",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    model = load_checkpoint(out)
    assert model.ltmp.mode == "fixed" and model.ltmp.schedule is not None
    assert read_calibration_data(tmp_path / "i8" / "calib.npy").shape == (16, 3, 56, 56)
    assert "threshold mode: accuracy" in capsys.readouterr().out


def make_folder(root, classes, per_class=2, corrupt=False):
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((40, 40, 3), 20 * i + c, np.uint8)).save(root / f"c{c}" / f"{i}.png")
    if corrupt:
        (root / "c0" / "broken.png").write_bytes(b"\x89PNG not really")


def test_cli_errors_for_bad_data(tmp_path, digits_checkpoint, capsys):
    out = tmp_path / "o.safetensors"
    (tmp_path / "empty").mkdir()
    assert main(["calibrate", str(digits_checkpoint), "--data", str(tmp_path / "empty"), "-o", str(out)]) == 2
    assert "no class subfolders" in capsys.readouterr().err
    make_folder(tmp_path / "three", 3)
    assert main(["calibrate", str(digits_checkpoint), "--data", str(tmp_path / "three"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "3 class folder(s)" in err and "10 classes" in err
    assert main(["learn", str(digits_checkpoint), "--target", "1.5", "-o", str(out)]) == 2
    assert "--target 1.5" in capsys.readouterr().err
    assert not out.exists()


def test_corrupt_images_are_skipped_and_counted(tmp_path, digits_checkpoint, capsys):
    make_folder(tmp_path / "ten", 10, corrupt=True)
    out = tmp_path / "o.safetensors"
    # Calibration reads a seeded tenth of the tree and evaluation the rest: one of them meets the broken file.
    with pytest.warns(UserWarning, match="skipped 1 file"):
        assert main(["calibrate", str(digits_checkpoint), "--data", str(tmp_path / "ten"), "-o", str(out)]) == 0
    assert out.is_file()


def unique_images(root, split, per_class, first_id):
    """One folder per class of 5; every image one flat colour that encodes its id across the tree."""
    ids = iter(range(first_id, first_id + 5 * per_class))
    for c in range(5):
        (root / split / f"c{c}").mkdir(parents=True)
        for _ in range(per_class):
            i = next(ids)
            Image.fromarray(np.full((32, 32, 3), (i % 256, i // 256, 7), np.uint8)).save(
                root / split / f"c{c}" / f"{i}.png"
            )
    return set(range(first_id, first_id + 5 * per_class))


def image_ids(dataset, model):
    """The ids of the images ``dataset`` serves, read back from the preprocessed pixels."""
    from ltmp_deploy.ltmp.data_config import model_data_config

    cfg = model_data_config(model)
    mean, std = (np.asarray(cfg[k], np.float32).reshape(3, 1, 1) for k in ("mean", "std"))
    found = []
    for i in range(len(dataset)):
        pixels = np.rint((np.asarray(dataset[i][0]) * std + mean) * 255)
        found.append(int(pixels[0, 0, 0] + 256 * pixels[1, 0, 0]))
    return found


LAYOUTS = {
    "train and val": ("train", "val"),
    "val and test": ("val", "test"),
    "train, val and test": ("train", "val", "test"),
    "train and test": ("train", "test"),
    "one tree": (".",),
    "train alone": ("train",),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_calibration_and_evaluation_never_share_an_image(tmp_path, layout):
    from ltmp_deploy.data.datasets import calibration_split

    model = tiny_ltmp()
    trees = {split: unique_images(tmp_path, split, 8, 1000 * n) for n, split in enumerate(LAYOUTS[layout])}
    calibration = image_ids(calibration_split(str(tmp_path), model, "calibration"), model)
    evaluation = image_ids(calibration_split(str(tmp_path), model, "evaluation"), model)
    assert calibration and evaluation and not set(calibration) & set(evaluation)
    assert len(set(calibration)) == len(calibration) and len(set(evaluation)) == len(evaluation)
    if "val" in trees and "test" in trees:
        assert set(calibration) == trees["val"] and set(evaluation) == trees["test"]
    elif "train" in trees and len(trees) == 2:  # a held-out part of train calibrates, the held-out folder evaluates
        held = trees["val" if "val" in trees else "test"]
        assert set(evaluation) == held and set(calibration) < trees["train"] and len(calibration) == 4
    else:  # one tree: a seeded tenth calibrates, the rest evaluates
        (tree,) = trees.values()
        assert set(calibration) | set(evaluation) == tree and len(calibration) == 4
    again = image_ids(calibration_split(str(tmp_path), model, "calibration"), model)
    assert again == calibration  # seeded


def test_flops_target_needs_no_data_and_evaluates_only_on_data_the_model_takes(tmp_path, capsys):
    ckpt = save_checkpoint(tiny_ltmp(), tmp_path / "tiny.safetensors")
    out = tmp_path / "fixed.safetensors"
    assert main(["calibrate", str(ckpt), "--flops-target", "0.5", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not evaluated: the model does not take the embedded digits" in printed and "mode: accuracy" not in printed
    assert load_checkpoint(out).ltmp.mode == "fixed"
    unique_images(tmp_path / "data", "val", 2, 0)
    assert (
        main(["calibrate", str(ckpt), "--flops-target", "0.5", "--data", str(tmp_path / "data"), "-o", str(out)]) == 0
    )
    assert "fixed mode:     accuracy" in capsys.readouterr().out


def test_int8_calib_must_be_a_writable_folder(tmp_path, capsys):
    ckpt = save_checkpoint(tiny_ltmp(), tmp_path / "tiny.safetensors")
    unique_images(tmp_path / "data", "val", 2, 0)
    (tmp_path / "calib.npy").write_bytes(b"")
    out = tmp_path / "fixed.safetensors"
    for folder, says in (
        (tmp_path / "calib.npy", "is a file, not a folder"),
        (tmp_path / "calib.npy" / "d", "is a file"),
    ):
        argv = ["calibrate", str(ckpt), "--data", str(tmp_path / "data"), "--int8-calib", str(folder), "-o", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"--int8-calib {folder}" in err and says in err, err
    assert not out.exists()
    with pytest.raises(LTMPError, match="--int8-calib"):
        write_calibration_data(np.zeros((1, 3, 4, 4), np.float32), tmp_path / "calib.npy")


class LiveTensorsPerBatch(torch.utils.data.Dataset):
    """``inner``, noting how many tensors are alive whenever evaluation starts a new batch."""

    def __init__(self, inner, batch):
        self.inner, self.batch, self.live = inner, batch, []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        if i % self.batch == 0:
            import gc

            self.live.append(sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects()))
        return self.inner[i]


@pytest.mark.slow
@pytest.mark.parametrize("n", [768, 3072])
def test_calibration_keeps_counts_not_decisions(n):
    from ltmp_deploy.calibration.evaluate import evaluate

    data = LiveTensorsPerBatch(images(n), 256)  # 256: evaluate's batch
    report = calibrate(reducing_model(), data, progress=False)
    assert len(data.live) == n // 256
    # Each batch's decisions are several tensors per block; none may outlive its batch.
    assert data.live[1:] == [data.live[1]] * (len(data.live) - 1), data.live
    counts = evaluate(reducing_model(), images(n // 8))[2]
    assert counts.merges.shape == counts.keeps.shape == (n // 8, 3)
    assert counts.keeps.dtype.kind == "i" and sorted(vars(report)) == sorted(
        ["schedule", "statistic", "threshold_accuracy", "threshold_flops", "fixed_accuracy", "fixed_flops"]
    )
