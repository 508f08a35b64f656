"""benchmarks/pseudo_mask_dataset.py: a package's own masks become the train split's masks of a linked copy."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from core.data.dataset import open_dataset
from core.data.synthetic import write_synthetic_dataset
from core.inference.detector import Detector
from core.training.api import TrainOptions, trainer_for

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pseudo_mask_dataset.py"


def run_script(*args: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=SCRIPT.parents[1], timeout=300)


def test_copy_carries_the_packages_masks_of_train_defects_and_the_test_split_as_is(tmp_path):
    source = write_synthetic_dataset(tmp_path / "data", train_good=20, train_defect=6, test_good=3, test_defect=3,
                                     size=(96, 96), seed=5)
    original = open_dataset(source)
    package = trainer_for("baseline")(original, TrainOptions(out=tmp_path / "model", device="cpu"), lambda e: None)
    done = run_script(package, source, tmp_path / "copy")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    copy = open_dataset(tmp_path / "copy")
    assert copy.counts("train")["good"] == 20 and copy.counts("train")["defect"] == 6
    detector = Detector.load(package, device="cpu")
    written = 0
    for sample in copy.split("train"):
        if sample.label == 0:
            assert sample.mask_path is None
            continue
        image, pseudo = sample.load()
        expected = detector.predict([image])[0].mask
        if expected.any():   # the mask the station would show, bit for bit; none where it shows none
            written += 1
            assert pseudo is not None and np.array_equal(pseudo, expected)
        else:
            assert sample.mask_path is None
    assert written == report["masks_written"] > 0
    assert 0.0 <= report["miou_against_own_masks"] <= 1.0            # scored against the source's own masks
    own = {s.image_path.name: cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
           for s in original.split("test") if s.mask_path is not None}
    copied = {s.image_path.name: cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
              for s in copy.split("test") if s.mask_path is not None}
    assert own.keys() == copied.keys() and all(np.array_equal(own[k], copied[k]) for k in own)
    again = run_script(package, source, tmp_path / "copy")
    assert again.returncode != 0 and "exists" in again.stderr           # never mixed into an old folder
