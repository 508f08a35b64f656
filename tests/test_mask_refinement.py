"""Mask refinement (dense CRF on the thresholded map): it snaps a blurred map to the defect's outline, costs
nothing where the map finds nothing, is chosen only when it pays on images with known masks, and the
detector applies it from the package (or not, when asked for raw masks)."""
from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

import core.inference.mask_refinement as refinement_module
from core.data.images import to_rgb_float
from core.data.synthetic import plant_defect, textured_surface
from core.inference.detector import Detector
from core.inference.mask_refinement import (CANDIDATES, WITHOUT_MASKS, MaskRefinement, centred_probability,
                                            choose_refinement, fixed_choice_record, refined_mask, to_uint8_rgb)
from core.inference.package import PackageError, load_package, new_meta, save_package
from core.inference.result import Thresholds
from core.metrics import iou
from core.models.backbones import IMAGENET_NORMALISATION
from core.models.baseline import BaselineNetwork


def _blurred_case(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured image (H, W, 3) uint8 with a planted defect, its mask (H, W) bool, and a map (H, W) in [0, 1]
    that is the mask blurred as a coarse network's map would be (threshold 0.5 gives a blob wider than the defect)."""
    rng = np.random.default_rng(seed)
    grey, mask = plant_defect(textured_surface(rng, (size, size)), rng)
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=4.0)
    amap = np.clip(blurred / max(float(blurred.max()), 1e-6), 0.0, 1.0) * 0.9
    return np.repeat(grey[..., None], 3, axis=2), mask.astype(bool), amap


def test_centring_puts_the_pixel_threshold_at_one_half():
    amap = np.array([[0.1, 0.3, 0.6]], np.float32)
    centred = centred_probability(amap, 0.3)
    assert centred[0, 1] == pytest.approx(0.5, abs=1e-5)
    assert centred[0, 0] < 0.5 < centred[0, 2]


def test_refinement_snaps_a_blurred_map_closer_to_the_defect_outline():
    gains = []
    for seed in range(6):
        image, mask, amap = _blurred_case(seed)
        threshold = 0.2  # low: the raw mask bloats past the defect, as a smoothed coarse map does
        raw = iou(amap >= threshold, mask)
        refined = iou(MaskRefinement().posterior(image, amap, threshold) >= 0.5, mask)
        gains.append(refined - raw)
    assert np.mean(gains) > 0.05 and sum(g > 0 for g in gains) >= 5, f"IoU gains {np.round(gains, 3)}"


def test_a_map_without_a_finding_costs_no_crf_and_gives_an_empty_mask(monkeypatch):
    calls = []
    monkeypatch.setattr(refinement_module, "dense_crf", lambda *a, **k: calls.append(1))
    image, _, amap = _blurred_case(0)
    posterior = MaskRefinement().posterior(image, amap * 0.1, 0.5)
    assert not calls and posterior.shape == amap.shape and not posterior.any()


def test_the_crf_sees_only_the_box_around_the_raw_mask(monkeypatch):
    shapes = []
    real = refinement_module.dense_crf

    def spy(image, prob, **kwargs):
        shapes.append(prob.shape)
        return real(image, prob, **kwargs)

    monkeypatch.setattr(refinement_module, "dense_crf", spy)
    image = np.full((100, 100, 3), 120, np.uint8)
    amap = np.zeros((100, 100), np.float32)
    amap[40:50, 60:70] = 0.9                       # the finding
    image[40:50, 60:70] = 40
    image[5:15, 5:15] = 40                         # the same dark patch far away, outside the box
    amap[5:15, 5:15] = 0.4                         # below the threshold, near it
    posterior = MaskRefinement(margin=8).posterior(image, amap, 0.5)
    assert shapes == [(10 + 16, 10 + 16)]
    assert posterior[42:48, 62:68].min() >= 0.5 and not posterior[:30, :30].any()


def test_a_box_larger_than_the_work_size_is_refined_downscaled_and_still_snaps_to_the_outline(monkeypatch):
    shapes = []
    real = refinement_module.dense_crf

    def spy(image, prob, **kwargs):
        shapes.append((prob.shape, kwargs["bilateral_sxy"]))
        return real(image, prob, **kwargs)

    monkeypatch.setattr(refinement_module, "dense_crf", spy)
    image, mask, amap = _blurred_case(3, size=192)
    amap[0, 0] = amap[-1, -1] = 0.9  # two stray cells stretch the box over the whole image
    capped = MaskRefinement(margin=0, work_pixels=64 * 64).posterior(image, amap, 0.2)
    (shape, sxy), = shapes
    assert shape == (64, 64) and sxy == pytest.approx(10.0 / 3.0)  # the kernel shrinks with the image
    assert capped.shape == amap.shape
    assert iou(capped >= 0.5, mask) > iou(amap >= 0.2, mask)


def _stretched_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 96x192 grey image (H, W) uint8 with a planted defect, its mask (H, W), and a blurred map at a 48x48 input
    size (h, w), as a network that squashes the image to a square would give."""
    rng = np.random.default_rng(seed)
    grey, mask = plant_defect(textured_surface(rng, (96, 192)), rng)
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=4.0)
    small = cv2.resize(blurred / max(float(blurred.max()), 1e-6), (48, 48), interpolation=cv2.INTER_AREA)
    return grey, mask.astype(bool), np.clip(small, 0.0, 1.0).astype(np.float32) * 0.9


def test_at_the_image_size_the_crf_sees_the_image_itself_with_kernels_widened(monkeypatch):
    calls = []
    real = refinement_module.dense_crf

    def spy(image, prob, **kwargs):
        calls.append((image.shape, kwargs["gauss_sxy"], kwargs["bilateral_sxy"]))
        return real(image, prob, **kwargs)

    monkeypatch.setattr(refinement_module, "dense_crf", spy)
    grey, mask, small = _stretched_case(0)
    settings = MaskRefinement(margin=0, gauss_sxy=1.0, bilateral_sxy=10.0, work_pixels=96 * 192)
    at_image = refined_mask(replace(settings, resolution="image"), grey, small, 0.2)
    (shape, gauss, bilateral), = calls
    # the box is the raw mask's box in the 96x192 image, not in a 48x48 copy; one input pixel spans 2 rows and 4
    # columns, so the kernels widen by sqrt(2 * 4)
    raw = cv2.resize(small, (192, 96), interpolation=cv2.INTER_LINEAR) >= 0.2
    rows, cols = np.flatnonzero(raw.any(axis=1)), np.flatnonzero(raw.any(axis=0))
    assert shape == (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1, 3)
    assert gauss == pytest.approx(np.sqrt(8.0)) and bilateral == pytest.approx(10.0 * np.sqrt(8.0))
    at_input = refined_mask(settings, grey, small, 0.2)
    assert at_image.shape == at_input.shape == mask.shape
    assert not np.array_equal(at_image, at_input)


def test_at_the_image_size_the_refinement_still_snaps_to_the_outline():
    gains = []
    for seed in range(6):
        grey, mask, small = _stretched_case(seed)
        raw = cv2.resize(small, (192, 96), interpolation=cv2.INTER_LINEAR) >= 0.2
        refined = refined_mask(MaskRefinement(resolution="image"), grey, small, 0.2)
        gains.append(iou(refined, mask) - iou(raw, mask))
    assert np.mean(gains) > 0.05 and sum(g > 0 for g in gains) >= 5, f"IoU gains {np.round(gains, 3)}"


@pytest.mark.parametrize("shape, dtype", [((7, 9), np.uint8), ((7, 9, 3), np.uint8), ((7, 9), np.uint16)])
def test_the_crf_s_colour_input_at_the_image_size_is_the_image_as_the_network_reads_it(shape, dtype):
    image = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    np.testing.assert_array_equal(refinement_module._colour_u8(image), to_uint8_rgb(to_rgb_float(image)))


def test_where_the_image_is_the_input_size_both_resolutions_give_the_same_mask():
    image, _, amap = _blurred_case(2)
    np.testing.assert_array_equal(refined_mask(MaskRefinement(resolution="image"), image, amap, 0.2),
                                  refined_mask(MaskRefinement(), image, amap, 0.2))


def test_a_package_says_in_one_line_whether_and_why_its_masks_are_refined():
    record = {"images": 272, "miou_raw": 0.2767, "miou_candidates": [0.3794, 0.3537, 0.3626], "chosen": 0}
    meta = {"mask_refinement": MaskRefinement().to_dict(), "calibration": {"mask_refinement": record}}
    assert refinement_module.describe(meta) == ("masks snapped to image edges (dense CRF; mIoU on 272 training "
                                                "masks 0.28 → 0.38)")
    assert refinement_module.describe({**meta, "calibration": {}}) == "masks snapped to image edges (dense CRF)"
    at_image = {**meta, "mask_refinement": MaskRefinement(resolution="image").to_dict()}
    assert refinement_module.describe(at_image) == ("masks snapped to image edges (dense CRF at the image's size; "
                                                     "mIoU on 272 training masks 0.28 → 0.38)")
    assert refinement_module.describe({"calibration": {"mask_refinement": {**record, "chosen": None}}}) == ""
    fixed = {"mask_refinement": WITHOUT_MASKS.to_dict(), "calibration": {"mask_refinement": fixed_choice_record()}}
    assert refinement_module.describe(fixed) == ("masks snapped to image edges (dense CRF; fixed setting: no training "
                                                 "masks to choose one on)")


@pytest.mark.parametrize("data, message", [
    ({"iterations": 0}, "iterations"),
    ({"iterations": 2.5}, "iterations"),
    ({"margin": -1}, "margin"),
    ({"bilateral_srgb": 0}, "bilateral_srgb"),
    ({"gauss_compat": "strong"}, "gauss_compat"),
    ({"gauss_compat": True}, "gauss_compat"),
    ({"bilateral_compat": float("nan")}, "bilateral_compat"),
    ({"work_pixels": 100}, "work_pixels"),
    ({"work_pixels": 4096.5}, "work_pixels"),
    ({"colour": 3}, "unknown keys"),
    ({"resolution": "native"}, "resolution"),
    ({"resolution": 1}, "resolution"),
    ([1, 2], "must be an object"),
])
def test_bad_settings_are_refused_naming_the_setting(data, message):
    with pytest.raises(ValueError, match=message):
        MaskRefinement.from_dict(data)


def test_settings_round_trip_through_a_dict():
    settings = MaskRefinement(iterations=3, bilateral_srgb=6.0, margin=12, resolution="image")
    assert MaskRefinement.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    older = {key: value for key, value in MaskRefinement().to_dict().items() if key != "resolution"}
    assert MaskRefinement.from_dict(older).resolution == "input"  # packages from before the key: at the input size


def test_a_refinement_is_chosen_only_where_it_beats_the_raw_masks():
    cases = [_blurred_case(seed) for seed in range(6)]
    images = [image for image, _, _ in cases]
    truths = [mask for _, mask, _ in cases]
    chosen, record = choose_refinement(images, [amap for _, _, amap in cases], truths, 0.2)
    assert chosen is not None and chosen == CANDIDATES[record["chosen"]]
    assert record["images"] == 6 and max(record["miou_candidates"]) >= record["miou_raw"] + 0.01
    # maps that are the masks themselves: the raw masks are already perfect, nothing can gain
    exact = [mask.astype(np.float32) * 0.9 for mask in truths]
    chosen, record = choose_refinement(images, exact, truths, 0.5)
    assert chosen is None and record["chosen"] is None and record["miou_raw"] == 1.0
    assert choose_refinement([], [], [], 0.5) == (None, {"images": 0, "note": "no defect images with known masks"})


def test_the_choice_compares_masks_at_each_image_s_size_and_tries_both_resolutions():
    cases = [_stretched_case(seed) for seed in range(4)]
    greys, truths, smalls = ([case[k] for case in cases] for k in range(3))
    assert {candidate.resolution for candidate in CANDIDATES} == {"input", "image"}
    chosen, record = choose_refinement(greys, smalls, truths, 0.2)
    raw = np.mean([iou(cv2.resize(small, (192, 96), interpolation=cv2.INTER_LINEAR) >= 0.2, truth)
                   for small, truth in zip(smalls, truths)])
    assert record["miou_raw"] == pytest.approx(raw, abs=1e-4) and len(record["miou_candidates"]) == len(CANDIDATES)
    assert chosen == CANDIDATES[record["chosen"]]
    assert record["miou_candidates"][record["chosen"]] == pytest.approx(
        np.mean([iou(refined_mask(chosen, grey, small, 0.2), truth) for grey, truth, small in cases]), abs=1e-4)


def _package(tmp_path, refinement: MaskRefinement | None, pixel: float = 0.5):
    network = BaselineNetwork((32, 32))
    torch.manual_seed(0)
    network.mean.normal_()
    network.std.uniform_(0.5, 2.0)
    meta = new_meta(family="baseline", backbone="none", config={"smoothing": 5}, input_size=(32, 32),
                    normalisation=IMAGENET_NORMALISATION, thresholds=Thresholds(0.3, 0.7, pixel),
                    dataset={"path": "/data/x", "hash": "abc"})
    if refinement is not None:
        meta["mask_refinement"] = refinement.to_dict()
    return save_package(tmp_path / "pkg", network, meta)


def test_the_detector_refines_masks_as_its_package_says_unless_raw_masks_are_asked_for(tmp_path):
    path = _package(tmp_path, MaskRefinement(margin=4))
    image, _, _ = _blurred_case(1, size=64)
    image = image[:48, :]                          # not the input size: masks come back at the image's size
    refined = Detector.load(path, device="cpu").predict([image])[0]
    raw_detector = Detector.load(path, device="cpu", refine_masks=False)
    raw = raw_detector.predict([image])[0]
    assert raw_detector.mask_refinement is None
    np.testing.assert_array_equal(raw.anomaly_map, refined.anomaly_map)  # the map itself is untouched
    np.testing.assert_array_equal(raw.mask, raw.anomaly_map >= 0.5)
    _, maps = raw_detector.infer([image])
    expected = refined_mask(MaskRefinement(margin=4), image, maps[0], 0.5)
    np.testing.assert_array_equal(refined.mask, expected)
    assert refined.mask.shape == image.shape[:2] and not np.array_equal(refined.mask, raw.mask)


def test_an_ng_part_keeps_the_raw_mask_where_the_refinement_would_erase_the_whole_finding(tmp_path):
    detector = Detector.load(_package(tmp_path, MaskRefinement()), device="cpu")
    image = np.full((32, 32, 3), 128, np.uint8)   # no edge for the finding to hold on to
    small_map = np.full((32, 32), 0.1, np.float32)
    small_map[10:12, 20:22] = 0.51                 # a faint speck just over the pixel threshold (0.5)
    assert not refined_mask(detector.mask_refinement, image, small_map, 0.5).any()  # the CRF erases it
    for score, verdict, kept in ((0.9, "NG", True), (0.5, "REVIEW", False), (0.1, "OK", False)):
        detector.infer = lambda images, score=score: (np.array([score], np.float32), small_map[None])
        result = detector.predict([image])[0]
        assert result.verdict.value == verdict
        np.testing.assert_array_equal(result.mask, small_map >= 0.5 if kept else np.zeros((32, 32), bool))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(mask_refinement={"iterations": -3}), "bad mask_refinement: .*iterations"),
    (lambda m: m.update(mask_refinement="crf"), "bad mask_refinement: .*object"),
    (lambda m: m["thresholds"].update(pixel=2.0), "pixel threshold in \\(0, 1\\)"),
])
def test_a_bad_mask_refinement_in_a_package_is_refused(tmp_path, edit, message):
    path = _package(tmp_path, MaskRefinement())
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match=message):
        load_package(path)
