"""The cam family end to end on a tiny synthetic dataset: train from image labels, package, load, predict."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.dataset import open_dataset
from core.data.synthetic import write_synthetic_dataset
from core.evaluation import evaluate
from core.inference.detector import Detector
from core.inference.mask_refinement import WITHOUT_MASKS, fixed_choice_record
from core.inference.package import read_meta
from core.training.api import TrainingCancelled, TrainingError, TrainOptions, trainer_for
from core.training.holdout import OUT_OF_FOLD

FAST = {"input_size": 96, "gcm_rounds": 1, "iem_rounds": 2, "calibration_folds": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("cam") / "syn", train_good=24, train_defect=20,
                                   test_good=8, test_defect=8, size=(96, 96), seed=4, masks=True)
    # Weak supervision must never read a training mask: make them all unreadable.
    for mask in (root / "train" / "masks").iterdir():
        mask.write_bytes(b"not a png")
    return root


@pytest.mark.timeout(120)
def test_train_package_load_predict(dataset, tmp_path):
    events = []
    out = trainer_for("cam")(open_dataset(dataset), TrainOptions(out=tmp_path / "m", epochs=3, extra=FAST), events.append)
    meta = read_meta(out)
    assert meta["family"] == "cam" and meta["dataset"]["supervision"] == "weak"
    assert len(meta["dataset"]["hash"]) == 64
    assert set(meta["config"]["stage_seconds"]) == {"load", "features", "calibration", "dfc", "clm", "gcm", "iem",
                                                    "crf", "segmenter-1", "refine", "segmenter-2", "refine-3",
                                                    "segmenter-3", "calibrate"}
    assert meta["evaluation"]["train_seconds"] > 0
    assert meta["config"]["network"]["map_from"] == "segmentation"  # the default: the decoder's map
    # two calibration copies of the classifier, each trained without half of each class, scored that half; the
    # OK/NG thresholds were set on all 44 out-of-fold scores before the shipped pipeline ran on all images
    review = meta["calibration"].pop("review")  # shares of good / defect sent to REVIEW
    # masks are snapped to edges at inference by the pseudo masks' own CRF settings, a fixed choice (no masks)
    assert meta["calibration"].pop("mask_refinement") == fixed_choice_record()
    assert meta["mask_refinement"] == WITHOUT_MASKS.to_dict()
    assert set(review) == {"good", "defect"} and all(0.0 <= v <= 1.0 for v in review.values())
    assert meta["calibration"] == {"source": OUT_OF_FOLD, "folds": 2, "good": 24, "defect": 20,
                                   "refit": True, "note": ""}
    stages = [e.stage for e in events]
    assert stages.index("features") < stages.index("calibration") < stages.index("dfc")
    assert stages.index("dfc") < stages.index("gcm") < stages.index("crf") < stages.index("segmenter-3")
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "weights.safetensors"]

    detector = Detector.load(out, device="cpu")
    assert detector.mask_refinement == WITHOUT_MASKS
    images = [np.full((70, 130), 128, np.uint8), np.zeros((96, 96, 3), np.uint8)]
    results = detector.predict(images)
    assert [r.anomaly_map.shape for r in results] == [(70, 130), (96, 96)]
    assert all(0.0 <= r.score <= 1.0 for r in results)
    report = evaluate(detector, open_dataset(dataset))
    assert report["image_ap"] > 0.8, report   # planted defects are obvious; the distilled score must see them
    assert report["pixel_ap"] is not None and report["miou"] is not None


@pytest.mark.timeout(120)
def test_holding_back_for_calibration_leaves_the_shipped_segmenter_as_it_would_be(dataset, tmp_path):
    from safetensors.torch import load_file

    trainer = trainer_for("cam")
    held = trainer(open_dataset(dataset), TrainOptions(out=tmp_path / "held", epochs=2, extra=FAST), lambda e: None)
    plain = trainer(open_dataset(dataset), TrainOptions(out=tmp_path / "plain", epochs=2,
                                                        extra={**FAST, "calibration_folds": 0}), lambda e: None)
    a, b = load_file(str(held / "weights.safetensors")), load_file(str(plain / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_meta(held)["calibration"]["refit"] and not read_meta(plain)["calibration"]["refit"]


def test_cancel_stops_training(dataset, tmp_path):
    cancel = threading.Event()
    seen = []

    def progress(event):
        seen.append(event.stage)
        if event.stage == "dfc":
            cancel.set()

    with pytest.raises(TrainingCancelled):
        trainer_for("cam")(open_dataset(dataset), TrainOptions(out=tmp_path / "m", epochs=2, extra=FAST,
                                                               cancel=cancel), progress)
    assert "segmenter-1" not in seen and not (tmp_path / "m").exists()


def test_bad_requests_are_refused_clearly(dataset, tmp_path):
    train = trainer_for("cam")
    with pytest.raises(TrainingError, match="unsupervised"):
        train(open_dataset(dataset), TrainOptions(out=tmp_path / "m", supervision="unsupervised"), print)
    with pytest.raises(TrainingError, match="unknown cam training options"):
        train(open_dataset(dataset), TrainOptions(out=tmp_path / "m", extra={"nope": 1}), print)
    refusals = [({"seg_rounds": 0}, "seg_rounds must be a whole number of at least 1"),
                ({"seg_rounds": 2.5}, "'seg_rounds' cannot be 2.5"),          # a whole number is due
                ({"clm_weight": "high"}, "'clm_weight' cannot be 'high'"),   # a word where a number belongs
                ({"background_within": [3]}, "'background_within' cannot be"),
                ({"crf_iterations": 0}, "cam CRF settings: mask refinement iterations"),  # before any work
                ({"refine_masks": "yes"}, "'refine_masks' cannot be 'yes'"),
                ({"map_from": "heads"}, "map_from must be one of"),
                ({"cam_map": "absolute"}, "cam_map must be one of"),
                ({"decoder_channels": 33}, "decoder_channels must be an even number"),
                ({"image_channels": 0}, "image_channels at least 1"),
                ({"unexplained_cam_map": "absolute"}, "unexplained_cam_map must be one of"),
                ({"anomaly_growth": "some"}, "anomaly_growth must be one of")]
    for extra, message in refusals:
        with pytest.raises(TrainingError, match=message):
            train(open_dataset(dataset), TrainOptions(out=tmp_path / "m", extra=extra), print)


@pytest.mark.timeout(120)
def test_the_number_of_segmenter_rounds_is_a_setting(dataset, tmp_path):
    """seg_rounds 1 stops after the first segmenter; 2 is the issue's pipeline (the default is 3). The first run
    also turns the inference-time mask refinement off, and makes its map from both heads (map_from); the second
    builds a narrower segmenter, reads the CAM of unexplained defects absolutely and grows every defect image's map
    over the anomaly regions that touch it (options, not defaults)."""
    expected = {1: ["segmenter-1"], 2: ["segmenter-1", "refine", "segmenter-2"]}
    for rounds, stages in expected.items():
        events = []
        out = trainer_for("cam")(open_dataset(dataset), TrainOptions(
            out=tmp_path / f"rounds{rounds}", epochs=1,
            extra={**FAST, "calibration_folds": 0, "seg_rounds": rounds, "refine_masks": rounds != 1,
                   "map_from": "both" if rounds == 1 else "segmentation",
                   **({"decoder_channels": 16, "image_channels": 4, "unexplained_cam_map": "sigmoid",
                       "anomaly_growth": "all", "anomaly_min_area": 0.0} if rounds == 2 else {})}), events.append)
        meta = read_meta(out)
        assert ("mask_refinement" in meta) == (rounds != 1)
        assert meta["config"]["network"]["map_from"] == ("both" if rounds == 1 else "segmentation")
        seconds = meta["config"]["stage_seconds"]
        assert {name for name in seconds if name.startswith(("segmenter", "refine"))} == set(stages)
        ran = [e.stage for e in events if e.stage.startswith(("segmenter", "refine"))]
        assert sorted(set(ran), key=ran.index) == stages   # in this order
        fractions = [e.fraction for e in events]
        assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
        detector = Detector.load(out, device="cpu")
        assert (detector.mask_refinement is None) == (rounds == 1)
        decoder = detector.package.network.decoder
        widths = (decoder.lateral.out_channels, decoder.image[0][0].out_channels)
        assert widths == ((16, 4) if rounds == 2 else (64, 16))   # the setting, else the default
        iem_end = [e for e in events if e.stage == "iem"][-1]
        assert 0.0 <= iem_end.metrics["reread"] <= iem_end.metrics["unexplained"]
        assert iem_end.metrics["reread"] == 0.0 or rounds == 2
        # the share of defect images whose map grew over an anomaly region: some with the option, none without it
        assert (0.0 < iem_end.metrics["grown"] <= 1.0) if rounds == 2 else iem_end.metrics["grown"] == 0.0
        result = detector.predict([np.zeros((96, 96, 3), np.uint8)])[0]
        assert result.anomaly_map.shape == (96, 96)


def test_keep_stages_writes_beside_the_package(dataset, tmp_path):
    """The ablation's inputs (benchmarks/cam_ablation.py) live beside the package, never inside it."""
    out = trainer_for("cam")(open_dataset(dataset), TrainOptions(
        out=tmp_path / "m", epochs=1, extra={**FAST, "keep_stages": True, "gcm_rounds": 1}), lambda e: None)
    stages = Path(str(out) + ".stages")
    names = sorted(p.name for p in stages.iterdir())
    # every segmenter round before the last (the default has 3: the package is the third)
    assert names == ["config.json", "head_cam.safetensors", "head_cam_long.safetensors", "head_clm.safetensors",
                     "head_gcm.safetensors", "seg1", "seg2"]
    assert json.loads((stages / "config.json").read_text())["training"]["input_size"] == 96
    shipped = Detector.load(out, device="cpu")
    for name in ("seg1", "seg2"):
        earlier = Detector.load(stages / name, device="cpu")
        assert earlier.family == "cam"
        # formed like the package: its mask refinement, and a pixel threshold of its own
        assert earlier.package.meta["mask_refinement"] == shipped.package.meta["mask_refinement"]
        assert 0.0 < earlier.thresholds.pixel < 1.0
