"""``ltmp-deploy report`` and ``write_report``: whole files, the headline numbers on the page (recomputed
here from the results), every image decoding in a real browser, and the demo's report hook."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_runs import tiny_bench, tiny_bench_doc, tiny_checkpoint
from conftest import one_torch_thread

from ltmp_deploy.cli import main
from ltmp_deploy.errors import LTMPError
from ltmp_deploy.report import accuracy_document, tokens_summary, variant_entry, write_accuracy, write_report
from ltmp_deploy.report.accuracy import read_accuracy

pytestmark = pytest.mark.slow  # the shared bench run
HEADLINE = "ltmp-fixed@0.5"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def tiny_accuracy(tmp_path: Path) -> tuple[dict, list[Path]]:
    """Accuracy of every bench variant, measured as agreement with the unpatched model's labels on
    seeded random images (two halves of them as two runs), and two token grids."""
    from ltmp_deploy.calibration.evaluate import per_image_counts
    from ltmp_deploy.export.reference import sample_images
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint, metadata
    from ltmp_deploy.ltmp.flops import image_flops
    from ltmp_deploy.ltmp.schedule import Schedule
    from ltmp_deploy.pictures import token_grid

    model = load_checkpoint(tiny_bench() / "tiny5.safetensors")
    images = torch.from_numpy(sample_images(metadata(model), 64)[0])
    with torch.no_grad():
        labels = model.ltmp_set_mode("off")(images).argmax(1)
    entries, tokens = [], {}
    for name, v in tiny_bench_doc()["variants"].items():
        if v["thresholds"]:
            model.ltmp_set_thresholds(v["thresholds"]["merge"], v["thresholds"]["prune"])
        model.ltmp_set_mode(v["mode"], Schedule.from_pairs(v["schedule"]) if v["schedule"] else None)
        with torch.no_grad():
            out = model.forward_ltmp(images)
        right = (out.logits.argmax(1) == labels).float()
        if v["mode"] == "threshold":
            ratios = np.array([r.ratio for r in image_flops(model, out.decisions)])
        else:  # static token counts: every image keeps the variant's FLOPs
            ratios = np.full(len(images), v["flops_ratio"])
        runs = [
            {"seed": s, "accuracy": float(right[part].mean()), "flops_ratio": float(np.mean(ratios[part]))}
            for s, part in enumerate((slice(0, 32), slice(32, 64)))
        ]
        entries.append(variant_entry(v["kind"], v["label"], runs))
        if v["mode"] == "threshold":
            tokens[name] = tokens_summary(per_image_counts([out.decisions])[1])
    grids = []
    for i in range(2):
        display = (np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8)
        grids.append(token_grid(model, images[i], display, tmp_path / f"grid{i}.png"))
    doc = accuracy_document(
        "vit_tiny_patch16_224",
        {"name": "agreement with the unpatched model", "split": "random", "images": 64},
        entries,
        tokens=model.ltmp_num_tokens,
        tokens_per_block=tokens,
        headline=HEADLINE,
    )
    return doc, grids


def expected_headline(acc: dict) -> list[str]:
    """The three headline numbers, computed here from the two results."""
    by_name = {v["name"]: v for v in acc["variants"]}
    records = {(r["batch"], r["variant"]): r for r in tiny_bench_doc()["records"] if r["backend"] == "onnxruntime-cpu"}
    base, own = by_name["unpatched"]["accuracy"], by_name[HEADLINE]["accuracy"]
    return [
        f"FLOPs saved: {100 * (1 - by_name[HEADLINE]['flops_ratio']):.1f}%",
        f"Latency saved at batch 1: {100 * (1 - records[1, HEADLINE]['vs_unpatched']):.1f}%",
        f"Latency saved at batch 8: {100 * (1 - records[8, HEADLINE]['vs_unpatched']):.1f}%",
        f"Accuracy change: {100 * (own - base):+.2f} points",
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    with one_torch_thread():
        acc, grids = tiny_accuracy(tmp)
    write_accuracy(tmp / "accuracy.json", acc)
    files = write_report(tmp / "out", tiny_bench() / "out" / "bench.json", tmp / "accuracy.json", grids)
    return files, acc


def test_files_are_whole_and_carry_the_headline(report):
    files, acc = report
    assert read_accuracy(files.markdown.parent.parent / "accuracy.json") == acc
    names = sorted(p.name for p in files.markdown.parent.iterdir())
    assert names == sorted(
        [
            "report.md",
            "report.html",
            "report_accuracy_vs_flops.png",
            "report_latency_vs_flops.png",
            "report_tokens_per_block.png",
            "report_grid_1.png",
            "report_grid_2.png",
        ]
    )
    md = files.markdown.read_text()
    page = files.html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for line in expected_headline(acc):
        assert line in md and line in html.unescape(page), line
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (files.markdown.parent / link).is_file()
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained
    assert "| ltmp-threshold@0.5 | ltmp-threshold |" in md  # the accuracy table
    assert "Batch 8:" in md and "| tome@0.5 |" in md  # the latency tables


CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const decoded = images.filter((im) => im.complete && im.naturalWidth > 0).length;
  const marker = document.createElement("div");
  marker.id = "image-check";
  marker.textContent = "images decoded: " + decoded + "/" + images.length;
  document.body.appendChild(marker);
});
</script>"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; .ci/install-chromium.sh)"
)
def test_every_image_decodes_in_headless_chromium(report, tmp_path):
    files, acc = report
    page = files.html.read_text()
    count = page.count("<img ")
    probe = tmp_path / "probe.html"  # the report plus a check that writes its verdict into the page
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = html.unescape(done.stdout)
    assert f"images decoded: {count}/{count}" in dom, done.stderr[-2000:]
    for line in expected_headline(acc):
        assert line in dom, line


def test_one_result_alone(tmp_path):
    bench_only = write_report(tmp_path / "b", tiny_bench() / "out" / "bench.json")
    text = bench_only.markdown.read_text()
    assert "Accuracy change: not measured" in text and bench_only.headline.variant == "ltmp-fixed@0.5"
    assert "Latency saved at batch 8:" in text
    acc, _ = tiny_accuracy(tmp_path)
    acc_only = write_report(tmp_path / "a", accuracy=acc)
    text = acc_only.markdown.read_text()
    assert "Latency saved at batch 1: not measured" in text and "latency_vs_flops" not in text


def refusal(capsys, *argv: str) -> str:
    assert main(["report", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_refusals(capsys, tmp_path):
    bench = str(tiny_bench() / "out" / "bench.json")
    out = ["-o", str(tmp_path / "r")]
    assert "give a bench result" in refusal(capsys, *out)
    (tmp_path / "fake.png").write_text("not a picture")
    assert "not a PNG image" in refusal(capsys, "--bench", bench, "--grid", str(tmp_path / "fake.png"), *out)
    assert "not an ltmp-deploy accuracy result" in refusal(capsys, "--accuracy", bench, *out)
    assert "not a bench result" in refusal(capsys, "--bench", str(tmp_path / "fake.png"), *out)
    assert "in neither result" in refusal(capsys, "--bench", bench, "--headline", "ltmp-fixed@0.1", *out)
    assert "--backend tensorrt" in refusal(capsys, "--bench", bench, "--backend", "tensorrt", *out)
    assert not (tmp_path / "r" / "report.html").exists()
    with pytest.raises(LTMPError, match=r"\$\.variants\[0\]\.accuracy: 98 is out of range"):
        accuracy_document(
            "m", {"name": "d"}, [{"name": "unpatched", "method": "unpatched", "accuracy": 98, "flops_ratio": 1}]
        )


def test_cli_report(capsys, tmp_path, report):
    files, acc = report
    acc_path = files.markdown.parent.parent / "accuracy.json"
    assert (
        main(
            [
                "report",
                "--bench",
                str(tiny_bench() / "out" / "bench.json"),
                "--accuracy",
                str(acc_path),
                "-o",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for line in expected_headline(acc):
        assert line in printed
    assert (tmp_path / "r" / "report.html").is_file()


def test_the_demo_report_hook(tmp_path):
    """What run_trial calls at its end, on a tiny 10-class model over the embedded digits."""
    from ltmp_deploy.calibration.calibrate import calibrate, tome_schedule
    from ltmp_deploy.calibration.evaluate import evaluate
    from ltmp_deploy.data.datasets import dataset_for
    from ltmp_deploy.demo import DemoReport
    from ltmp_deploy.ltmp.checkpoint import load_checkpoint, save_checkpoint
    from ltmp_deploy.ltmp.flops import schedule_flops
    from ltmp_deploy.report.trial_report import write_trial_report

    with one_torch_thread():
        model = load_checkpoint(tiny_checkpoint(tmp_path, num_classes=10, img_size=56))  # the digits' size
        n = model.ltmp_num_tokens
        model.ltmp_set_thresholds([0.6, 0.5, 0.4], [0.6 / n, 0.8 / n, 1.0 / n])
        val, test = (dataset_for("digits", model, s) for s in ("val", "test"))
        report = DemoReport(tmp_path)
        report.rows["unpatched"] = {"accuracy": evaluate(model.ltmp_set_mode("off"), test)[0], "flops": 1.0}
        cal = calibrate(model, val, evaluation=test, progress=False)
        report.rows["ltmp-threshold"] = {"accuracy": cal.threshold_accuracy, "flops": cal.threshold_flops}
        report.rows["ltmp-fixed"] = {"accuracy": cal.fixed_accuracy, "flops": cal.fixed_flops}
        report.files["fixed"] = str(save_checkpoint(model, tmp_path / "fixed.safetensors"))
        tome = tome_schedule(model, cal.fixed_flops)
        report.rows["tome-fixed-r"] = {
            "accuracy": evaluate(model.ltmp_set_mode("fixed", tome), test)[0],
            "flops": schedule_flops(model, tome).ratio,
        }
        files = write_trial_report(report, rounds=1, progress=False)
    acc = read_accuracy(tmp_path / "accuracy.json")
    assert {v["name"] for v in acc["variants"]} == {
        "unpatched",
        "ltmp-threshold@learned",
        "ltmp-fixed@calibrated",
        "tome@calibrated",
    }
    assert acc["tokens_per_block"]["ltmp-threshold@learned"]["images"] == len(test)
    assert files.headline.variant == "ltmp-fixed@calibrated" and files.headline.backend == "onnxruntime-cpu"
    assert files.headline.flops_saved == pytest.approx(1 - cal.fixed_flops)
    assert set(files.headline.latency_saved) == {1, 8} and None not in files.headline.latency_saved.values()
    assert files.html.is_file() and (tmp_path / "bench" / "bench.json").is_file()
    assert len(list(files.markdown.parent.glob("report_grid_*.png"))) == 3


def test_the_report_says_when_its_latency_is_noise(tmp_path):
    """The headline's latency is read from the bench figures: a page quoting noise must say so."""
    doc = tiny_bench_doc()
    for rec in doc["records"]:
        if rec["vs_unpatched"] is not None:
            rec["vs_unpatched_q1"] = rec["vs_unpatched_q3"] = rec["vs_unpatched"]
    assert "Warning:" not in write_report(tmp_path / "quiet", doc).markdown.read_text()
    rec = next(r for r in doc["records"] if r["variant"] != "unpatched")
    rec["vs_unpatched_q1"], rec["vs_unpatched_q3"] = 0.5 * rec["vs_unpatched"], 1.5 * rec["vs_unpatched"]
    page = write_report(tmp_path / "busy", doc).markdown.read_text()
    assert f"Warning: 1 of {len(doc['records'])} figures are noise" in page and rec["variant"] in page
