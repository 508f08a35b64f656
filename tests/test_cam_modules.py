"""Each module of the CAM pipeline on synthetic surfaces with planted defects (core.data.synthetic).

A module-scoped fixture trains one small defect-focus classifier head on cached backbone features of
48 synthetic images (image labels only); the CAM, GCM and IEM tests use it on held-out images.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from core.data.synthetic import make_samples, plant_defect, textured_surface
from core.models.backbones import IMAGENET_NORMALISATION, build_backbone
from core.models.cam_classifier import CamHead, DefectFocusClassifier, cam_map, topk_pool
from core.models.cam_segmenter import DEFAULT_CONFIG, CamSegmenter
from core.training.cam.contrastive import Projection, clm_loss
from core.inference.mask_refinement import dense_crf
from core.training.cam.crf import IGNORE, pseudo_mask
from core.training.cam.dfc import HeadSchedule, cams_from_features, image_classifier, train_head
from core.training.cam.good_cells import GoodCellBank, grown_from_cam
from core.training.cam.guided_crop import crop_box, guided_crops, random_box
from core.training.cam.images import extract_features, prepare
from core.training.cam.inpainting import erase_region, extend_again, inpaint_extend
from core.training.cam.pseudo_masks import crf_pseudo_masks, limit_background
from core.training.cam.segmenter_training import predict_from_features, train_decoder

SIZE = (128, 128)
NORM = IMAGENET_NORMALISATION


def _rgb(samples):
    return np.stack([prepare(image, SIZE) for image, _, _ in samples])


@pytest.fixture(scope="module")
def trained():
    """A DFC head trained on 48 synthetic images, and 16 held-out defect images with their masks."""
    torch.set_num_threads(2)
    torch.manual_seed(0)   # the head's initial weights
    rng = np.random.default_rng(3)
    train = make_samples(48, 0.5, rng, SIZE)
    held_out = [s for s in make_samples(24, 1.0, rng, SIZE)][:16]
    backbone = build_backbone("efficientnet_lite0")
    images = _rgb(train)
    labels = np.array([label for _, _, label in train])
    feats = extract_features(backbone, images, NORM)
    head = CamHead(152, 64)
    train_head(head, feats, labels, HeadSchedule(epochs=15, batch_size=16), seed=0)
    test_images = _rgb(held_out)
    test_masks = np.stack([mask for _, mask, _ in held_out])
    test_feats = extract_features(backbone, test_images, NORM)
    probs, cams = cams_from_features(head, test_feats, SIZE, 0.02)
    classifier = DefectFocusClassifier(backbone, head, 0.02)
    return {"backbone": backbone, "head": head, "classifier": classifier, "images": images, "labels": labels,
            "feats": feats, "test_feats": test_feats, "train_masks": np.stack([m for _, m, _ in train]),
            "test_images": test_images, "test_masks": test_masks, "test_probs": probs, "test_cams": cams}


def test_topk_pool_follows_a_small_hot_spot():
    cam = torch.full((2, 1, 32, 32), -5.0)
    cam[0, 0, 10:12, 10:12] = 5.0   # 4 of 1024 positions: plain average pooling would call it good
    logits = topk_pool(cam, 4 / 1024)
    assert logits[0] > 4.0 and logits[1] < -4.0
    assert cam.mean() < 0


def test_cam_map_is_relative_and_scaled_by_the_image_probability():
    cam = torch.zeros(2, 1, 8, 8)
    cam[:, 0, 2, 3] = 4.0
    maps = cam_map(cam, torch.tensor([10.0, -10.0]))
    assert maps[0, 0, 2, 3] > 0.99 and maps[0].sum() < 1.01       # peak 1, median 0
    assert maps[1].max() < 1e-3                                      # a good image stays low


def test_cam_map_can_be_read_absolutely_instead():
    """kind "sigmoid": sigmoid(CAM) x P(defect), so a CAM positive over a wide area stays high over all of it."""
    cam = torch.full((1, 1, 8, 8), -4.0)
    cam[0, 0, :4] = 3.0                                # half the image
    cam[0, 0, 2, 3] = 8.0                              # and a peak inside it
    absolute = cam_map(cam, torch.tensor([10.0]), kind="sigmoid")
    relative = cam_map(cam, torch.tensor([10.0]))
    assert torch.allclose(absolute, torch.sigmoid(cam) * torch.sigmoid(torch.tensor(10.0)))
    assert (absolute >= 0.5).sum() == 32 and (relative >= 0.5).sum() < 32
    with pytest.raises(ValueError, match="not one of"):
        cam_map(cam, torch.tensor([10.0]), kind="absolute")


def test_cam_peaks_on_the_planted_defect(trained):
    assert (trained["test_probs"] >= 0.5).mean() >= 0.8, "the classifier misses planted defects"
    hits = 0
    for cam, mask in zip(trained["test_cams"], trained["test_masks"]):
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)  # 1 stride-8 cell
        hits += bool(grown.flat[int(np.argmax(cam))])
    assert hits >= 0.75 * len(trained["test_masks"]), f"CAM peak on the defect in only {hits}/16 images"


def test_crop_box_holds_the_peak_region_with_margin():
    cam = np.zeros((128, 128), np.float32)
    cam[40:50, 70:90] = 1.0
    cam[100:104, 5:9] = 0.4           # weaker, elsewhere: not part of the peak region
    y0, y1, x0, x1 = crop_box(cam, margin=0.5, min_side=32)
    assert y1 - y0 == x1 - x0 == 40   # 20 px region side * (1 + 2 * 0.5)
    assert y0 <= 40 and y1 >= 50 and x0 <= 70 and x1 >= 90
    small = np.zeros((128, 128), np.float32)
    small[2, 125] = 1.0               # a corner peak: the minimum side, kept inside the image
    y0, y1, x0, x1 = crop_box(small, min_side=48)
    assert (y0, y1, x1 - x0, x1) == (0, 48, 48, 128)
    box = random_box(np.random.default_rng(0), (128, 96), 200)
    assert box[1] - box[0] == 96 and box[0] >= 0 and box[3] <= 96


def test_guided_crops_contain_the_defect(trained):
    cams, masks, images = trained["test_cams"], trained["test_masks"], trained["test_images"]
    labels = np.ones(len(cams), np.int64)
    contained = 0
    for cam, mask in zip(cams, masks):
        y0, y1, x0, x1 = crop_box(cam)
        contained += mask[y0:y1, x0:x1].sum() >= 0.5 * mask.sum()
    assert contained >= 0.75 * len(cams), f"crops hold most of the defect in only {contained}/16 images"
    mixed = np.concatenate([images, trained["images"][trained["labels"] == 0][:4]])
    crops, crop_labels, boxes = guided_crops(mixed, np.concatenate([cams, np.zeros((4, *SIZE), np.float32)]),
                                             np.r_[labels, np.zeros(4, np.int64)], np.random.default_rng(0))
    assert crops.shape == (32, *SIZE, 3) and crop_labels.sum() == 16
    # good crops copy the defect crops' sides, so zoom cannot give the label away
    sides = [b[1] - b[0] for b in boxes]
    assert sorted(sides[:16]) == sorted(sides[16:])


def _two_blob_image(rng):
    base = textured_surface(rng, SIZE).astype(np.float32)
    mask_a = np.zeros(SIZE, np.uint8)
    mask_b = np.zeros(SIZE, np.uint8)
    cv2.circle(mask_a, (35, 40), 9, 1, -1)
    cv2.circle(mask_b, (92, 88), 9, 1, -1)
    soft = cv2.GaussianBlur((mask_a + mask_b).astype(np.float32), (0, 0), 1.0)
    image = np.clip(base - 70 * soft, 0, 255).astype(np.uint8)
    return prepare(image, SIZE), mask_a.astype(bool), mask_b.astype(bool)


def test_iem_grows_an_under_covering_map(trained):
    """Two defects, a map that covers only the first: erasing it leaves an image the real classifier still
    calls defective, and the CAM of the erased image brings in the second defect."""
    rng = np.random.default_rng(11)
    images, first, second = zip(*[_two_blob_image(rng) for _ in range(4)])
    images = np.stack(images)
    start = np.stack([m.astype(np.float32) for m in first])   # covers defect A only
    classify = image_classifier(trained["classifier"], NORM)
    extended, used = inpaint_extend(images, start, classify, rounds=3)
    assert (used >= 1).all()
    for amap, a, b in zip(extended, first, second):
        assert (amap[a] >= 0.99).all()                          # max-merge never loses what was there
        assert (amap[b] >= 0.5).mean() > 0.3, "the second defect was not added"
    covered_before = np.mean([(s >= 0.5)[b].mean() for s, b in zip(start, second)])
    assert covered_before == 0.0


def test_extend_again_replaces_only_the_chosen_images_whose_other_cam_is_wide_enough(trained):
    """The trainer's re-read of unexplained defects: chosen images get the other CAM, extended; the rest keep their
    map, and a chosen image whose other CAM covers less than min_cover keeps it too."""
    rng = np.random.default_rng(12)
    images, first, second = zip(*[_two_blob_image(rng) for _ in range(4)])
    images = np.stack(images)
    maps = np.stack([m.astype(np.float32) for m in first])                  # defect A only
    wide = np.stack([(a | b).astype(np.float32) for a, b in zip(first, second)])   # both defects
    chosen = np.array([True, False, True, False])
    classify = image_classifier(trained["classifier"], NORM)
    out, redone = extend_again(images, maps, chosen, wide, classify, rounds=1)
    assert redone.tolist() == chosen.tolist()
    for index, (amap, b) in enumerate(zip(out, second)):
        if chosen[index]:
            assert (amap[b] >= 0.99).all()                                   # the wide CAM's second defect
        else:
            np.testing.assert_array_equal(amap, maps[index])
    cover = float((wide >= 0.5).mean(axis=(1, 2)).max())
    out, redone = extend_again(images, maps, chosen, wide, classify, min_cover=cover + 0.01, rounds=1)
    assert not redone.any()
    np.testing.assert_array_equal(out, maps)


def test_iem_stops_when_the_image_looks_good():
    image = np.full((*SIZE, 3), 128, np.uint8)
    calls = []

    def classify(batch):
        calls.append(len(batch))
        return np.zeros(len(batch)), np.ones((len(batch), *SIZE), np.float32)

    cam = np.zeros(SIZE, np.float32)
    cam[10:20, 10:20] = 0.9
    extended, used = inpaint_extend(image[None], cam[None], classify, rounds=3)
    assert calls == [1] and used.tolist() == [0]
    np.testing.assert_array_equal(extended[0], cam)


def test_erase_region_replaces_the_defect_with_surrounding_texture():
    rng = np.random.default_rng(5)
    image, mask = plant_defect(textured_surface(rng, SIZE), rng)
    rgb = prepare(image, SIZE)
    erased = erase_region(rgb, mask)
    background = rgb[~cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)].mean()
    assert abs(erased[mask].mean() - background) < abs(rgb[mask].mean() - background) / 3


def test_crf_snaps_a_blurred_map_to_edges():
    rng = np.random.default_rng(2)
    surface = textured_surface(rng, SIZE).astype(np.float32)
    truth = np.zeros(SIZE, np.uint8)
    cv2.rectangle(truth, (40, 50), (80, 75), 1, -1)
    image = prepare(np.clip(surface + 60 * truth, 0, 255).astype(np.uint8), SIZE)
    blurred = cv2.GaussianBlur(np.roll(truth, 4, axis=1).astype(np.float32), (0, 0), 6.0)
    blurred = 0.9 * blurred / blurred.max()
    truth = truth.astype(bool)

    def iou(pred):
        return (pred & truth).sum() / (pred | truth).sum()

    posterior = dense_crf(image, blurred)
    before, after = iou(blurred >= 0.5), iou(posterior >= 0.5)
    assert after > 0.85 and after > before + 0.1, f"IoU {before:.2f} -> {after:.2f}"


def test_pseudo_mask_has_an_ignore_band():
    posterior = np.zeros((20, 20), np.float32)
    posterior[5:10, 5:10] = 0.95
    posterior[15, 15] = 0.5
    mask = pseudo_mask(posterior, high=0.7, low=0.3, ring=1)
    assert (mask[5:10, 5:10] == 1).all()
    assert mask[15, 15] == IGNORE                  # doubtful posterior
    assert mask[4, 7] == IGNORE and mask[10, 7] == IGNORE and mask[3, 7] == 0  # ring just outside
    images = np.zeros((2, 20, 20, 3), np.uint8)
    maps = np.zeros((2, 20, 20), np.float32)
    maps[1, 8:12, 8:12] = 0.45                     # a weak map: the CRF alone keeps no defect
    masks, _ = crf_pseudo_masks(images, maps, np.array([0, 1]))
    assert (masks[0] == 0).all()                   # good image: all background
    assert (masks[1] == 1).any()                   # defect image: at least its peak region
    masks, _ = crf_pseudo_masks(images, maps, np.array([0, 1]), background_within=0)
    assert (masks[0] == 0).all() and not (masks[1] == 0).any() and (masks[1] == 1).any()
    # one value per image: the second defect image (an "unexplained" one) teaches no background
    three = np.concatenate([maps, maps[1:]])
    masks, _ = crf_pseudo_masks(np.concatenate([images, images[1:]]), three, np.array([0, 1, 1]),
                                background_within=[None, None, 0])
    assert (masks[1] == 0).any() and not (masks[2] == 0).any() and (masks[2] == 1).any()
    with pytest.raises(ValueError, match="2 values for 3 images"):
        crf_pseudo_masks(np.concatenate([images, images[1:]]), three, np.array([0, 1, 1]), background_within=[0, 0])


def test_limit_background_keeps_background_only_near_the_defect():
    mask = np.zeros((40, 40), np.uint8)
    mask[18:22, 18:22] = 1
    mask[0:3, :] = IGNORE
    near = limit_background(mask, 5)
    assert (near[18:22, 18:22] == 1).all()
    assert near[20, 25] == 0 and near[20, 27] == IGNORE        # 4 px from the defect taught, 6 px not
    assert (near[0:3] == IGNORE).all() and near[35, 35] == IGNORE
    assert (limit_background(mask, None) == mask).all()
    assert not (limit_background(np.zeros((5, 5), np.uint8), 3) == 0).any()  # no defect: nothing taught


def test_clm_loss_prefers_a_cam_on_the_distinct_region():
    torch.manual_seed(0)
    embedding = torch.randn(6, 8, 6, 6) * 0.1
    embedding[:3, :, 1:3, 1:3] += torch.tensor([3.0, 0, 0, 0, 0, 0, 0, 0]).view(1, 8, 1, 1)  # the defect
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    on = torch.full((6, 1, 6, 6), -6.0)
    on[:3, :, 1:3, 1:3] = 6.0
    off = torch.full((6, 1, 6, 6), -6.0)
    off[:3, :, 4:6, 4:6] = 6.0
    projection = Projection(8)
    torch.nn.init.eye_(projection.net[0].weight)
    torch.nn.init.eye_(projection.net[2].weight[:8])
    assert clm_loss(embedding, on, labels, projection) < clm_loss(embedding, off, labels, projection) - 0.5
    # the gradient reaches the CAM: that is how the CLM steers attention
    cam = off.clone().requires_grad_(True)
    clm_loss(embedding, cam, labels, projection).backward()
    assert cam.grad is not None and cam.grad.abs().sum() > 0
    assert clm_loss(embedding, on, torch.tensor([1, 0, 0, 0, 0, 0]), projection) == 0  # needs 2 defects


def test_segmenter_learns_the_planted_masks(trained):
    """The decoder trained on the planted masks (as if they were pseudo masks) segments held-out images."""
    masks = trained["train_masks"].astype(np.uint8)
    masks[:, :2, :2] = IGNORE                                   # the ignore value must not break training
    model = CamSegmenter(trained["backbone"], (40, 112), DEFAULT_CONFIG)
    train_decoder(model, trained["feats"], trained["images"], masks, trained["labels"], NORM,
                  epochs=10, lr=5e-3, batch_size=8, good_per_epoch=8, seed=0)
    _, maps = predict_from_features(model, trained["test_feats"], trained["test_images"], NORM)
    ious = [((m >= 0.5) & t).sum() / max(1, ((m >= 0.5) | t).sum()) for m, t in zip(maps, trained["test_masks"])]
    assert np.mean(ious) > 0.4, f"mean IoU {np.mean(ious):.2f} on held-out planted defects"


def test_map_sources_join_the_decoder_map_and_the_classifier_cam(trained):
    """The package's map is the decoder's, score * sigmoid(the score head's CAM), or their geometric mean, as
    config "map_from" says; the score is the same whichever map is made, and the rounds still see the decoder's."""
    torch.manual_seed(1)
    model = CamSegmenter(trained["backbone"], (40, 112), DEFAULT_CONFIG).eval()
    model.score_head.load_state_dict(trained["head"].state_dict())
    fused, x = trained["test_feats"][:4].float(), torch.randn(4, 3, *SIZE)
    outputs = {}
    with torch.inference_mode():
        for source in ("segmentation", "classifier", "both"):
            model.config["map_from"] = source
            outputs[source] = model.outputs(fused, x)
        seg_logits, image_logit = model.heads(fused, x)
        _, cam = model.score_head(fused)
    segmentation, score = outputs["segmentation"]
    classifier = outputs["classifier"][0]
    assert segmentation.shape == classifier.shape == (4, 1, *SIZE) and score.shape == (4,)
    assert torch.equal(segmentation, torch.sigmoid(seg_logits))
    assert torch.allclose(score, torch.sigmoid(image_logit))
    upsampled = torch.nn.functional.interpolate(cam, size=SIZE, mode="bilinear", align_corners=False)
    assert torch.allclose(classifier, torch.sigmoid(upsampled) * score.view(-1, 1, 1, 1))
    assert torch.allclose(outputs["both"][0], torch.sqrt(segmentation * classifier))
    assert all(torch.equal(score, other[1]) for other in outputs.values())
    # the classifier's CAM peaks on the planted defects (test_cam_peaks_on_the_planted_defect), so its map does too
    inside = [float(m[0][t].mean()) for m, t in zip(classifier, trained["test_masks"][:4])]
    outside = [float(m[0][~t].mean()) for m, t in zip(classifier, trained["test_masks"][:4])]
    assert np.mean(inside) > 2 * np.mean(outside), (inside, outside)
    # what the trainer calibrates on is the package's map (here "both"); what its rounds refine is the decoder's
    images = trained["test_images"][:4]
    maps = {}
    for source in ("segmentation", "classifier", "both"):
        model.config["map_from"] = source
        _, maps[source] = predict_from_features(model, fused, images, NORM, package_map=True)
    _, decoder_maps = predict_from_features(model, fused, images, NORM)
    assert np.array_equal(maps["segmentation"], decoder_maps)
    assert np.allclose(maps["both"], np.sqrt(decoder_maps * maps["classifier"]), atol=1e-6)
    assert not np.allclose(maps["both"], decoder_maps, atol=1e-3)


def test_a_bad_map_source_is_refused(tmp_path):
    from core.inference.package import PackageError, load_package, new_meta, save_package
    from core.inference.result import Thresholds

    with pytest.raises(ValueError, match="map_from 'heads'"):
        CamSegmenter(build_backbone("efficientnet_lite0", pretrained=False), (40, 112), {"map_from": "heads"})
    model = CamSegmenter(build_backbone("efficientnet_lite0", pretrained=False), (40, 112), DEFAULT_CONFIG)
    meta = new_meta(family="cam", backbone="efficientnet_lite0", config={"network": {**DEFAULT_CONFIG,
                                                                                    "map_from": "heads"}},
                    input_size=(64, 64), normalisation=NORM, thresholds=Thresholds(0.3, 0.6, 0.5),
                    dataset={"path": "x", "hash": "0", "supervision": "weak"})
    path = save_package(tmp_path / "pkg", model, meta)
    with pytest.raises(PackageError, match="cannot build.*map_from 'heads'"):
        load_package(path)


def _cell_features(rng: np.random.Generator, count: int) -> torch.Tensor:
    """(count, 8, 16, 16) float16 features of 'good' images: unit Gaussian cells."""
    return torch.from_numpy(rng.normal(size=(count, 8, 16, 16)).astype(np.float16))


def test_good_cell_bank_marks_the_cells_unlike_any_good_one():
    rng = np.random.default_rng(0)
    bank = GoodCellBank.fit(_cell_features(rng, 40), rng, bank_cells=4000, calibration_images=10)
    query = _cell_features(rng, 2).float()
    query[0, :, 4:8, 4:8] += 6.0                      # a planted anomaly in the first image only
    maps = bank.anomaly_maps(query, (64, 64))
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    assert maps[0, 20:28, 20:28].mean() > 0.9          # the planted cells (16-32 px at 4 px per cell)
    assert np.median(maps[0]) < 0.3 and np.median(maps[1]) < 0.3
    assert (maps[1] >= 0.5).mean() < 0.05              # a good image: hardly anything marked
    with pytest.raises(ValueError, match="at least 2 good images"):
        GoodCellBank.fit(_cell_features(rng, 1), rng)


def test_growth_from_the_cam_keeps_only_anomaly_regions_it_touches():
    cam = np.zeros((1, 64, 64), np.float32)
    cam[0, 10:14, 10:14] = 0.9                         # the CAM found a corner of the defect
    anomaly = np.zeros((1, 64, 64), np.float32)
    anomaly[0, 8:30, 8:30] = 0.8                       # the defect's whole extent, touching the CAM
    anomaly[0, 45:60, 45:60] = 0.8                     # another mark the classifier did not point at
    grown = grown_from_cam(cam, anomaly)
    assert (grown[0, 8:30, 8:30] >= 0.8).all() and grown[0, 10:14, 10:14].min() == pytest.approx(0.9)
    assert (grown[0, 45:60, 45:60] == 0).all()
    assert (cam == 0.9).sum() == 16                    # the input is left as it was
    small = grown_from_cam(cam, anomaly, min_area=0.2)  # 22x22 px is 12 % of the image: too small to count
    np.testing.assert_array_equal(small, cam)
