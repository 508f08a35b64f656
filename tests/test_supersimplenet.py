"""SuperSimpleNet parts: Perlin masks, noise placement, losses, regimes, targets, package round trip and rejection."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.dataset import Sample
from core.inference.package import PackageError, load_package, new_meta, save_package
from core.inference.result import Thresholds
from core.models.backbones import IMAGENET_NORMALISATION
from core.models.supersimplenet import CPU_CONFIG, PAPER_CONFIG, SuperSimpleNet, make_config
from core.models.map_sources import CHOICE, centred, chosen_map
from core.models.supersimplenet.torch_model import top_share_mean
from core.models.supersimplenet.loss import focal_loss, segmentation_loss, top_cells_loss, truncated_l1
from core.models.supersimplenet.perlin import perlin_mask, perlin_masks, perlin_noise
from core.training.api import TrainingError, TrainOptions
from core.training.feature_cache import FeatureCache
from core.training.holdout import calibration_folds
from core.training.supersimplenet_trainer import (DEFAULTS, UNSUPERVISED_SCORE_FROM, WEAK_MAP_FROM, BalancedSampler,
                                                  GridTargets, TrainingSet, _Scored, _settings, _stage_spans,
                                                  distance_weights, grid_targets, network_sizes, perturb,
                                                  select_samples, smooth_noise, training_step, unused_defects)

GRID = (32, 32)


# ---------------------------------------------------------------- Perlin masks
def test_perlin_noise_shape_range_and_determinism():
    a = perlin_noise((40, 24), (4, 2), np.random.default_rng(3))
    b = perlin_noise((40, 24), (4, 2), np.random.default_rng(3))
    assert a.shape == (40, 24) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.abs(a).max() <= 1.0 and a.std() > 0.05  # real variation, in Perlin's range
    # lattice as fine as the grid: pixel-centre sampling still gives noise, not zeros
    assert np.abs(perlin_noise(GRID, GRID, np.random.default_rng(0))).max() > 0.1


def test_perlin_mask_is_binary_and_threshold_shrinks_it():
    rng = np.random.default_rng(0)
    low = [perlin_mask(GRID, 0.2, np.random.default_rng(seed)).mean() for seed in range(40)]
    high = [perlin_mask(GRID, 0.6, np.random.default_rng(seed)).mean() for seed in range(40)]
    mask = perlin_mask(GRID, 0.2, rng)
    assert mask.dtype == bool and mask.shape == GRID
    assert np.mean(low) > 3 * np.mean(high)  # same noise fields, higher threshold -> much smaller masks
    assert np.mean(low) > 0.05


def test_perlin_masks_batch_has_empty_and_non_empty_masks():
    masks = perlin_masks(64, GRID, 0.2, np.random.default_rng(1), empty_fraction=0.5)
    assert masks.shape == (64, 1, *GRID) and masks.dtype == torch.float32
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    empty = int((masks.amax(dim=(1, 2, 3)) == 0).sum())
    assert 16 <= empty <= 48  # about half are empty
    assert perlin_masks(8, GRID, 0.2, np.random.default_rng(1), empty_fraction=1.0).sum() == 0


# ---------------------------------------------------------------- losses
def test_truncated_l1_is_zero_beyond_the_margin_and_averages_classes_separately():
    target = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert truncated_l1(torch.tensor([-0.6, -0.5, -2.0, 0.7]), target).item() == pytest.approx(0.0)
    # normal pixels: (0.5 + 0) / 3 ; anomalous: 0.5 - 0 = 0.5 -> each class mean counted once
    value = truncated_l1(torch.tensor([0.0, -0.5, -0.5, 0.0]), target).item()
    assert value == pytest.approx(0.5 / 3 + 0.5)
    # a weight of zero removes a pixel
    weight = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert truncated_l1(torch.tensor([9.0, -0.5, -0.5, 0.5]), target, weight).item() == pytest.approx(0.0)


def test_focal_loss_matches_hand_computation_and_down_weights_easy_examples():
    logits, target = torch.tensor([0.0]), torch.tensor([1.0])
    # p = 0.5: bce = ln 2, (1 - p)^4 = 1/16
    assert focal_loss(logits, target).item() == pytest.approx(np.log(2) / 16, rel=1e-5)
    easy = focal_loss(torch.tensor([3.0]), torch.tensor([1.0])).item()
    hard = focal_loss(torch.tensor([-3.0]), torch.tensor([1.0])).item()
    assert hard > 1000 * easy
    assert focal_loss(torch.tensor([3.0, -3.0]), torch.tensor([1.0, 1.0]),
                      torch.tensor([1.0, 0.0])).item() == pytest.approx(easy, rel=1e-5)


def test_segmentation_loss_decreases_when_the_map_is_right():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:4, 2:4] = 1
    right = torch.where(target > 0, 3.0, -3.0)
    assert segmentation_loss(right, target).item() < 0.01 < segmentation_loss(-right, target).item()


# ---------------------------------------------------------------- regimes
def _samples(tmp: Path) -> list[Sample]:
    return [Sample(tmp / "g0.png", 0), Sample(tmp / "g1.png", 0),
            Sample(tmp / "d0.png", 1, tmp / "m0.png"), Sample(tmp / "d1.png", 1, None)]


def test_regimes_pick_samples_and_masks(tmp_path):
    train = _samples(tmp_path)
    unsup = select_samples(train, "unsupervised")
    assert [s.label for s in unsup.samples] == [0, 0] and unsup.use_mask == [True, True]
    weak = select_samples(train, "weak")
    assert len(weak.samples) == 4 and weak.use_mask == [True, True, False, False]  # masks ignored even if present
    mixed = select_samples(train, "mixed")
    assert mixed.use_mask == [True, True, True, False]
    with pytest.raises(TrainingError, match="d1.png"):
        select_samples(train, "full")
    full = select_samples(train[:3], "full")
    assert full.use_mask == [True, True, True]
    with pytest.raises(TrainingError, match="no defect|needs defect"):
        select_samples(train[:2], "weak")
    with pytest.raises(TrainingError, match="no good"):
        select_samples(train[2:], "mixed")


def test_calibration_copies_never_draw_their_fold_and_unsupervised_defects_calibrate(tmp_path):
    train = ([Sample(tmp_path / f"g{i}.png", 0) for i in range(40)]
             + [Sample(tmp_path / f"d{i}.png", 1, tmp_path / f"m{i}.png" if i % 2 else None) for i in range(20)])
    mixed = select_samples(train, "mixed")
    crossfit = calibration_folds(mixed.labels, 3, seed=0)
    for fold in crossfit.folds:
        sampler = BalancedSampler(mixed.labels, 8, np.random.default_rng(0), fold.fit)
        drawn = np.concatenate([sampler.batch() for _ in range(50)])
        assert set(drawn.tolist()) == set(fold.fit.tolist())   # every fitted sample, never one of the fold
        assert sampler.steps_per_epoch == -(-fold.fit.size // 8)   # its fitted samples in batches of 8
        part = mixed.subset(fold.held)                           # a fold keeps its regime's mask rule
        assert all(use == (s.label == 0 or s.mask_path is not None) for s, use in zip(part.samples, part.use_mask))
    assert unused_defects(mixed, train).samples == []
    # unsupervised: defect images never train, so all of them calibrate, next to the good images' out-of-fold scores
    unused = unused_defects(select_samples(train, "unsupervised"), train)
    assert [s.label for s in unused.samples] == [1] * 20 and sum(unused.use_mask) == 10   # the 10 with masks


def test_calibration_scores_the_unflipped_view_and_keeps_maps_only_where_masks_are_known(tmp_path):
    torch.manual_seed(0)
    network = SuperSimpleNet(make_config("efficientnet_lite0"), pretrained=False).eval()
    channels = sum(network.config["channels"])
    features = torch.randn(8, channels, 4, 4).half()   # 4 samples x 2 views (none, h)
    cache = FeatureCache(features=features, flips=("none", "h"),
                         masks=[np.zeros((16, 16), bool), None, np.ones((16, 16), bool), np.zeros((16, 16), bool)])
    samples = [Sample(tmp_path / "g0.png", 0), Sample(tmp_path / "d0.png", 1), Sample(tmp_path / "d1.png", 1),
               Sample(tmp_path / "g1.png", 0)]
    part = TrainingSet([samples[i] for i in (1, 2, 3)], [False, True, True], "mixed")
    scored = _Scored()
    scored.add(network, cache, np.array([1, 2, 3]), part, (16, 16), torch.device("cpu"), batch=2)
    with torch.inference_mode():
        _, logits = network.decide(network.adaptor(features[[2, 4, 6]].float()))   # the unflipped rows
    assert np.allclose(np.concatenate(scored.scores), torch.sigmoid(logits).numpy(), atol=1e-6)
    assert scored.image_labels.tolist() == [1, 1, 0]
    assert scored.maps[0] is None and scored.masks[0] is None          # a defect without a mask: score only
    assert scored.maps[1].shape == (16, 16) and scored.masks[1].all() and not scored.masks[2].any()


def test_calibration_with_test_time_flips_averages_the_views_as_the_detector_will(tmp_path):
    torch.manual_seed(0)
    network = SuperSimpleNet(make_config("efficientnet_lite0"), pretrained=False).eval()
    channels = sum(network.config["channels"])
    features = torch.randn(4, channels, 4, 4).half()   # 2 samples x 2 views (none, h)
    cache = FeatureCache(features=features, flips=("none", "h"), masks=[np.ones((16, 16), bool)] * 2)
    part = TrainingSet([Sample(tmp_path / "d0.png", 1), Sample(tmp_path / "d1.png", 1)], [True, True], "full")
    scored = _Scored(views=("none", "h"))
    scored.add(network, cache, np.array([0, 1]), part, (16, 16), torch.device("cpu"))
    with torch.inference_mode():
        map_logits, logits = network.decide(network.adaptor(features.float()))
        maps = network.anomaly_map(map_logits, (16, 16))[:, 0].numpy()
    scores = torch.sigmoid(logits).numpy()
    np.testing.assert_allclose(np.concatenate(scored.scores), (scores[0::2] + scores[1::2]) / 2, atol=1e-6)
    for sample in (0, 1):  # the mirror view's map flipped back, then the mean
        np.testing.assert_allclose(scored.maps[sample], (maps[2 * sample] + maps[2 * sample + 1][:, ::-1]) / 2,
                                   atol=1e-6)


def test_auto_threads_drop_to_one_while_every_core_is_busy_now():
    import os
    import subprocess
    import sys
    import time as clock

    from core.training.supersimplenet_trainer import _busy_cores, _cpu_threads

    assert _cpu_threads(3) == 3   # an explicit choice is kept
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        clock.sleep(0.5)
        assert _busy_cores() >= (os.cpu_count() or 1) - 0.5
        assert _cpu_threads(0) == 1
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_stage_spans_cover_the_run_in_order_and_follow_its_cost():
    """The progress fraction of each stage: contiguous from 0 to 1 in the order the stages run, with the fit's share
    growing with the epochs (full's 96 against weak's 8) and the copies' with their number."""
    def check(spans, order):
        assert list(spans) == order
        ends = [start + share for start, share in spans.values()]
        assert spans[order[0]][0] == 0.0 and ends[-1] == pytest.approx(1.0)
        assert all(spans[b][0] == pytest.approx(end) for b, end in zip(order[1:], ends))
        assert all(share > 0 for _, share in spans.values())

    weak = _stage_spans(views=1878, images=939, epochs=8, copy_cost=1)
    full = _stage_spans(views=1878, images=939, epochs=96, copy_cost=1)
    three = _stage_spans(views=1878, images=939, epochs=8, copy_cost=2)
    plain = _stage_spans(views=1878, images=939, epochs=8, copy_cost=0)
    for spans in (weak, full, three):
        check(spans, ["features", "calibrate", "train"])
    check(plain, ["features", "train", "calibrate"])
    assert 0.1 < weak["features"][1] < 0.2     # measured on mtd: 44 s of 296
    assert full["features"][1] < weak["features"][1] / 4 and full["train"][1] > weak["train"][1]
    assert three["calibrate"][1] > weak["calibrate"][1]


def test_cpu_epochs_follow_the_regime_unless_given(tmp_path):
    cpu = torch.device("cpu")
    epochs = {regime: _settings(TrainOptions(out=tmp_path, supervision=regime), cpu)["epochs"]
              for regime in ("unsupervised", "weak", "mixed", "full")}
    assert epochs == DEFAULTS["epochs_cpu"] and epochs["weak"] < epochs["full"]
    assert _settings(TrainOptions(out=tmp_path, supervision="full", epochs=3), cpu)["epochs"] == 3
    one_for_all = TrainOptions(out=tmp_path, supervision="mixed", extra={"epochs_cpu": 5})
    assert _settings(one_for_all, cpu)["epochs"] == 5
    with pytest.raises(TrainingError, match="no value for supervision 'full'"):
        _settings(TrainOptions(out=tmp_path, supervision="full", extra={"epochs_cpu": {"weak": 2}}), cpu)


def test_noise_std_follows_the_regime_unless_given_or_paper(tmp_path):
    cpu = torch.device("cpu")
    noise = {regime: _settings(TrainOptions(out=tmp_path, supervision=regime), cpu)["noise_std"]
             for regime in ("unsupervised", "weak", "mixed", "full")}
    assert noise == DEFAULTS["noise_std"] and noise["weak"] > noise["full"]
    assert _settings(TrainOptions(out=tmp_path, supervision="weak", extra={"noise_std": 0.1}), cpu)["noise_std"] == 0.1
    assert _settings(TrainOptions(out=tmp_path, supervision="weak", extra={"paper": True}), cpu)["noise_std"] == 0.015


def test_weak_maps_join_the_classification_head_unless_given(tmp_path):
    cpu = torch.device("cpu")
    source = {regime: _settings(TrainOptions(out=tmp_path, supervision=regime), cpu)["map_from"]
              for regime in ("unsupervised", "weak", "mixed", "full")}
    assert source == {"unsupervised": "segmentation", "weak": WEAK_MAP_FROM, "mixed": "segmentation",
                      "full": "segmentation"} and WEAK_MAP_FROM != "segmentation"
    given = TrainOptions(out=tmp_path, supervision="weak", extra={"map_from": "segmentation"})
    assert _settings(given, cpu)["map_from"] == "segmentation"
    with pytest.raises(TrainingError, match="map_from must be"):
        _settings(TrainOptions(out=tmp_path, supervision="weak", extra={"map_from": "heads"}), cpu)


def test_only_weak_chooses_its_map_per_image_unless_turned_off(tmp_path):
    cpu = torch.device("cpu")
    ratio = {regime: _settings(TrainOptions(out=tmp_path, supervision=regime), cpu)["map_choice_peak_ratio"]
             for regime in ("unsupervised", "weak", "mixed", "full")}
    assert ratio == {"unsupervised": 0.0, "weak": 1.3, "mixed": 0.0, "full": 0.0}
    off = TrainOptions(out=tmp_path, supervision="weak", extra={"map_choice_peak_ratio": 0.0})
    assert _settings(off, cpu)["map_choice_peak_ratio"] == 0.0
    with pytest.raises(TrainingError, match="map_choice_peak_ratio must be"):
        _settings(TrainOptions(out=tmp_path, supervision="weak", extra={"map_choice_peak_ratio": -1.0}), cpu)


def test_chosen_map_takes_the_segmentation_map_only_where_its_peak_is_confident():
    choice = {"segmentation_threshold": 0.4, "both_threshold": 0.2, "peak_ratio": 1.3}
    segmentation = torch.full((3, 1, 8, 8), 0.1)
    segmentation[0, 0, 2, 2] = 0.9   # peak 0.9 > 1.3 x 0.4: this image's map is its segmentation map
    segmentation[1, 0, 2, 2] = 0.5   # peak 0.5 < 0.52: not confident, "both" it is
    both = torch.full((3, 1, 8, 8), 0.1)
    both[:, 0, 4:, 4:] = 0.3
    chosen = chosen_map(segmentation, both, choice)
    assert chosen.shape == (3, 1, 8, 8)
    assert torch.allclose(chosen[0], centred(segmentation[0], 0.4)) and torch.allclose(chosen[1:], centred(both[1:], 0.2))
    # each map centred at its own threshold: the masks at 0.5 are the chosen map's masks at its threshold
    assert torch.equal(chosen[0] > 0.5, segmentation[0] > 0.4) and torch.equal(chosen[1] > 0.5, both[1] > 0.2)
    assert torch.allclose(centred(torch.tensor([0.4]), 0.4), torch.tensor([0.5]))


def test_a_network_with_the_map_choice_checks_it_and_ranks_as_its_sources():
    bad = [None, {"segmentation_threshold": 0.4, "both_threshold": 0.2},
           {"segmentation_threshold": 1.0, "both_threshold": 0.2, "peak_ratio": 1.3},
           {"segmentation_threshold": 0.4, "both_threshold": 0.2, "peak_ratio": 0.0},
           {"segmentation_threshold": "0.4", "both_threshold": 0.2, "peak_ratio": 1.3}]
    for choice in bad:
        with pytest.raises(ValueError, match="map_choice"):
            SuperSimpleNet(make_config("efficientnet_lite0", map_from=CHOICE, map_choice=choice))
    torch.manual_seed(0)
    network = SuperSimpleNet(make_config("efficientnet_lite0", map_from="both")).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = {}
        for source in ("segmentation", "both"):
            network.config["map_from"] = source
            maps[source], score = network(x)
        peaks = maps["segmentation"].flatten(1).amax(dim=1)
        high, low = int(peaks.argmax()), int(peaks.argmin())
        assert peaks[high] > peaks[low]
        network.config.update(map_from=CHOICE, map_choice={"segmentation_threshold": 0.5, "both_threshold": 0.3,
                                                           "peak_ratio": float(peaks.mean()) / 0.5})
        chosen, chosen_score = network(x)
    assert torch.equal(chosen_score, score)  # the score does not depend on the map
    assert torch.allclose(chosen[high], centred(maps["segmentation"][high], 0.5), atol=1e-6)
    assert torch.allclose(chosen[low], centred(maps["both"][low], 0.3), atol=1e-6)


def test_unsupervised_segmentation_head_is_wider_unless_a_width_is_given_or_paper(tmp_path):
    cpu = torch.device("cpu")

    def width(supervision: str, **extra) -> int:
        settings = _settings(TrainOptions(out=tmp_path, supervision=supervision, extra=extra), cpu)
        config = make_config("efficientnet_lite0", paper=bool(settings["paper"]), **network_sizes(settings, extra))
        return SuperSimpleNet(config, pretrained=False).seg_head.layers[0].out_channels  # what is built, not the dict

    assert {regime: width(regime) for regime in ("unsupervised", "weak", "mixed", "full")} == \
        DEFAULTS["seg_width_by_regime"]
    assert width("unsupervised") == 1024 and width("weak") == CPU_CONFIG["seg_width"] == 256
    assert width("unsupervised", seg_width=64) == 64                       # one width given: every regime takes it
    assert width("weak", seg_width_by_regime={"weak": 512}) == 512
    assert width("weak", paper=True) == width("unsupervised", paper=True) == PAPER_CONFIG["seg_width"]
    with pytest.raises(TrainingError, match="seg_width_by_regime must be at least 1"):
        _settings(TrainOptions(out=tmp_path, supervision="unsupervised", extra={"seg_width_by_regime": 0}), cpu)


def test_unsupervised_scores_from_its_map_unless_given(tmp_path):
    cpu = torch.device("cpu")
    source = {regime: _settings(TrainOptions(out=tmp_path, supervision=regime), cpu)["score_from"]
              for regime in ("unsupervised", "weak", "mixed", "full")}
    assert source == {"unsupervised": UNSUPERVISED_SCORE_FROM, "weak": "classifier", "mixed": "classifier",
                      "full": "classifier"} and UNSUPERVISED_SCORE_FROM == "map"
    given = TrainOptions(out=tmp_path, supervision="unsupervised", extra={"score_from": "classifier"})
    assert _settings(given, cpu)["score_from"] == "classifier"
    for extra, message in (({"score_from": "max"}, "score_from must be"),
                           ({"score_top_share": 0.0}, "score_top_share must be a share"),
                           ({"score_top_share": 1.5}, "score_top_share must be a share")):
        with pytest.raises(TrainingError, match=message):
            _settings(TrainOptions(out=tmp_path, supervision="unsupervised", extra=extra), cpu)


def test_grid_targets_dilate_weight_and_keep_tiny_defects():
    mask = np.zeros((256, 256), bool)
    mask[100:102, 100:102] = True  # 4 pixels: far below half an 8x8 cell
    target, weight, block = grid_targets(mask, GRID, dilation=7, weighted=True)
    assert target.sum() >= 1 and block.sum() >= target.sum()
    assert np.all(weight[target == 0] == 1.0)
    unknown = grid_targets(None, GRID, 7, True)
    assert all(a.sum() == 0 for a in unknown)  # unknown mask: no map loss, noise allowed anywhere
    good_target, good_weight, good_block = grid_targets(np.zeros((256, 256), bool), GRID, 7, True)
    assert good_target.sum() == 0 and good_block.sum() == 0 and np.all(good_weight == 1)


def test_distance_weights_peak_in_the_defect_core():
    mask = np.zeros((21, 21), bool)
    mask[5:16, 5:16] = True
    weights = distance_weights(mask)
    assert weights[0, 0] == 1.0 and weights[10, 10] == pytest.approx(3.0)
    assert weights[5, 10] < 0.2 * weights[10, 10]


def test_balanced_sampler_halves_good_and_defect():
    labels = np.array([0] * 30 + [1] * 5, dtype=np.float32)
    sampler = BalancedSampler(labels, 8, np.random.default_rng(0))
    batches = [sampler.batch() for _ in range(20)]
    assert all((labels[b] == 1).sum() == 4 for b in batches)
    only_good = BalancedSampler(np.zeros(10, np.float32), 4, np.random.default_rng(0))
    assert set(np.concatenate([only_good.batch() for _ in range(5)]).tolist()) <= set(range(10))


# ---------------------------------------------------------------- noise placement and the union rule
def _perturb(batch: int, block: torch.Tensor, label: torch.Tensor, known: torch.Tensor):
    adapted = torch.zeros(batch, 4, *GRID)
    return perturb(adapted, block.clone(), torch.ones_like(block), block, known, label, 0.2, 0.015,
                   np.random.default_rng(0))


def test_noise_only_inside_the_perlin_mask_and_never_on_known_defects():
    batch = 32
    block = torch.zeros(batch, 1, *GRID)
    block[:, :, 8:24, 8:24] = 1  # known defect pixels
    out = _perturb(batch, block, torch.ones(batch), torch.ones(batch, dtype=torch.bool))
    real, noised = out.x[:batch], out.x[batch:]
    assert torch.all(real == 0)  # the real half is untouched
    changed = (noised != 0).any(dim=1, keepdim=True)
    assert changed.any(), "some copies must carry noise"
    assert torch.equal(changed.float(), out.noise_mask), "noise exactly where the Perlin mask is"
    assert not changed[block.bool()].any(), "noise inside known defect pixels"
    assert 0.01 < float(noised[changed.expand_as(noised)].std()) < 0.02  # N(0, 0.015^2)
    assert torch.all(out.target[batch:] >= out.target[:batch])
    assert torch.all(out.label == 1)  # defect images stay anomalous, noised or not


def test_smoothed_noise_keeps_its_spread_but_varies_slowly_between_neighbouring_cells():
    torch.manual_seed(0)
    white = torch.randn(8, 6, 32, 32)
    assert smooth_noise(white, 0.0) is white  # 0: independent per cell, as the papers
    smooth = smooth_noise(white, 2.0)
    inner = smooth[..., 8:24, 8:24]  # away from the reflected borders
    assert smooth.shape == white.shape
    assert 0.85 < float(inner.std()) < 1.15, "each value must keep the noise std"
    step = float((inner[..., 1:] - inner[..., :-1]).std())
    assert step < 0.5 * float((white[..., 1:] - white[..., :-1]).std()), "neighbouring cells must move together"
    assert smooth_noise(torch.randn(1, 2, 3, 3), 8.0).shape == (1, 2, 3, 3)  # kernel wider than a tiny grid


def test_settings_of_the_wrong_kind_or_range_are_refused_before_training(tmp_path):
    cpu = torch.device("cpu")
    given = TrainOptions(out=tmp_path, supervision="weak", extra={"noise_smoothing": {"weak": 1.5, "full": 0}})
    assert _settings(given, cpu)["noise_smoothing"] == 1.5
    accepted = [{"noise_std": 0.3}, {"noise_std": {"weak": 1}}, {"epochs_cpu": 3}, {"lr_heads": 1e-3}, {"paper": True}]
    for extra in accepted:
        _settings(TrainOptions(out=tmp_path, supervision="weak", extra=extra), cpu)
    refused = [({"noise_smoothing": -1}, "noise_smoothing must be between"),
               ({"unmasked_top_cells": 1.5}, "unmasked_top_cells must be a share"),
               ({"noise_std": "loud"}, "'noise_std' cannot be 'loud'"),
               ({"epochs_cpu": {"weak": 2.5}}, "'epochs_cpu' cannot be"),          # epochs are whole numbers
               ({"noise_std": {"sometimes": 0.3}}, "'noise_std' cannot be"),       # not a regime
               ({"calibration_folds": 2.0}, "'calibration_folds' cannot be 2.0"),
               ({"paper": 1}, "'paper' cannot be 1"),                             # true/false, not a number
               ({"flips": "h"}, "'flips' cannot be 'h'"),
               ({"flips": ["h", "none"]}, "flips must start with 'none'"),   # the unflipped view is the image
               ({"flips": ["none", "turn"]}, "unknown flips"),
               ({"seg_width": {"weak": 64}}, "'seg_width' cannot be")]           # network sizes: one for all regimes
    for extra, message in refused:
        with pytest.raises(TrainingError, match=message):
            _settings(TrainOptions(out=tmp_path, supervision="weak", extra=extra), cpu)


def test_labels_and_masks_follow_the_union_rule():
    batch = 64
    zeros = torch.zeros(batch, 1, *GRID)
    out = _perturb(batch, zeros, torch.zeros(batch), torch.ones(batch, dtype=torch.bool))
    noised = out.noise_mask.amax(dim=(1, 2, 3)) > 0
    assert 10 < int(noised.sum()) < 54  # about half the copies carry a mask
    assert torch.all(out.label[:batch] == 0)
    assert torch.equal(out.label[batch:].bool(), noised)  # a copy is anomalous iff its mask is non-empty
    assert torch.equal(out.target[batch:], out.noise_mask)
    assert out.known.shape == (2 * batch,) and out.weight.shape == out.target.shape


def _defects_without_masks(batch: int) -> tuple[SuperSimpleNet, GridTargets]:
    """A small untrained network and the grid targets of ``batch`` defect images whose masks are unknown."""
    net = SuperSimpleNet(make_config("efficientnet_lite0", seg_width=16), pretrained=False).train()
    zeros = torch.zeros(batch, 1, *GRID, dtype=torch.float16)
    targets = GridTargets(known=torch.zeros(batch, dtype=torch.bool), label=torch.ones(batch), mask=zeros,
                          weight=zeros, block=zeros)
    return net, targets


def test_unknown_masks_train_the_score_only():
    batch = 4
    net, targets = _defects_without_masks(batch)
    loss, parts = training_step(net, torch.randn(batch, 152, *GRID), targets, torch.arange(batch),
                                {**DEFAULTS, "perlin_threshold": 0.2, "noise_std": 0.015}, np.random.default_rng(0), detach_map=False)
    assert parts["seg"] == 0.0 and parts["cls"] > 0
    loss.backward()
    assert float(net.cls_head.fc.weight.grad.abs().sum()) > 0


def test_top_cells_loss_raises_only_the_highest_cells_until_they_pass_the_margin():
    logits = torch.full((2, 1, 10, 10), -2.0)
    logits[0, 0, 0, :5] = 3.0  # image 0 already says defect on 5 cells: past the margin
    logits.requires_grad_(True)
    loss = top_cells_loss(logits, share=0.05)  # the top 5 of 100 cells
    assert float(loss.detach()) == pytest.approx((0.5 + 2.0) / 2)  # only image 1 pays, its top-5 mean is -2
    loss.backward()
    assert float(logits.grad[0].abs().sum()) == 0.0
    assert int((logits.grad[1] != 0).sum()) == 5  # five cells of image 1 are pushed, no more


def test_unmasked_defects_raise_their_top_cells_only_when_asked():
    batch = 4
    net, targets = _defects_without_masks(batch)
    features = torch.randn(batch, 152, *GRID)
    settings = {**DEFAULTS, "perlin_threshold": 0.2, "noise_std": 0.015}
    with torch.no_grad():
        net.seg_head.layers[-1].bias.fill_(-3.0)  # the map says "normal" everywhere: the top cells lie below +0.5
    _, off = training_step(net, features, targets, torch.arange(batch), settings, np.random.default_rng(0), False)
    _, on = training_step(net, features, targets, torch.arange(batch), {**settings, "unmasked_top_cells": 0.01},
                          np.random.default_rng(0), False)
    assert off["seg"] == 0.0 and on["seg"] > 0.5  # the hinge: top-cell mean below 0, margin +0.5


def test_unsupervised_detaches_the_map_from_the_classification_head():
    net = SuperSimpleNet(make_config("efficientnet_lite0", seg_width=16), pretrained=False).train()
    x = torch.randn(4, 152, *GRID)
    _, score = net.decide(x, detach_map=True)
    score.sum().backward()
    assert net.seg_head.layers[0].weight.grad is None  # no gradient reached the segmentation head
    net.zero_grad(set_to_none=True)
    _, score = net.decide(x, detach_map=False)
    score.sum().backward()
    assert float(net.seg_head.layers[0].weight.grad.abs().sum()) > 0


# ---------------------------------------------------------------- feature standardisation
def test_cache_statistics_and_standardisation_match_torch():
    features = (torch.randn(10, 6, 4, 4) * torch.arange(1, 7).view(1, 6, 1, 1) + 3).to(torch.float16)
    cache = FeatureCache(features=features.clone(), flips=("none",), masks=[None] * 10)
    mean, std = cache.channel_statistics(chunk=3)
    reference = features.float().permute(1, 0, 2, 3).reshape(6, -1)
    assert torch.allclose(mean, reference.mean(1), atol=1e-3)
    assert torch.allclose(std, reference.std(1, unbiased=False), atol=1e-3)
    cache.standardise(mean, std, chunk=4)
    again, spread = cache.channel_statistics()
    assert torch.allclose(again, torch.zeros(6), atol=1e-2) and torch.allclose(spread, torch.ones(6), atol=1e-2)


def test_encode_applies_the_fitted_statistics():
    net = SuperSimpleNet(make_config("efficientnet_lite0", seg_width=16), pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    raw = net.encode(x)
    net.set_feature_statistics(torch.full((152,), 2.0), torch.full((152,), 4.0))
    assert torch.allclose(net.encode(x), (raw - 2.0) / 4.0, atol=1e-5)


# ---------------------------------------------------------------- packages
def _package(tmp_path: Path, config: dict | None = None) -> tuple[Path, SuperSimpleNet]:
    config = config or make_config("efficientnet_lite0", seg_width=32)
    net = SuperSimpleNet(config, pretrained=False)
    for p in net.parameters():  # make every weight meaningful, not the init pattern
        torch.nn.init.normal_(p, std=0.05)
    net.set_feature_statistics(torch.rand(152), torch.rand(152) + 0.5)
    net.eval()
    meta = new_meta(family="supersimplenet", backbone="efficientnet_lite0", config=config, input_size=(64, 64),
                    normalisation=IMAGENET_NORMALISATION, thresholds=Thresholds(0.3, 0.6, 0.5),
                    dataset={"path": "x", "hash": "0", "supervision": "weak"})
    return save_package(tmp_path / "pkg", net, meta), net


def test_forward_contract_shapes_and_ranges():
    net = SuperSimpleNet(make_config("efficientnet_lite0", seg_width=32), pretrained=False).eval()
    with torch.inference_mode():
        maps, scores = net(torch.randn(2, 3, 96, 64))
    assert maps.shape == (2, 1, 96, 64) and scores.shape == (2,)
    assert 0 <= float(maps.min()) and float(maps.max()) <= 1 and torch.all((scores >= 0) & (scores <= 1))


def test_map_sources_combine_the_segmentation_map_and_the_classifier_activation_map():
    torch.manual_seed(0)
    nets = {source: SuperSimpleNet(make_config("efficientnet_lite0", seg_width=32, map_from=source), pretrained=False)
            for source in ("segmentation", "classifier", "both")}
    state = nets["segmentation"].state_dict()
    for net in nets.values():
        net.load_state_dict(state)
        net.eval()
    adapted = torch.randn(2, 152, 12, 8)
    with torch.inference_mode():
        outputs = {source: net.outputs(adapted, (96, 64)) for source, net in nets.items()}
        head = nets["segmentation"].cls_head
        map_logits = nets["segmentation"].seg_head(adapted)
        activations = head.activations(adapted, map_logits)
        cam = head.activation_map(activations)
        # each cell's activations read with the weights the linear layer gives their max and their mean pool; the
        # score it goes with is the head's own
        hidden = activations.shape[1]
        weights = head.fc.weight[0, :hidden] + head.fc.weight[0, hidden:2 * hidden]
        assert torch.allclose(cam[:, 0], torch.einsum("nkhw,k->nhw", activations, weights), atol=1e-5)
        assert torch.allclose(torch.sigmoid(head(adapted, map_logits)), outputs["segmentation"][1])
    segmentation, score = outputs["segmentation"]
    classifier = outputs["classifier"][0]
    assert cam.shape == (2, 1, 6, 4) and segmentation.shape == classifier.shape == (2, 1, 96, 64)
    assert torch.equal(segmentation, nets["segmentation"].anomaly_map(map_logits, (96, 64)))  # the papers' map
    assert torch.allclose(classifier, nets["segmentation"].anomaly_map(cam, (96, 64)) * score.view(-1, 1, 1, 1))
    assert torch.allclose(outputs["both"][0], torch.sqrt(segmentation * classifier))
    assert all(torch.equal(score, other[1]) for other in outputs.values())  # the score does not depend on the map
    assert 0 <= float(classifier.min()) and float(classifier.max()) <= 1


def test_the_score_from_the_map_is_its_top_share_mean_and_skips_the_classification_head():
    torch.manual_seed(0)
    config = make_config("efficientnet_lite0", seg_width=32)
    papers = SuperSimpleNet(config, pretrained=False).eval()
    from_map = SuperSimpleNet({**config, "score_from": "map", "score_top_share": 0.05}, pretrained=False).eval()
    from_map.load_state_dict(papers.state_dict())
    adapted = torch.randn(3, 152, 12, 8)
    calls = []
    from_map.cls_head.register_forward_hook(lambda *args: calls.append(1))
    from_map.cls_head.conv.register_forward_hook(lambda *args: calls.append(1))
    with torch.inference_mode():
        paper_map, paper_score = papers.outputs(adapted, (96, 64))
        amap, score = from_map.outputs(adapted, (96, 64))
    assert torch.equal(amap, paper_map) and score.shape == (3,)       # the same map; only the score differs
    top = amap.flatten(1).sort(dim=1, descending=True).values[:, :round(0.05 * 96 * 64)]
    assert torch.allclose(score, top.mean(dim=1)) and not torch.allclose(score, paper_score)
    assert calls == []   # with the segmentation map, the classification head is not needed at all
    assert torch.equal(top_share_mean(torch.arange(10.0).view(1, 1, 2, 5), 0.2), torch.tensor([8.5]))
    assert torch.equal(top_share_mean(torch.arange(10.0).view(1, 1, 2, 5), 1e-6), torch.tensor([9.0]))  # >= 1 px
    both = SuperSimpleNet({**config, "score_from": "map", "map_from": "both"}, pretrained=False).eval()
    both.load_state_dict(papers.state_dict())
    with torch.inference_mode():
        joint, joint_score = both.outputs(adapted, (96, 64))
    assert torch.allclose(joint_score, top_share_mean(joint, 0.01))
    for bad, message in (({"score_from": "max"}, "score_from 'max'"), ({"score_top_share": 0}, "score_top_share"),
                         ({"score_top_share": True}, "score_top_share")):
        with pytest.raises(ValueError, match=message):
            SuperSimpleNet({**config, **bad}, pretrained=False)


def test_package_round_trip_gives_identical_outputs(tmp_path):
    path, net = _package(tmp_path)
    loaded = load_package(path)
    assert isinstance(loaded.network, SuperSimpleNet)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        a_map, a_score = net(x)
        b_map, b_score = loaded.network(x)
    assert torch.equal(a_map, b_map) and torch.equal(a_score, b_score)


def test_corrupt_weights_are_rejected(tmp_path):
    path, _ = _package(tmp_path)
    data = (path / "weights.safetensors").read_bytes()
    (path / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PackageError, match="safetensors"):
        load_package(path)


def test_wrong_shapes_are_rejected(tmp_path):
    path, _ = _package(tmp_path)
    meta = json.loads((path / "model.json").read_text())
    meta["config"]["seg_width"] = 64  # the weights were saved with 32
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="shape"):
        load_package(path)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(family="nosuchnet"), "unknown model family"),
    (lambda m: m.update(format_version=99), "newer"),
    (lambda m: m["config"].pop("seg_width"), "cannot build"),
    (lambda m: m.update(backbone="wide_resnet50_2"), "cannot build"),
    (lambda m: m["config"].update(map_from="heads"), "cannot build.*map_from 'heads'"),
    (lambda m: m["config"].update(score_from="max"), "cannot build.*score_from 'max'"),
    (lambda m: [d.update(backbone="resnet18") for d in (m, m["config"])], "cannot build.*unknown backbone 'resnet18'"),
])
def test_bad_meta_is_rejected_with_a_clear_message(tmp_path, edit, message):
    path, _ = _package(tmp_path)
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match=message):
        load_package(path)
