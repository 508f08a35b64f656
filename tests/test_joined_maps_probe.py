"""benchmarks/joined_maps_probe.py: each package alone measures as `inspector evaluate` does, and joins of a map with
itself change nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.data.dataset import open_dataset
from core.data.synthetic import write_synthetic_dataset
from core.evaluation import evaluate
from core.inference.detector import Detector
from core.training.api import TrainOptions, trainer_for

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "joined_maps_probe.py"
sys.path.insert(0, str(SCRIPT.parent))
from joined_maps_probe import centred  # noqa: E402


def run_script(*args: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=SCRIPT.parents[1], timeout=300)


def test_centred_puts_the_threshold_at_one_half_and_keeps_saturated_values_apart():
    maps = np.array([[[0.0, 0.2, 0.3], [0.9, 0.99995, 0.99999]]], np.float32)
    out = centred(maps, 0.3)
    assert out.shape == maps.shape and out.dtype == np.float64
    assert out[0, 0, 2] == pytest.approx(0.5)
    flat = out.ravel()
    assert np.all(np.diff(flat) > 0)  # strictly increasing as the input: no ties, even above 1 - 1e-4


def test_a_package_alone_reproduces_its_evaluation_and_self_joins_equal_it(tmp_path):
    source = write_synthetic_dataset(tmp_path / "data", train_good=16, train_defect=8, test_good=4, test_defect=4,
                                     size=(64, 64), seed=3)
    options = TrainOptions(out=tmp_path / "model", supervision="weak", epochs=2, device="cpu", seed=0,
                           extra={"input_size": [64, 64], "batch_size": 8, "calibration_folds": 0})
    package = trainer_for("supersimplenet")(open_dataset(source), options, lambda e: None)
    done = run_script(package, package, source)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["good"] == 4 and report["defects"] == 4 and report["package_a"] == str(package)
    evaluation = evaluate(Detector.load(package, device="cpu"), open_dataset(source))
    assert report["a"]["miou@0.5"] == pytest.approx(evaluation["miou"], abs=1e-4)
    assert report["a"]["pixel_ap"] == pytest.approx(evaluation["pixel_ap"], abs=1e-4)
    for join in ("b", "mean", "geometric", "max"):
        assert report[join] == report["a"], join


def test_a_package_whose_map_is_no_probability_is_refused(tmp_path):
    source = write_synthetic_dataset(tmp_path / "data", train_good=8, train_defect=2, test_good=2, test_defect=2,
                                     size=(32, 32), seed=1)
    package = trainer_for("baseline")(open_dataset(source), TrainOptions(out=tmp_path / "model", device="cpu"),
                                      lambda e: None)
    done = run_script(package, package, source)
    assert done.returncode != 0 and "baseline package" in done.stderr
