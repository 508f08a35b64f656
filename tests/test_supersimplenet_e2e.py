"""End to end: train SuperSimpleNet on synthetic surfaces with planted defects, load the package, check it works."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from core.data.dataset import open_dataset
from core.data.synthetic import write_synthetic_dataset
from core.inference.detector import Detector
from core.inference.mask_refinement import CANDIDATES, MIN_GAIN, WITHOUT_MASKS, fixed_choice_record
from core.inference.package import load_package
from core.metrics import auroc
from core.models.map_sources import CHOICE, CHOICE_KEYS
from core.training.api import ProgressEvent, TrainingCancelled, TrainOptions, trainer_for
from core.training.holdout import OUT_OF_FOLD, OUT_OF_FOLD_GOOD_UNSEEN_DEFECTS, OWN_UNSEEN_DEFECTS
from core.training.supersimplenet_trainer import DEFAULTS, WEAK_MAP_FROM

SIZE = 96  # small images and network input keep each training run to seconds on CI


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("ssn") / "data", train_good=32, train_defect=16,
                                   test_good=16, test_defect=16, size=(SIZE, SIZE), seed=3)
    return open_dataset(root)


def _train(dataset, out, supervision, epochs, **kwargs):
    events: list[ProgressEvent] = []
    options = TrainOptions(out=out, supervision=supervision, epochs=epochs, device=kwargs.pop("device", "cpu"), seed=0,
                           extra={"input_size": [SIZE, SIZE], "batch_size": 8, **kwargs.pop("extra", {})}, **kwargs)
    path = trainer_for("supersimplenet")(dataset, options, events.append)
    return path, events


def test_weak_training_separates_planted_defects(dataset, tmp_path):
    path, events = _train(dataset, tmp_path / "weak", "weak", epochs=6)
    stages = [e.stage for e in events]
    assert {"features", "train", "calibrate", "done"} <= set(stages)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(e.eta_s is not None and "loss" in e.metrics for e in events if e.stage == "train")
    # time left is the whole run's: when encoding is done, calibration and training are still to come
    encoded = [e for e in events if e.stage == "features" and e.eta_s is not None][-1]
    assert encoded.fraction < 0.5 and encoded.eta_s > 0.0

    detector = Detector.load(path, device="cpu")
    meta = detector.package.meta
    assert meta["family"] == "supersimplenet" and meta["dataset"]["supervision"] == "weak"
    assert meta["dataset"]["hash"] == dataset.content_hash()
    images = [s.load()[0] for s in dataset.test]
    labels = np.array([s.label for s in dataset.test])
    results = detector.predict(images)
    scores = np.array([r.score for r in results])
    assert auroc(scores, labels) >= 0.85, f"score AUROC {auroc(scores, labels):.3f} on planted defects"
    assert results[0].anomaly_map.shape == images[0].shape[:2]
    # calibrated verdicts: most defects are not called OK, most good images are not called NG
    verdicts = [r.verdict.value for r in results]
    good_ng = sum(v == "NG" for v, y in zip(verdicts, labels) if y == 0)
    assert good_ng <= len(labels) // 4
    # the thresholds came from two calibration copies' out-of-fold scores of all 48 training images
    review = meta["calibration"].pop("review")  # shares of good / defect sent to REVIEW
    assert set(review) == {"good", "defect"} and all(0.0 <= v <= 1.0 for v in review.values())
    # weak: no defect masks to choose a mask refinement on, so the fixed one is shipped and the detector uses it
    assert meta["calibration"].pop("mask_refinement") == fixed_choice_record()
    assert meta["mask_refinement"] == WITHOUT_MASKS.to_dict() and detector.mask_refinement == WITHOUT_MASKS
    # the trained views are averaged at inference, as the thresholds were set
    assert meta["test_time_flips"] == ["none", "h"] and detector.flips == ("none", "h")
    # weak: the map joins the classification head's activation map, which learnt from the defects' labels, and is
    # chosen per image between that join and the segmentation map, each centred at its own threshold
    choice = meta["calibration"].pop("map_choice")
    assert WEAK_MAP_FROM == "both" and meta["config"]["map_from"] == CHOICE
    assert meta["config"]["map_choice"] == {key: choice[key] for key in CHOICE_KEYS}
    assert choice["peak_ratio"] == DEFAULTS["map_choice_peak_ratio"]["weak"]
    assert choice["both_threshold"] != choice["segmentation_threshold"] and meta["thresholds"]["pixel"] == 0.5
    assert _map_higher_on_the_defects(detector, dataset) >= 0.8
    assert meta["calibration"] == {"source": OUT_OF_FOLD, "folds": 2, "good": 32, "defect": 16,
                                   "refit": True, "note": ""}


def test_full_supervision_localises_defects(dataset, tmp_path):
    path, events = _train(dataset, tmp_path / "full", "full", epochs=6)
    assert "refine" in {e.stage for e in events}
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    detector = Detector.load(path, device="cpu")
    # the mask refinement was chosen on the out-of-fold maps of all 16 training defects (each has a mask)
    record = detector.package.meta["calibration"]["mask_refinement"]
    assert record["images"] == 16 and len(record["miou_candidates"]) == len(CANDIDATES)
    chosen = record["chosen"]
    assert (chosen is None) == ("mask_refinement" not in detector.package.meta)
    if chosen is not None:
        assert record["miou_candidates"][chosen] >= record["miou_raw"] + MIN_GAIN
        assert detector.mask_refinement == CANDIDATES[chosen]
    assert detector.package.meta["config"]["map_from"] == "segmentation"  # the papers' map, trained on the masks
    assert _map_higher_on_the_defects(detector, dataset) >= 0.8


def _map_higher_on_the_defects(detector, dataset) -> float:
    """Share of the test defects whose map is higher on the defect's pixels than elsewhere (on average)."""
    higher = []
    for sample in dataset.test:
        if sample.label != 1:
            continue
        image, mask = sample.load()
        amap = detector.predict([image])[0].anomaly_map
        higher.append(amap[mask].mean() > amap[~mask].mean())
    return float(np.mean(higher))


def test_holding_back_for_calibration_leaves_the_shipped_network_as_it_would_be(dataset, tmp_path):
    # one thread each: with "auto" a busy moment could give the runs different thread counts, and float sums differ
    held, _ = _train(dataset, tmp_path / "held", "weak", epochs=1, extra={"calibration_folds": 3, "threads": 1})
    plain, _ = _train(dataset, tmp_path / "plain", "weak", epochs=1,
                      extra={"calibration_folds": 0, "threads": 1, "test_time_flips": False})
    held_package, plain_package = load_package(held), load_package(plain)
    # averaging the mirror views at inference changes only how thresholds are set, never the fit
    assert held_package.meta["test_time_flips"] == ["none", "h"] and plain_package.meta["test_time_flips"] == ["none"]
    assert held_package.meta["training"]["cpu_threads"] == plain_package.meta["training"]["cpu_threads"] == 1
    record = held_package.meta["calibration"]
    assert record["refit"] and (record["folds"], record["good"], record["defect"]) == (3, 32, 16)
    assert not plain_package.meta["calibration"]["refit"]
    a, b = held_package.network.state_dict(), plain_package.network.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert held_package.meta["thresholds"] != plain_package.meta["thresholds"]


def test_unsupervised_and_cancel(dataset, tmp_path):
    # one thread each: the two packages below must hold the same network (float sums differ with the thread count)
    path, _ = _train(dataset, tmp_path / "unsup", "unsupervised", epochs=1, extra={"threads": 1})
    meta = load_package(path).meta
    # two calibration copies, each fitted without half of the 32 good images, scored that half; the 16 defect images
    # (which never train an unsupervised model) were scored by the shipped network, fitted on all 32 good images;
    # the thresholds were set on those 48 scores
    assert meta["training"]["images"] == 32
    assert meta["config"]["seg_width"] == DEFAULTS["seg_width_by_regime"]["unsupervised"] == 1024  # the wider head
    review = meta["calibration"].pop("review")  # shares of good / defect sent to REVIEW
    assert set(review) == {"good", "defect"} and all(0.0 <= v <= 1.0 for v in review.values())
    # unsupervised: no defect masks, and no mask refinement is shipped
    assert meta["calibration"].pop("mask_refinement") == {"note": "no training masks to choose a mask refinement on"}
    assert "mask_refinement" not in meta
    assert meta["calibration"] == {"source": OUT_OF_FOLD_GOOD_UNSEEN_DEFECTS, "folds": 2, "good": 32, "defect": 16,
                                   "refit": True, "note": ""}
    # so no training defect lies below the package's OK threshold when the package itself scores it (1 % of 16: none);
    # up to float32 rounding: the Detector batches and lays out the images otherwise than calibration did (the lowest
    # score came out 2.7e-6 under the threshold it set with the 1024-wide head)
    detector = Detector.load(path, device="cpu")
    defects = [s.load()[0] for s in dataset.train if s.label == 1]
    scores = np.array([r.score for r in detector.predict(defects)])
    assert scores.size == 16 and scores.min() >= detector.thresholds.ok - 1e-5, (scores.min(), detector.thresholds)
    # without copies the shipped network scores the good images too (those it was fitted on)
    own, _ = _train(dataset, tmp_path / "own", "unsupervised", epochs=1, extra={"calibration_folds": 0, "threads": 1})
    record = load_package(own).meta["calibration"]
    assert (record["source"], record["folds"], record["good"], record["defect"], record["refit"]) == \
        (OWN_UNSEEN_DEFECTS, 0, 32, 16, False)
    own_detector = Detector.load(own, device="cpu")
    assert min(r.score for r in own_detector.predict(defects)) >= own_detector.thresholds.ok - 1e-5
    # the pixel threshold is set on the shipped network's maps either way (the copies' maps are on another scale)
    assert own_detector.thresholds.pixel == pytest.approx(detector.thresholds.pixel, abs=1e-6)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TrainingCancelled):
        _train(dataset, tmp_path / "cancelled", "weak", epochs=1, cancel=cancel)
    assert not (tmp_path / "cancelled" / "model.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: the CUDA path is not exercised")
def test_cuda_training_and_fp16_inference(dataset, tmp_path):
    path, _ = _train(dataset, tmp_path / "cuda", "weak", epochs=2, device="cuda")
    full = Detector.load(path, device="cuda")
    half = Detector.load(path, device="cuda", half=True)
    images = [s.load()[0] for s in dataset.test[:8]]
    a = np.array([r.score for r in full.predict(images)])
    b = np.array([r.score for r in half.predict(images)])
    assert np.allclose(a, b, atol=2e-2)
