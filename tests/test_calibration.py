"""Threshold calibration and the verdict policy."""
from __future__ import annotations

import numpy as np
import pytest

from core.inference.calibration import (CalibrationError, image_thresholds, outcome_rates, pixel_threshold,
                                        review_shares)
from core.inference.result import Thresholds, Verdict
from core.training.holdout import OUT_OF_FOLD, calibration_folds, describe


def test_verdict_policy_boundaries():
    t = Thresholds(ok=0.3, ng=0.7, pixel=0.5)
    assert t.verdict(0.7) is Verdict.NG
    assert t.verdict(0.6999) is Verdict.REVIEW
    assert t.verdict(0.3) is Verdict.REVIEW
    assert t.verdict(0.2999) is Verdict.OK


@pytest.mark.parametrize("ok, ng", [(0.8, 0.2), (-0.1, 0.5), (0.2, 1.5), (float("nan"), 0.5)])
def test_inconsistent_thresholds_refused(ok, ng):
    with pytest.raises(ValueError):
        Thresholds(ok=ok, ng=ng, pixel=0.5)


def test_separable_scores_cut_in_the_middle_of_the_gap():
    good = np.linspace(0.0, 0.4, 200)
    bad = np.linspace(0.6, 1.0, 100)
    ok, ng = image_thresholds(np.r_[good, bad], np.r_[np.zeros(200), np.ones(100)])
    assert ok <= ng
    # at most 1 % of good images at or above ng, at most 1 % of defects below ok
    assert (good >= ng).mean() <= 0.01
    assert (bad < ok).mean() <= 0.01
    assert ok == ng == pytest.approx(0.5, abs=0.01)


def test_overlapping_scores_give_a_review_band():
    rng = np.random.default_rng(0)
    good, bad = rng.uniform(0, 0.8, 300), rng.uniform(0.2, 1.0, 300)
    ok, ng = image_thresholds(np.r_[good, bad], np.r_[np.zeros(300), np.ones(300)])
    assert 0.15 < ok < 0.3 and 0.7 < ng < 0.85
    assert (good >= ng).mean() <= 0.01 and (bad < ok).mean() <= 0.01


def test_rates_count_images_so_one_odd_image_does_not_set_a_threshold():
    good = np.r_[np.linspace(0.0, 0.5, 99), 0.87]        # 100 good images, one of them odd
    bad = np.r_[0.2, np.linspace(0.55, 1.0, 199)]         # 200 defects, one of them faint
    labels = np.r_[np.zeros(100), np.ones(200)]
    ok, ng = image_thresholds(np.r_[good, bad], labels)
    # 1 % of 100 good images is one image: the odd one may be NG, the next one may not
    assert 0.5 < ng < 0.87 and (good >= ng).sum() == 1
    # 1 % of 200 defects is two: the faint one and the next may be missed, no more
    assert (bad < ok).sum() <= 2 and ok > 0.2
    # at 0 % nothing may be on the wrong side: the odd images set the thresholds
    ok0, ng0 = image_thresholds(np.r_[good, bad], labels, miss_rate=0.0, false_alarm_rate=0.0)
    assert (good >= ng0).sum() == 0 and (bad < ok0).sum() == 0 and ok0 == 0.2


def test_without_defects_no_review_band_is_invented():
    ok, ng = image_thresholds(np.linspace(0, 0.5, 100), np.zeros(100))
    assert ok == ng


def test_without_good_images_calibration_refuses():
    with pytest.raises(CalibrationError, match="no good"):
        image_thresholds(np.ones(5), np.ones(5))


def test_pixel_threshold_separates_planted_region():
    amap = np.zeros((20, 20), np.float32)
    amap[5:10, 5:10] = 0.9
    amap[0, 0] = 0.4
    mask = amap > 0.5
    threshold = pixel_threshold([amap], [mask])
    assert 0.4 < threshold <= 0.9
    assert np.array_equal(amap >= threshold, mask)


def test_pixel_threshold_without_any_defect_mask_uses_good_quantile():
    maps = [np.random.default_rng(0).random((50, 50)).astype(np.float32)]
    threshold = pixel_threshold(maps, [np.zeros((50, 50), bool)], good_quantile=0.99)
    assert threshold == pytest.approx(np.quantile(maps[0], 0.99))
    with pytest.raises(CalibrationError):
        pixel_threshold(maps, [None])


def test_folds_split_each_class_evenly_at_random_and_every_image_is_left_out_once():
    labels = np.r_[np.zeros(200, int), np.ones(61, int)]
    crossfit = calibration_folds(labels, 3, seed=1)
    assert crossfit.used and crossfit.reason == "" and len(crossfit.folds) == 3
    for fold in crossfit.folds:
        assert np.intersect1d(fold.fit, fold.held).size == 0
        assert np.array_equal(np.union1d(fold.fit, fold.held), np.arange(261))
        assert (labels[fold.held] == 0).sum() in (66, 67) and (labels[fold.held] == 1).sum() in (20, 21)
    assert np.array_equal(np.sort(crossfit.held), np.arange(261))   # each image left out by exactly one copy
    assert np.array_equal(calibration_folds(labels, 3, seed=1).held, crossfit.held)
    assert not np.array_equal(calibration_folds(labels, 3, seed=2).held, crossfit.held)
    scores = np.r_[np.linspace(0.0, 0.5, 200), np.linspace(0.4, 1.0, 61)]
    record = describe(crossfit, labels, 3, scores, Thresholds(ok=0.4, ng=0.6, pixel=0.5))
    in_band = (scores >= 0.4) & (scores < 0.6)
    assert record == {"source": OUT_OF_FOLD, "folds": 3, "good": 200, "defect": 61, "refit": True,
                      "note": "", "review": {"good": round(in_band[:200].mean(), 4),
                                             "defect": round(in_band[200:].mean(), 4)}}
    assert 0.15 < record["review"]["good"] < 0.25 and 0.3 < record["review"]["defect"] < 0.35


def test_too_few_images_of_a_class_make_no_folds_and_say_why():
    labels = np.r_[np.zeros(200, int), np.ones(4, int)]   # 4 defects: no usable quantile
    crossfit = calibration_folds(labels, 3)
    assert not crossfit.used and crossfit.held.size == 0 and "4 defect images" in crossfit.reason
    record = describe(crossfit, labels, 3, np.zeros(204), Thresholds(ok=0.5, ng=0.5, pixel=0.5))
    assert record["source"] == "training images" and record["review"] == {"good": 0.0, "defect": 0.0}
    no_defects = review_shares(np.array([0.1, 0.5]), np.array([0, 0]), Thresholds(ok=0.4, ng=0.6, pixel=0.5))
    assert no_defects == {"good": 0.5, "defect": None}
    assert calibration_folds(np.r_[np.zeros(200, int), np.ones(5, int)], 3).used
    assert not calibration_folds(np.r_[np.zeros(200, int), np.ones(7, int)], 8).used   # a fold without a defect
    off = calibration_folds(labels, 0)
    assert not off.used and "0" in off.reason
    for bad in (-1, 1, 2.5, True):
        with pytest.raises(ValueError, match="calibration_folds"):
            calibration_folds(labels, bad)


def test_outcome_rates_follow_the_verdict_policy():
    scores = np.array([0.1, 0.4, 0.6, 0.3, 0.5, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    thresholds = Thresholds(ok=0.4, ng=0.6, pixel=0.5)
    rates = outcome_rates(scores, labels, thresholds.ok, thresholds.ng)
    verdicts = [thresholds.verdict(s) for s in scores]  # OK, REVIEW, NG | OK, REVIEW, NG
    assert verdicts == [Verdict.OK, Verdict.REVIEW, Verdict.NG] * 2
    assert rates == {"miss": pytest.approx(1 / 3), "false_alarm": pytest.approx(1 / 3), "review": pytest.approx(2 / 6),
                     "review_good": pytest.approx(1 / 3), "review_defect": pytest.approx(1 / 3)}
    assert outcome_rates(np.empty(0), np.empty(0), 0.4, 0.6) == dict.fromkeys(rates)  # no parts: nothing to say
    with pytest.raises(CalibrationError, match="3 scores for 2 labels"):
        outcome_rates(np.zeros(3), np.zeros(2), 0.4, 0.6)
