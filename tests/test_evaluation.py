"""core.evaluation.evaluate: report keys, oracle and random predictors, masks, progress, bad files, baseline."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch

from core.data.dataset import Dataset, DatasetError, open_dataset
from core.data.synthetic import write_synthetic_dataset
from core.evaluation import METRIC_KEYS, evaluate
from core.inference.detector import Detector
from core.inference.package import LoadedPackage, new_meta
from core.inference.result import Thresholds
from core.models.backbones import IMAGENET_NORMALISATION
from core.training.api import ProgressEvent

SIZE = (48, 48)


class MapDetector(Detector):
    """A real Detector whose network is replaced by a lookup: image bytes -> (score, map) chosen by the test.

    Everything after the network (resizing back, masks at the package's pixel threshold, verdicts) is
    the Detector's own code.
    """

    def __init__(self, tmp_path: Path, answers: dict[str, tuple[float, np.ndarray]]) -> None:
        meta = new_meta(family="baseline", backbone="none", config={}, input_size=SIZE,
                        normalisation=IMAGENET_NORMALISATION, thresholds=Thresholds(ok=0.5, ng=0.5, pixel=0.5),
                        dataset={"path": "synthetic", "hash": ""})
        super().__init__(LoadedPackage(path=tmp_path / "oracle", meta=meta, network=torch.nn.Identity()), device="cpu")
        self.answers = answers
        self.batches: list[int] = []

    def infer(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(len(images))
        found = [self.answers[_key(image)] for image in images]
        return (np.array([score for score, _ in found], np.float32),
                np.stack([amap for _, amap in found]).astype(np.float32))


def _key(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def _dataset(tmp_path: Path, test_good: int = 16, test_defect: int = 16) -> Dataset:
    root = write_synthetic_dataset(tmp_path / "ds", train_good=2, train_defect=1, test_good=test_good,
                                   test_defect=test_defect, size=SIZE, seed=3)
    return open_dataset(root)


def _oracle(tmp_path: Path, dataset: Dataset, how: str, seed: int = 0) -> MapDetector:
    """how: "perfect" (map = mask, score = label), "random" (uniform noise), "inverted"."""
    rng = np.random.default_rng(seed)
    answers = {}
    for sample in dataset.test:
        image, mask = sample.load()
        truth = np.zeros(SIZE, bool) if mask is None else mask
        if how == "perfect":
            answers[_key(image)] = (float(sample.label), truth.astype(np.float32))
        elif how == "inverted":
            answers[_key(image)] = (1.0 - sample.label, 1.0 - truth.astype(np.float32))
        else:
            answers[_key(image)] = (float(rng.random()), rng.random(SIZE, dtype=np.float32))
    return MapDetector(tmp_path, answers)


def test_perfect_predictor_scores_one(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    detector = _oracle(tmp_path, dataset, "perfect")
    events: list[ProgressEvent] = []
    report = evaluate(detector, dataset, progress=events.append, batch_size=5)
    json.dumps(report, allow_nan=False)  # plain JSON, no NaN
    for key in METRIC_KEYS:
        assert report[key] == pytest.approx(1.0), key
    assert report["counts"] == {"images": 32, "good": 16, "defect": 16, "segmented": 16}
    assert report["split"] == "test"
    assert report["model"] == {"path": str(tmp_path / "oracle"), "family": "baseline", "device": "cpu"}
    assert report["dataset"] == {"path": str(dataset.root.resolve()), "layout": "station"}
    assert report["verdicts"] == {"good": {"OK": 16, "NG": 0, "REVIEW": 0}, "defect": {"OK": 0, "NG": 16, "REVIEW": 0}}
    assert report["notes"] == {} and report["seconds"] >= 0
    assert report["by_type"] == {"defect": {"images": 16, "segmented": 16, "image_auroc": 1.0, "miou": 1.0}}
    assert detector.batches == [5] * 6 + [2]
    fractions = [e.fraction for e in events if e.stage == "evaluate"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == 7


def test_random_predictor_near_chance_and_inverted_zero(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, test_good=30, test_defect=30)
    report = evaluate(_oracle(tmp_path, dataset, "random", seed=1), dataset)
    assert report["image_auroc"] == pytest.approx(0.5, abs=0.2)
    assert report["pixel_auroc"] == pytest.approx(0.5, abs=0.02)
    assert report["aupro"] == pytest.approx(0.15, abs=0.03)   # PRO ~ FPR: area .3^2/2, / .3
    assert report["miou"] < 0.1 and report["iou"] < 0.1
    inverted = evaluate(_oracle(tmp_path, dataset, "inverted"), dataset)
    assert inverted["image_auroc"] == 0.0 and inverted["pixel_auroc"] == 0.0 and inverted["aupro"] == 0.0


def test_defects_without_masks_are_left_out_of_pixel_metrics(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, test_good=6, test_defect=6)
    detector = _oracle(tmp_path, dataset, "perfect")
    for mask_path in sorted((dataset.root / "test" / "masks").iterdir())[:3]:
        mask_path.unlink()
    dataset = open_dataset(dataset.root)
    for sample in dataset.test:  # wrong maps for the unsegmented images: must not count
        if sample.label == 1 and not sample.is_segmented:
            image, _ = sample.load()
            detector.answers[_key(image)] = (1.0, np.zeros(SIZE, np.float32))
    report = evaluate(detector, dataset)
    assert report["counts"] == {"images": 12, "good": 6, "defect": 6, "segmented": 3}
    assert report["pixel_auroc"] == 1.0 and report["miou"] == 1.0 and report["iou"] == 1.0


def test_single_class_split_gives_null_with_reason(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, test_good=4, test_defect=4)
    detector = _oracle(tmp_path, dataset, "perfect")
    dataset.test = [s for s in dataset.test if s.label == 0]
    report = evaluate(detector, dataset)
    text = json.dumps(report, allow_nan=False)
    assert '"image_auroc": null' in text
    assert "all 4 images are good" in report["notes"]["image_auroc"]
    assert report["pixel_auroc"] is None and "no defect pixels" in report["notes"]["pixel_auroc"]
    assert report["iou"] is None  # nothing predicted, nothing true


def test_bad_file_and_bad_detector_output_are_named(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, test_good=3, test_defect=3)
    detector = _oracle(tmp_path, dataset, "perfect")
    victim = dataset.test[-1].image_path
    original = victim.read_bytes()
    victim.write_bytes(original[:100])
    with pytest.raises(DatasetError, match=victim.name):
        evaluate(detector, dataset, batch_size=2)
    dataset.train.clear()
    with pytest.raises(DatasetError, match="the train split holds no images"):
        evaluate(detector, dataset, split="train")
    victim.write_bytes(original)
    real_predict = detector.predict

    def shrunk(images):  # a detector bug: maps not brought back to the image size
        results = real_predict(images)
        for result in results:
            result.anomaly_map = result.anomaly_map[:10, :10]
        return results

    detector.predict = shrunk
    with pytest.raises(RuntimeError, match=f"{dataset.test[0].image_path.name}: the detector's map \\(10, 10\\)"):
        evaluate(detector, dataset)


def test_baseline_package_end_to_end(tmp_path: Path) -> None:
    """Train the real baseline family (seconds), load its package and evaluate it."""
    pytest.importorskip("core.training.baseline_trainer", reason="baseline family not present")
    from core.training.api import TrainOptions, trainer_for

    root = write_synthetic_dataset(tmp_path / "ds", train_good=20, train_defect=6, test_good=10, test_defect=10,
                                   size=(96, 96), seed=5)
    dataset = open_dataset(root)
    package = trainer_for("baseline")(dataset, TrainOptions(out=tmp_path / "model", device="cpu"), lambda e: None)
    report = evaluate(Detector.load(package, device="cpu"), dataset)
    json.dumps(report, allow_nan=False)
    assert report["model"]["family"] == "baseline" and report["counts"]["images"] == 20
    for key in METRIC_KEYS:
        assert report[key] is not None and 0.0 <= report[key] <= 1.0, key
    # planted blobs and scratches are high-contrast: a per-pixel grey model sees them
    assert report["image_auroc"] > 0.7 and report["pixel_auroc"] > 0.7
