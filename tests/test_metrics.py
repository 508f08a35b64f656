"""core.metrics against cases worked out on paper and against slow brute-force definitions."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from core import metrics
from core.metrics import (PixelMetrics, aupro, auroc, average_precision, image_metrics, iou, pixel_metrics,
                          undefined_reason)

# --------------------------------------------------------------------------- brute-force references


def brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney: P(score_pos > score_neg) + 0.5 P(tie), over all pairs."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (pos.size * neg.size))


def brute_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's AP: sum over distinct thresholds (descending) of recall step x precision."""
    ap, previous_recall = 0.0, 0.0
    for threshold in np.unique(scores)[::-1]:
        predicted = scores >= threshold
        true_pos = np.sum(predicted & (labels == 1))
        recall = true_pos / np.sum(labels == 1)
        ap += (recall - previous_recall) * true_pos / predicted.sum()
        previous_recall = recall
    return float(ap)


def brute_aupro(maps: list[np.ndarray], truths: list[np.ndarray], max_fpr: float = 0.3) -> float:
    """MVTec AD definition, one threshold at a time over every distinct value, trapezoid up to max_fpr."""
    regions = []
    for amap, truth in zip(maps, truths):
        count, labels = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
        regions += [amap[labels == r] for r in range(1, count)]
    negatives = np.concatenate([amap[~truth] for amap, truth in zip(maps, truths)])
    fpr, pro = [0.0], [0.0]
    for threshold in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        fpr.append(float(np.mean(negatives >= threshold)))
        pro.append(float(np.mean([np.mean(r >= threshold) for r in regions])))
    area = 0.0
    for f0, f1, p0, p1 in zip(fpr[:-1], fpr[1:], pro[:-1], pro[1:]):
        if f0 >= max_fpr:
            break
        if f1 > max_fpr:
            p1, f1 = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0), max_fpr
        area += (f1 - f0) * (p0 + p1) / 2
    return area / max_fpr


# --------------------------------------------------------------------------- image level, by hand


def test_auroc_and_ap_hand_computed() -> None:
    # sklearn's documented example: thresholds 0.8 (P=1, R=.5), 0.4 (P=.5), 0.35 (P=2/3, R=1)
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert auroc(scores, labels) == pytest.approx(0.75)
    assert average_precision(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_ties_count_half_and_form_one_step() -> None:
    # positive 0.5 ties the negative 0.5: pairs (0.5 vs 0.2)=1, (0.5 vs 0.5)=0.5, (0.9 vs both)=2 -> 3.5/4
    scores, labels = np.array([0.2, 0.5, 0.5, 0.9]), np.array([0, 0, 1, 1])
    assert auroc(scores, labels) == pytest.approx(0.875)
    # threshold 0.9: P=1 R=.5; threshold 0.5 takes both tied images at once: P=2/3 R=1
    assert average_precision(scores, labels) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # everything tied: the ROC is the diagonal, AP is the base rate
    flat = np.full(4, 0.3)
    assert auroc(flat, np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    assert average_precision(flat, np.array([0, 1, 0, 0])) == pytest.approx(0.25)


def test_perfect_and_inverted_predictors() -> None:
    labels = np.array([1, 1, 0, 0])
    perfect = np.array([0.9, 0.8, 0.2, 0.1])
    assert auroc(perfect, labels) == 1.0
    assert average_precision(perfect, labels) == 1.0
    inverted = 1.0 - perfect
    assert auroc(inverted, labels) == 0.0
    # threshold 0.2: P=1/3 R=.5; threshold 0.1: P=2/4 R=1
    assert average_precision(inverted, labels) == pytest.approx(0.5 / 3 + 0.5 * 0.5)


def test_single_class_is_none_with_reason() -> None:
    scores = np.array([0.1, 0.7, 0.3])
    assert auroc(scores, np.zeros(3)) is None
    assert average_precision(scores, np.ones(3)) is None
    values, notes = image_metrics(scores, np.zeros(3))
    assert values == {"image_auroc": None, "image_ap": None}
    assert "all 3 images are good" in notes["image_auroc"]
    assert "defective" in undefined_reason(np.ones(2))
    assert undefined_reason(np.array([0, 1])) is None
    assert image_metrics(scores, np.array([0, 1, 0]))[1] == {}


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        auroc(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        average_precision(np.array([0.1, 0.2]), np.array([0, 2]))


@pytest.mark.parametrize("chunk", [metrics._CHUNK, 3])
def test_image_metrics_match_brute_force_with_many_ties(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    # chunk=3 makes runs of tied values straddle the chunk borders of the vectorised code
    monkeypatch.setattr(metrics, "_CHUNK", chunk)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        n = int(rng.integers(2, 30))
        scores = rng.integers(0, 5, n).astype(np.float64)  # few levels -> many ties
        labels = rng.integers(0, 2, n)
        if labels.all() or not labels.any():
            continue
        assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)
        assert average_precision(scores, labels) == pytest.approx(brute_ap(scores, labels), abs=1e-12)
        checked += 1
    assert checked > 100


# --------------------------------------------------------------------------- pixel level


def _two_region_case() -> tuple[np.ndarray, np.ndarray]:
    """Region A: 2 pixels (0.9, 0.5); region B: 1 pixel (0.7); negatives 0.8, 0.3, 0.2, 0.1, 0.0."""
    amap = np.array([[0.9, 0.5, 0.8, 0.3],
                     [0.2, 0.1, 0.0, 0.7]], dtype=np.float32)
    truth = np.array([[1, 1, 0, 0],
                      [0, 0, 0, 1]], dtype=bool)
    return amap, truth


def test_pixel_metrics_hand_computed() -> None:
    amap, truth = _two_region_case()
    values, notes = pixel_metrics([amap], [truth])
    assert notes == {"miou": "no predicted masks to compare", "iou": "no predicted masks to compare"}
    # pairs: 0.9 beats 5 negatives, 0.7 beats 4, 0.5 beats 4 -> 13/15
    assert values["pixel_auroc"] == pytest.approx(13 / 15)
    # thresholds 0.9 (P=1), 0.7 (P=2/3), 0.5 (P=3/4), each adding recall 1/3
    assert values["pixel_ap"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # PRO is the mean over regions, not pixels: curve (0,0)-(0,.25)-(.2,.25)-(.2,1)-(.4,1);
    # area to FPR .3 = .2*.25 + .1*1 = .15; / .3 = .5
    assert values["aupro"] == pytest.approx(0.5)
    assert aupro([amap], [truth]) == pytest.approx(0.5)
    assert aupro([amap], [truth], max_fpr=1.0) == pytest.approx(0.2 * 0.25 + 0.8 * 1.0)


def test_aupro_regions_are_8_connected() -> None:
    amap = np.zeros((3, 3), np.float32)
    truth = np.zeros((3, 3), bool)
    truth[0, 0] = truth[1, 1] = truth[1, 2] = True  # (0,0) touches (1,1) diagonally: one region of 3
    amap[0, 0] = 1.0
    # one region: PRO 1/3 at FPR 0, then a straight segment to (1, 1); at FPR .3 PRO = 1/3 + 2/3 * .3.
    # (4-connectivity would see regions {(0,0)} and {(1,1),(1,2)}: PRO .5 at FPR 0 -> .575.)
    expected = (1 / 3 + (1 / 3 + 2 / 3 * 0.3)) / 2
    assert aupro([amap], [truth]) == pytest.approx(expected, abs=1e-12)


def test_perfect_constant_and_inverted_maps() -> None:
    amap, truth = _two_region_case()
    perfect = truth.astype(np.float32)
    values, _ = pixel_metrics([perfect], [truth])
    assert values["pixel_auroc"] == 1.0 and values["pixel_ap"] == 1.0 and values["aupro"] == pytest.approx(1.0)
    constant = np.full_like(amap, 0.4)
    values, _ = pixel_metrics([constant], [truth])
    # one diagonal segment from (0,0) to (1,1), cut at .3: .3 * .3 / 2 / .3
    assert values["pixel_auroc"] == pytest.approx(0.5) and values["aupro"] == pytest.approx(0.15)
    assert values["pixel_ap"] == pytest.approx(3 / 8)
    values, _ = pixel_metrics([1.0 - perfect], [truth])
    assert values["pixel_auroc"] == 0.0 and values["aupro"] == 0.0


@pytest.mark.parametrize("chunk", [metrics._CHUNK, 4])
def test_pixel_metrics_match_brute_force(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(metrics, "_CHUNK", chunk)
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(40):
        maps, truths = [], []
        for _ in range(int(rng.integers(1, 4))):
            truth = np.zeros((10, 12), bool)
            for _ in range(int(rng.integers(0, 3))):
                y, x = rng.integers(0, 9, 2)
                truth[y:y + rng.integers(1, 4), x:x + rng.integers(1, 5)] = True
            maps.append(rng.integers(0, 6, truth.shape).astype(np.float32) + 2.0 * truth)  # ties everywhere
            truths.append(truth)
        if not any(t.any() for t in truths):
            continue
        values, _ = pixel_metrics(maps, truths)
        flat_maps = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
        flat_truth = np.concatenate([t.ravel() for t in truths]).astype(int)
        assert values["pixel_auroc"] == pytest.approx(brute_auroc(flat_maps, flat_truth), abs=1e-9)
        assert values["pixel_ap"] == pytest.approx(brute_ap(flat_maps, flat_truth), abs=1e-9)
        assert values["aupro"] == pytest.approx(brute_aupro(maps, truths), abs=1e-9)
        checked += 1
    assert checked > 25


def test_random_maps_give_chance_figures() -> None:
    rng = np.random.default_rng(2)
    truths = [np.zeros((64, 64), bool) for _ in range(6)]
    for truth in truths[:3]:
        truth[20:30, 10:40] = True
    maps = [rng.random((64, 64), dtype=np.float32) for _ in truths]
    values, _ = pixel_metrics(maps, truths)
    assert values["pixel_auroc"] == pytest.approx(0.5, abs=0.03)
    assert values["aupro"] == pytest.approx(0.15, abs=0.03)
    base_rate = sum(t.sum() for t in truths) / sum(t.size for t in truths)
    assert values["pixel_ap"] == pytest.approx(base_rate, abs=0.02)


def test_iou_per_image_and_dataset_wide() -> None:
    truth = np.zeros((4, 4), bool)
    truth[0, :] = True                       # 4 defect pixels
    predicted = np.zeros((4, 4), bool)
    predicted[0, :2] = predicted[1, :2] = True  # 2 hits, 2 false alarms
    assert iou(predicted, truth) == pytest.approx(2 / 6)
    good_truth = np.zeros((4, 4), bool)
    false_alarm = np.zeros((4, 4), bool)
    false_alarm[3, :3] = True                # 3 false-alarm pixels on a good image
    acc = PixelMetrics()
    acc.add(truth.astype(np.float32), truth, predicted, defective=True)
    acc.add(np.zeros((4, 4), np.float32), good_truth, false_alarm, defective=False)
    values, _ = acc.result()
    assert values["miou"] == pytest.approx(1 / 3)        # only the defective image
    assert values["iou"] == pytest.approx(2 / (6 + 3))   # the good image's false alarms count


def test_empty_masks() -> None:
    empty = np.zeros((5, 5), bool)
    assert iou(empty, empty) == 1.0
    # only good images: no defect pixels -> ranking metrics undefined, IoU of no predictions undefined
    values, notes = pixel_metrics([np.zeros((5, 5), np.float32)] * 2, [empty, empty], [empty, empty], [0, 0])
    assert all(values[k] is None for k in values)
    assert "no defect pixels" in notes["pixel_auroc"] and "2 images" in notes["aupro"]
    assert "no defective images" in notes["miou"]
    # a false alarm on a good image: dataset-wide IoU is 0, not undefined
    alarm = empty.copy()
    alarm[2, 2] = True
    values, _ = pixel_metrics([np.zeros((5, 5), np.float32)], [empty], [alarm], [0])
    assert values["iou"] == 0.0
    # a defective image whose mask file is empty and nothing predicted: agreement, IoU 1
    values, _ = pixel_metrics([np.zeros((5, 5), np.float32)], [empty], [empty], [1])
    assert values["miou"] == 1.0


def test_pixel_inputs_checked_and_storage_released() -> None:
    acc = PixelMetrics()
    with pytest.raises(ValueError, match="same"):
        acc.add(np.zeros((4, 4)), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.full((4, 4), np.nan), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="differ in size"):
        acc.add(np.zeros((4, 4)), np.zeros((4, 4), bool), np.zeros((3, 3), bool))
    assert acc._neg == []  # a refused image leaves nothing behind
    amap, truth = _two_region_case()
    assert acc.add(amap, truth) is None
    assert PixelMetrics().add(amap, truth, amap > 0.6) == pytest.approx(2 / 4)  # hits .9, .7; false alarm .8
    assert sum(c.size for c in acc._neg) == 5  # only the values are kept, split by class
    values, _ = acc.result()
    assert acc._neg == [] and acc._pos == []   # handed over to the metric arrays, not duplicated
    assert math.isclose(values["pixel_auroc"], 13 / 15)
