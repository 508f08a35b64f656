"""The `inspector` command end to end, as a user runs it: a real process, a real dataset folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.data.synthetic import write_synthetic_dataset
from core.inference.mask_refinement import MaskRefinement
from core.inference.package import FIGURE_KEYS, package_figures
from core.training.holdout import OUT_OF_FOLD


def inspector(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    dataset = write_synthetic_dataset(root / "data", train_good=30, train_defect=10, test_good=12, test_defect=12)
    model = root / "model"
    done = inspector("train", str(dataset), "--family", "baseline", "--supervision", "weak", "--out", str(model))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["package"] == str(model)
    assert "[fit]" in done.stderr and "100.0%" in done.stderr, "progress is shown on stderr"
    return dataset, model


def test_evaluate_prints_and_writes_the_report(trained, tmp_path):
    dataset, model = trained
    report_file = tmp_path / "report.json"
    done = inspector("evaluate", str(model), str(dataset), "--json", str(report_file))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads(report_file.read_text())
    for key in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro", "miou", "iou"):
        assert key in report
    # planted synthetic defects are easy even for the baseline
    assert report["image_auroc"] > 0.8
    recorded = json.loads((model / "model.json").read_text())["evaluation"]
    assert any(entry["image_auroc"] == report["image_auroc"] for entry in recorded.values())


def test_figures_recorded_from_a_relative_dataset_path_are_the_ones_shown_for_the_training_dataset(trained,
                                                                                                     tmp_path):
    dataset, model = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    other = write_synthetic_dataset(tmp_path / "other", train_good=6, train_defect=2, test_good=4, test_defect=4)
    for path, cwd in ((dataset.name, dataset.parent), (str(other), None)):  # the training dataset first
        assert inspector("evaluate", str(copy), path, cwd=cwd).returncode == 0
    meta = json.loads((copy / "model.json").read_text())
    first = meta["evaluation"][f"{dataset.name}/test"]
    assert first["dataset_path"] == meta["dataset"]["path"] == str(dataset.resolve())
    figures = {key: first[key] for key in FIGURE_KEYS}
    assert figures != {key: meta["evaluation"][f"{other.name}/test"][key] for key in FIGURE_KEYS}
    assert package_figures(meta) == figures  # the training dataset's, though the other was recorded later


def test_predict_writes_overlays_and_masks(trained, tmp_path):
    dataset, model = trained
    done = inspector("predict", str(model), str(dataset / "test" / "defect"), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 12 and all(line["verdict"] in ("OK", "NG", "REVIEW") for line in lines)
    assert sum(line["verdict"] != "OK" for line in lines) >= 9
    assert len(list(tmp_path.glob("*_overlay.png"))) == 12 and len(list(tmp_path.glob("*_mask.png"))) == 12


def test_bench_reports_latency_and_throughput(trained):
    _, model = trained
    done = inspector("bench", str(model), "--iterations", "5", "--batch", "2", "--size", "64")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["device"] == "cpu"
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["throughput"]["batch"] == 2 and report["throughput"]["images_per_s"] > 0
    assert report["images"]["source"] == "synthetic" and report["images"]["height"] == [64, 64]


def test_bench_times_a_datasets_own_images_when_given_one(trained):
    dataset, model = trained
    done = inspector("bench", str(model), "--iterations", "6", "--batch", "2", "--dataset", str(dataset))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["images"]["source"] == f"{dataset} (test)" and report["images"]["count"] == 6
    assert report["images"]["height"] == [128, 128]  # the dataset's own images, not the 256x256 synthetic default
    assert 0 <= report["images"]["defect"] <= 6
    assert report["latency_ms"]["iterations"] == 6 and report["latency_ms"]["p50"] > 0


def test_user_errors_are_one_clear_line(trained, tmp_path):
    dataset, model = trained
    cases = [
        (("train", str(tmp_path / "missing"), "--family", "baseline", "--out", str(tmp_path / "m")), "does not exist"),
        (("train", str(dataset), "--family", "baseline", "--out", str(model)), "exists and is not empty"),
        (("evaluate", str(tmp_path), str(dataset)), "no model.json"),
        (("predict", str(model), str(tmp_path / "nothing.png")), "no such file or folder"),
        (("bench", str(model), "--device", "cuda"), "no CUDA GPU"),
        (("bench", str(model), "--dataset", str(tmp_path / "missing")), "does not exist"),
    ]
    for args, message in cases:
        done = inspector(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    done = inspector("train", str(dataset), "--family", "baseline", "--out", "x", "--epochs", "0")
    assert done.returncode == 2 and "must be at least 1" in done.stderr
    for folds in ("1", "-2", "0.5"):
        done = inspector("train", str(dataset), "--family", "cam", "--out", "x", "--calibration-folds", folds)
        assert done.returncode == 2 and ("must be 0 (off) or at least 2" in done.stderr
                                         or "expected a whole number" in done.stderr), (folds, done.stderr)
    done = inspector("train", str(dataset), "--family", "baseline", "--out", str(tmp_path / "b"),
                     "--calibration-folds", "2")
    assert done.returncode == 2 and "applies to supersimplenet and cam" in done.stderr
    bad_settings = [
        (("--set", "noise_std"), "expected KEY=VALUE"),
        (("--set", "no_such_setting=1"), "unknown supersimplenet options"),
        (("--set", "noise_std=loud"), "'noise_std' cannot be 'loud'"),            # a word where a number belongs
        (("--set", "calibration_folds=3", "--calibration-folds", "2"), "given twice"),
    ]
    for args, message in bad_settings:
        done = inspector("train", str(dataset), "--family", "supersimplenet", "--out", str(tmp_path / "s"), *args)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_train_sets_thresholds_on_out_of_fold_scores_unless_told_not_to(trained, tmp_path):
    dataset, _ = trained
    for folds, source in (("2", OUT_OF_FOLD), ("0", "training images")):
        model = tmp_path / f"ssn_{folds}"
        done = inspector("train", str(dataset), "--family", "supersimplenet", "--epochs", "1", "--out", str(model),
                         "--calibration-folds", folds, "--set", 'noise_std={"weak": 0.3}')
        assert done.returncode == 0, done.stderr
        meta = json.loads((model / "model.json").read_text())
        assert meta["calibration"]["source"] == source, meta["calibration"]
        assert meta["training"]["settings"]["noise_std"] == 0.3  # --set reached the trainer; the package says so
        said = json.loads(done.stdout)["review"]  # the shares of good and defect images the thresholds leave to REVIEW
        assert said == meta["calibration"]["review"] and 0.0 <= said["good"] <= 1.0 and 0.0 <= said["defect"] <= 1.0
    # two copies, each fitted on half of the 30 good and of the 10 defect images, scored the other half: all 40
    # images' out-of-fold scores set the thresholds; the shipped network trained on all 40
    meta_held = json.loads((tmp_path / "ssn_2" / "model.json").read_text())
    assert meta_held["training"]["images"] == 40 and meta_held["calibration"]["refit"] is True
    assert (meta_held["calibration"]["folds"], meta_held["calibration"]["good"],
            meta_held["calibration"]["defect"]) == (2, 30, 10)


def test_a_package_with_a_mask_refinement_is_evaluated_and_benched_with_it_unless_raw_masks_are_asked(
        trained, tmp_path):
    dataset, _ = trained
    model = tmp_path / "full"
    done = inspector("train", str(dataset), "--family", "supersimplenet", "--supervision", "full", "--epochs", "1",
                     "--calibration-folds", "0", "--out", str(model))
    assert done.returncode == 0, done.stderr
    assert "choosing the mask refinement" in done.stderr
    meta = json.loads((model / "model.json").read_text())
    assert meta["calibration"]["mask_refinement"]["images"] == 10  # every training defect has a mask
    setting = {**MaskRefinement().to_dict(), "margin": 8}
    meta["mask_refinement"] = setting  # ship one whatever one epoch chose, to see it used
    (model / "model.json").write_text(json.dumps(meta))

    refined = inspector("evaluate", str(model), str(dataset))
    raw = inspector("evaluate", str(model), str(dataset), "--raw-masks")
    assert refined.returncode == 0 and raw.returncode == 0, refined.stderr + raw.stderr
    refined, raw = json.loads(refined.stdout), json.loads(raw.stdout)
    assert refined["mask_refinement"] == setting and raw["mask_refinement"] is None
    assert refined["pixel_ap"] == raw["pixel_ap"]  # the map is the network's either way; only masks change
    recorded = json.loads((model / "model.json").read_text())["evaluation"]
    assert [entry["miou"] for entry in recorded.values()] == [refined["miou"]]  # raw-mask figures are not recorded

    for args, expected in (((), setting), (("--raw-masks",), None)):
        done = inspector("bench", str(model), "--iterations", "4", "--batch", "2", "--size", "64", *args)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["mask_refinement"] == expected
        assert report["latency_ms"]["p50_good"] > 0 and report["latency_ms"]["p50_defect"] > 0

    pixels = {}
    for args in ((), ("--raw-masks",)):
        done = inspector("predict", str(model), str(dataset / "test" / "defect"), *args)
        assert done.returncode == 0, done.stderr
        pixels[args] = [json.loads(line)["defect_pixels"] for line in done.stdout.splitlines()]
    assert len(pixels[()]) == 12 and pixels[()] != pixels[("--raw-masks",)]  # the masks predict draws are refined
