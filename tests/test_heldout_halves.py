"""benchmarks/make_heldout_halves.py: the halves that design-time checks measure on must never overlap."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core.data.dataset import open_dataset
from core.data.synthetic import write_synthetic_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_heldout_halves.py"


def test_halves_split_every_class_of_the_train_split_and_keep_the_masks(tmp_path):
    source = write_synthetic_dataset(tmp_path / "data", train_good=7, train_defect=5, test_good=2, test_defect=2,
                                     size=(32, 32), seed=0)
    done = subprocess.run([sys.executable, str(SCRIPT), str(source), str(tmp_path / "halves")], capture_output=True,
                          text=True, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stderr
    a, b = (open_dataset(tmp_path / "halves" / name) for name in ("halfA", "halfB"))
    names = {split: {name: {s.image_path.name for s in half.split(split)} for name, half in (("A", a), ("B", b))}
             for split in ("train", "test")}
    train = {s.image_path.name for s in open_dataset(source).split("train")}
    assert names["train"]["A"] == names["test"]["B"] and names["train"]["B"] == names["test"]["A"]
    assert not names["train"]["A"] & names["test"]["A"]                      # nothing measured was fitted
    assert names["train"]["A"] | names["test"]["A"] == train                 # the source's train split, nothing else
    assert a.counts("train") == {"good": 3, "defect": 2, "segmented": 2}     # each class halved (odd: one more held out)
    assert all(s.mask_path is not None and s.mask_path.stem == s.image_path.stem
               for half in (a, b) for s in half.split("test") if s.label == 1)
    again = subprocess.run([sys.executable, str(SCRIPT), str(source), str(tmp_path / "halves")], capture_output=True,
                           text=True, cwd=SCRIPT.parents[1])
    assert again.returncode != 0 and "exists" in again.stderr                # never mixed into an old folder
