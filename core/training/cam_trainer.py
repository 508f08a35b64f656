"""Trainer of the "cam" family: the weakly supervised pipeline from OK/NG image labels to a distilled
segmenter (Yan et al., Applied Soft Computing 184 (2025) 113661, rebuilt from its abstract).

Stages (progress events carry these names; wall times land in meta["config"]["stage_seconds"], this
process's CPU seconds in meta["config"]["stage_cpu_seconds"]):
  load, features     train images at input size; frozen-backbone taps cached once (float16)
  dfc                CAM head trained on image labels (BCE on top-k pooled CAM)       = plain CAM
  clm                + contrastive module (SupCon on CAM-pooled region embeddings)      = +CLM
  gcm                + guided crops of the current CAMs (and random crops of good ones)  = +GCM
  iem                inpainting extension of the defect images' CAMs                    = +IEM
  crf                dense CRF -> pseudo masks with an ignore band                     = +CRF
  segmenter-1        decoder trained on the pseudo masks                               = round 1
  refine             its maps on the training defect images, CRF-refined again
  segmenter-2        decoder trained on the refined masks                              = round 2
  refine-3, ...      (seg_rounds, default 3) each further round repeats the last two stages
  calibrate          the pixel threshold from the last round's pseudo masks; OK/NG thresholds from the stage below
  calibration        (before dfc, when there are enough images: core.training.holdout) per fold, a copy of the
                     classifier (dfc, clm, gcm: the image score of the package is that classifier's) trained
                     without the fold scores it; the out-of-fold scores of all training images set the OK/NG
                     thresholds. The shipped pipeline then runs on all images from the same random state.
Masks of the dataset are never read. Only the segmenter (with the classifier's head as its image
score) goes into the package. With options.extra["keep_stages"] the intermediate heads and the
segmenters of the rounds before the last (seg1, seg2, ...) are written beside the package (``<out>.stages/``) for
benchmarks/cam_ablation.py.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from core.data.dataset import Dataset
from core.inference.calibration import CalibrationError, image_thresholds, pixel_threshold
from core.inference.detector import resolve_device
from core.inference.mask_refinement import WITHOUT_MASKS, MaskRefinement, fixed_choice_record
from core.inference.package import new_meta, save_package
from core.inference.result import Thresholds
from core.models.backbones import IMAGENET_NORMALISATION, backbone_channels, build_backbone
from core.models.cam_classifier import CAM_MAP_KINDS, CamHead, DefectFocusClassifier
from core.models.cam_segmenter import DEFAULT_CONFIG, CamSegmenter
from core.models.map_sources import MAP_SOURCES
from core.training.api import EtaClock, Progress, ProgressEvent, TrainingError, TrainOptions, check_setting_kinds
from core.training.cam.contrastive import Projection
from core.training.cam.crf import IGNORE
from core.training.cam.dfc import HeadSchedule, cams_from_features, image_classifier, train_head
from core.training.cam.good_cells import ANOMALY_GROWTH, GoodCellBank, grown_from_cam
from core.training.cam.guided_crop import guided_crops
from core.training.cam.images import extract_features, load_images
from core.training.cam.inpainting import extend_again, inpaint_extend
from core.training.cam.pseudo_masks import crf_pseudo_masks, mask_stats
from core.training.cam.segmenter_training import predict_from_features, train_decoder
from core.training.holdout import DEFAULT_FOLDS, calibration_folds, describe, random_state_kept


@dataclass
class CamConfig:
    """Hyper-parameters; any can be overridden through TrainOptions.extra (same names)."""

    input_size: int = 256
    dfc_epochs: int = 6
    clm_epochs: int = 6
    gcm_rounds: int = 2
    gcm_epochs: int = 3
    # per segmenter round; 12 (6 before 2026-12-02) with the wider segmenter below: see there
    seg_epochs: int = 12
    # segmenter rounds: 1 = trained on the CRF pseudo masks only; each further round CRF-refines the segmenter's
    # maps of the training images and trains on. The pipeline has 2; a third raised mIoU on mtd/test on
    # each of 3 paired seeds (0.196 +- 0.023 against 0.172 +- 0.018; 2 rounds of 9 epochs instead: no gain), a
    # fourth did not on every seed (docs/results.md, "Segmenter rounds")
    seg_rounds: int = 3
    head_lr: float = 2e-3
    seg_lr: float = 3e-3
    # the segmenter's width on the backbone taps and on the image itself (stride 4): 64 / 16 instead of the first
    # 32 / 8 (core.models.cam_segmenter.DEFAULT_CONFIG, which packages without the keys read as). With 6 epochs per
    # round the wider one raised mIoU on held-out halves of mtd/train but not on mtd/test (0.221 against 0.222); with
    # 12 it did on both held-out halves (0.179 / 0.192 -> 0.217 / 0.262; 32 / 8 with 12 epochs: 0.183 / 0.236) and on
    # mtd/test, 3 seeds (0.222 -> 0.237, higher on every seed; docs/results.md, "Segmenter width and epochs")
    decoder_channels: int = 64
    image_channels: int = 16
    clm_weight: float = 0.3
    temperature: float = 0.1
    topk_fraction: float = 0.02
    # how the stages from guided cropping to the pseudo masks read the classifier's CAM (core.models.cam_classifier
    # cam_map): "relative" (0 at the image's median cell, 1 at its peak, cubed, times P(defect)) or "sigmoid"
    cam_map: str = "relative"
    # the same for the defect images the inpainting module leaves unexplained (still classified defective after
    # every round): their CAM is read again this way and extended again, for the pseudo masks
    unexplained_cam_map: str = "relative"
    unexplained_min_cover: float = 0.0  # ... only where that reading covers at least this share of the image
    # which defect images' extended maps grow over the regions where their features are unlike any good image's
    # that touch the CAM's region (core.training.cam.good_cells): "none", "unexplained" (those IEM leaves
    # unexplained: most large, diffuse defects) or "all"; and how large such a region must be to count. On mtd/test,
    # 3 seeds, "unexplained" raised pixel AP 0.185 -> 0.262 but lowered mIoU 0.235 -> 0.214 (blowholes drawn wide;
    # docs/results.md, "Anomaly regions grown from the CAM"), hence off by default
    anomaly_growth: str = "none"
    anomaly_min_area: float = 0.03
    gcm_margin: float = 0.5
    gcm_min_side: int = 64
    iem_rounds: int = 3
    iem_threshold: float = 0.5
    crf_iterations: int = 5
    crf_bilateral_sxy: float = 20.0
    crf_bilateral_srgb: float = 10.0
    crf_bilateral_compat: float = 6.0
    mask_high: float = 0.7
    mask_low: float = 0.3
    mask_ring: int = 2
    background_within: int | None = None  # px from the found defect where defect images teach background
                                          # (None: everywhere; 0: nowhere; see crf_pseudo_masks)
    # the same for defect images whose found region does not explain the defect (still classified defective
    # after every IEM round: a large or diffuse defect of which the CAM found only a part). 0 (teach no
    # background there) against None, 3 paired seeds on mtd/test: pixel AP 0.171 vs 0.069 and mIoU 0.172 vs
    # 0.174 trained on all images; pixel AP 0.179 vs 0.062, mIoU 0.177 vs 0.148 on 85 % (docs/results.md)
    unexplained_background_within: int | None = 0
    good_per_epoch: int = 0      # good images per segmenter epoch; 0: as many as defect images
    calibration_folds: int = DEFAULT_FOLDS  # calibration copies whose out-of-fold scores set OK/NG; 0: none
    # the station's masks snapped to image edges by a dense CRF at inference (core.inference.mask_refinement),
    # with the same settings as the CRF that made the pseudo masks the segmenter learnt from (by default
    # mask_refinement.WITHOUT_MASKS). Without training masks there is nothing to choose it on at training time; it
    # was chosen on mtd/train's masks, which this trainer never reads (docs/results.md, "Masks snapped to edges at
    # inference": mIoU on mtd/test 0.189 -> 0.222, 3 seeds)
    refine_masks: bool = True
    # what the package's map is made of (core.models.map_sources): the decoder's map, the classifier's CAM, or both
    map_from: str = "segmentation"
    threads: int = 2

    @classmethod
    def from_options(cls, options: TrainOptions) -> "CamConfig":
        known = {f.name: f.type for f in fields(cls)}
        # keep_stages: see the module docstring; paper: the CLI's switch for SuperSimpleNet, nothing here
        extra = {k: v for k, v in options.extra.items() if k not in ("keep_stages", "paper")}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise TrainingError(f"unknown cam training options {unknown}; known: {sorted(known)}")
        check_setting_kinds(extra, {f.name: f.default for f in fields(cls)}, "cam")
        config = cls(**extra)
        if config.map_from not in MAP_SOURCES:
            raise TrainingError(f"map_from must be one of {MAP_SOURCES}, got {config.map_from!r}")
        if config.anomaly_growth not in ANOMALY_GROWTH:
            raise TrainingError(f"anomaly_growth must be one of {ANOMALY_GROWTH}, got {config.anomaly_growth!r}")
        for name in ("cam_map", "unexplained_cam_map"):
            if getattr(config, name) not in CAM_MAP_KINDS:
                raise TrainingError(f"{name} must be one of {CAM_MAP_KINDS}, got {getattr(config, name)!r}")
        if config.decoder_channels < 2 or config.decoder_channels % 2 or config.image_channels < 1:
            raise TrainingError("decoder_channels must be an even number of at least 2 and image_channels at least 1, "
                                f"got {config.decoder_channels} and {config.image_channels}")
        if not isinstance(config.seg_rounds, int) or config.seg_rounds < 1:
            raise TrainingError(f"seg_rounds must be a whole number of at least 1, got {config.seg_rounds!r}")
        try:  # the CRF settings also make the package's mask refinement: refuse what it would refuse, now
            config.mask_refinement()
        except ValueError as exc:
            raise TrainingError(f"cam CRF settings: {exc}") from exc
        if options.epochs is not None:
            if options.epochs < 1:
                raise TrainingError(f"epochs must be at least 1, got {options.epochs}")
            config.dfc_epochs = config.clm_epochs = config.seg_epochs = options.epochs
            config.gcm_epochs = max(1, options.epochs // 2)
        return config

    def crf(self) -> dict:
        return {"iterations": self.crf_iterations, "bilateral_sxy": self.crf_bilateral_sxy,
                "bilateral_srgb": self.crf_bilateral_srgb, "bilateral_compat": self.crf_bilateral_compat}

    def mask_refinement(self) -> MaskRefinement | None:
        """The package's inference-time refinement: the pseudo-mask CRF's settings (None when refine_masks is off)."""
        return replace(WITHOUT_MASKS, **self.crf()) if self.refine_masks else None

    def refinement_meta(self) -> dict:
        """model.json's "mask_refinement" entry for a package of this config: {} when refine_masks is off."""
        refinement = self.mask_refinement()
        return {} if refinement is None else {"mask_refinement": refinement.to_dict()}


# Share of the run each stage takes (for the overall fraction and ETA), from a CPU run on mtd (2 segmenter rounds).
# "calibration" (the calibration copies of the classifier's stages) is added per run when there are folds.
# The segmenter rounds' shares from a run with its 64 / 16 widths and 12 epochs (runs/s25/camwe12_s2: ~47 s each,
# against 24 s for the features).
_WEIGHTS = {"load": 0.04, "features": 0.16, "dfc": 0.04, "clm": 0.05, "gcm": 0.2, "iem": 0.1, "crf": 0.05,
            "segmenter-1": 0.3, "calibrate": 0.03}
_REFINE_WEIGHT, _ROUND_WEIGHT = 0.07, 0.3


def _round_stages(round_number: int) -> tuple[str, str]:
    """(refine stage, segmenter stage) of segmenter round >= 2: "refine", "segmenter-2"; "refine-3", ..."""
    return ("refine" if round_number == 2 else f"refine-{round_number}"), f"segmenter-{round_number}"


# The stages that make the image score: the calibration copies repeat these and no others.
_CLASSIFIER_STAGES = ("dfc", "clm", "gcm")


def _stage_weights(rounds: int) -> dict[str, float]:
    """Weight per stage of a pipeline with ``rounds`` segmenter rounds."""
    weights = dict(_WEIGHTS)
    for round_number in range(2, rounds + 1):
        refine, segmenter = _round_stages(round_number)
        weights[refine], weights[segmenter] = _REFINE_WEIGHT, _ROUND_WEIGHT
    return weights


class _Stages:
    """Per-stage wall time and progress events whose fraction covers the whole run."""

    def __init__(self, progress: Progress, weights: dict[str, float]) -> None:
        self.progress = progress
        total = sum(weights.values())
        self.weights = {stage: share / total for stage, share in weights.items()}
        self.clock = EtaClock()
        self.seconds: dict[str, float] = {}
        # CPU seconds of this process per stage: on a machine shared with other jobs, wall time
        # says as much about the neighbours as about the pipeline; CPU time does not.
        self.cpu_seconds: dict[str, float] = {}
        self._done = 0.0
        self._stage = ""
        self._start = 0.0
        self._cpu_start = 0.0

    def begin(self, stage: str, message: str = "") -> None:
        self._stage, self._start, self._cpu_start = stage, time.monotonic(), time.process_time()
        self.update(0.0, message)

    def update(self, within: float, message: str = "", **metrics: float) -> None:
        fraction = min(1.0, self._done + self.weights[self._stage] * min(1.0, within))
        self.progress(ProgressEvent(self._stage, fraction, message, self.clock.eta(fraction), metrics))

    def end(self, message: str = "", **metrics: float) -> None:
        self.seconds[self._stage] = round(time.monotonic() - self._start, 1)
        self.cpu_seconds[self._stage] = round(time.process_time() - self._cpu_start, 1)
        self._done += self.weights[self._stage]
        self.progress(ProgressEvent(self._stage, min(1.0, self._done), f"done in {self.seconds[self._stage]:.1f}s"
                                    + (f"; {message}" if message else ""), self.clock.eta(self._done), metrics))


def train(dataset: Dataset, options: TrainOptions, progress: Progress) -> Path:
    """Run the whole pipeline on ``dataset.train`` (image labels only) and write the package to options.out.

    When there are enough images (core.training.holdout), calibration copies of the classifier first run, each
    without one fold of the images, and their out-of-fold scores set the OK/NG thresholds; the shipped pipeline
    then runs on all images from the same random state."""
    if options.supervision not in ("weak", "mixed", "full"):
        raise TrainingError(f"the cam family learns from image labels; supervision {options.supervision!r} "
                            "gives it no defect images (use weak)")
    samples = dataset.train
    labels = np.asarray([s.label for s in samples], np.int64)
    if labels.sum() < 2 or (labels == 0).sum() < 2:
        raise TrainingError(f"{dataset.root}: the cam family needs at least 2 good and 2 defect training images "
                            f"(found {(labels == 0).sum()} good, {labels.sum()} defect)")
    cfg = CamConfig.from_options(options)
    crossfit = calibration_folds(labels, cfg.calibration_folds, options.seed)
    device = resolve_device(options.device)
    if device.type == "cpu" and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    size = (cfg.input_size, cfg.input_size)
    norm = IMAGENET_NORMALISATION
    stage_weights = _stage_weights(cfg.seg_rounds)
    copy_weights = {k: stage_weights[k] for k in _CLASSIFIER_STAGES}
    weights = dict(stage_weights)
    if crossfit.used:  # each copy runs the classifier's stages on all but one fold of the images
        weights["calibration"] = sum(copy_weights.values()) * sum(f.fit.size for f in crossfit.folds) / len(labels)
    stages = _Stages(progress, weights)
    keep = Path(str(options.out) + ".stages") if options.extra.get("keep_stages") else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)

    stages.begin("load", f"{len(samples)} images")
    data = load_images(samples, size, on_image=lambda i: (options.check_cancel(), stages.update((i + 1) / len(samples))))
    stages.end()

    stages.begin("features", f"backbone {options.backbone}")
    backbone = build_backbone(options.backbone, weights_path=options.backbone_weights).to(device)
    channels = backbone_channels(options.backbone)
    feats = extract_features(backbone, data.images, norm, device=device, check_cancel=options.check_cancel,
                             on_batch=lambda n: stages.update(n / len(samples), f"{n}/{len(samples)}"))
    stages.end()
    pipeline = _Pipeline(backbone, channels, cfg, options, device, size, norm)

    held_cut = None
    if crossfit.used:
        count = len(crossfit.folds)
        stages.begin("calibration", f"{count} copies of the classifier, each without one fold of the images")
        scores = np.empty(len(labels))
        for k, fold in enumerate(crossfit.folds):
            inner = _Stages(lambda e, k=k: stages.update((k + e.fraction) / count,
                                                         f"copy {k + 1}/{count}, {e.stage}: {e.message}"), copy_weights)
            with random_state_kept(rng):
                head, _ = pipeline.classifier(data.images[fold.fit], feats[fold.fit], labels[fold.fit], rng, inner)
            scores[fold.held], _ = cams_from_features(head, feats[fold.held], size, cfg.topk_fraction, device=device)
        held_cut = image_thresholds(scores, labels)
        stages.end(ok=held_cut[0], ng=held_cut[1])

    meta_base = dict(family="cam", backbone=options.backbone, input_size=size, normalisation=norm,
                     dataset=dataset.package_record("weak"))
    model, masks = pipeline.run(data.images, feats, labels, rng, stages, keep, meta_base)

    stages.begin("calibrate", "pixel threshold from the pseudo masks; OK/NG from the "
                 + ("out-of-fold scores" if held_cut else f"training images ({crossfit.reason})"))
    thresholds, calibration_scores = _calibrate(model, feats, data.images, labels, masks, norm, device)
    if held_cut is not None:  # OK/NG from the copies' out-of-fold scores instead of the fitted images'
        thresholds = Thresholds(ok=held_cut[0], ng=held_cut[1], pixel=thresholds.pixel)
        calibration_scores = scores
    stages.end(pixel=thresholds.pixel, ok=thresholds.ok, ng=thresholds.ng)

    config = {"network": pipeline.network_config, "training": asdict(cfg), "seed": options.seed,
              "device": str(device), "stage_seconds": dict(stages.seconds),
              "total_seconds": round(sum(stages.seconds.values()), 1), "stage_cpu_seconds": dict(stages.cpu_seconds),
              "total_cpu_seconds": round(sum(stages.cpu_seconds.values()), 1)}
    meta = new_meta(config=config, thresholds=thresholds,
                    evaluation={"train_seconds": config["total_seconds"]}, **meta_base)
    meta["calibration"] = describe(crossfit, labels, cfg.calibration_folds, calibration_scores, thresholds)
    meta.update(cfg.refinement_meta())
    if cfg.refine_masks:
        meta["calibration"]["mask_refinement"] = fixed_choice_record()
    if keep is not None:
        (keep / "config.json").write_text(json.dumps(config, indent=2))
    return save_package(options.out, model.cpu(), meta)


class _Pipeline:
    """The stages from the CAM classifier to the last round's segmenter, on given images and their features."""

    def __init__(self, backbone: torch.nn.Module, channels: list[int], cfg: CamConfig, options: TrainOptions,
                 device: torch.device, size: tuple[int, int], norm: dict) -> None:
        self.backbone, self.channels, self.cfg, self.options = backbone, channels, cfg, options
        self.device, self.size, self.norm = device, size, norm
        self.network_config = {**DEFAULT_CONFIG, "topk_fraction": cfg.topk_fraction, "map_from": cfg.map_from,
                               "decoder_channels": cfg.decoder_channels, "image_channels": cfg.image_channels}

    def classifier(self, images: np.ndarray, feats: torch.Tensor, labels: np.ndarray, rng: np.random.Generator,
                   stages: "_Stages", keep: Path | None = None) -> tuple[CamHead, np.ndarray]:
        """Stages dfc, clm, gcm on images (N, H, W, 3) uint8, their cached backbone features and labels (N,) ->
        (the CAM head, whose top-k pooled CAM is the package's image score; its CAM maps (N, H, W) in 0..1).
        ``keep``: also write the intermediate heads there."""
        cfg, options, device, size, norm = self.cfg, self.options, self.device, self.size, self.norm
        backbone, channels = self.backbone, self.channels
        head = CamHead(sum(channels), DEFAULT_CONFIG["head_hidden"]).to(device)
        projection = Projection(DEFAULT_CONFIG["head_hidden"]).to(device)
        schedule = dict(lr=cfg.head_lr, temperature=cfg.temperature, topk_fraction=cfg.topk_fraction)

        def head_epoch(total: int):
            return lambda e, m: stages.update((e + 1) / total, f"epoch {e + 1}/{total}", **m)

        stages.begin("dfc", "CAM classifier on image labels")
        train_head(head, feats, labels, HeadSchedule(epochs=cfg.dfc_epochs, **schedule), seed=options.seed,
                   device=device, check_cancel=options.check_cancel, on_epoch=head_epoch(cfg.dfc_epochs))
        _keep_head(keep, "cam", head)
        if keep is not None:  # control for the ablation: plain CAM trained as long as +CLM, without the CLM
            control = copy.deepcopy(head)
            train_head(control, feats, labels, HeadSchedule(epochs=cfg.clm_epochs, **schedule), seed=options.seed + 1,
                       device=device, check_cancel=options.check_cancel)
            _keep_head(keep, "cam_long", control)
        stages.end()

        stages.begin("clm", "contrastive module")
        train_head(head, feats, labels, HeadSchedule(epochs=cfg.clm_epochs, clm_weight=cfg.clm_weight, **schedule),
                   projection=projection, seed=options.seed + 1, device=device, check_cancel=options.check_cancel,
                   on_epoch=head_epoch(cfg.clm_epochs))
        _keep_head(keep, "clm", head)
        stages.end()

        stages.begin("gcm", f"{cfg.gcm_rounds} rounds of guided crops")
        for round_index in range(cfg.gcm_rounds):
            _, cams = cams_from_features(head, feats, size, cfg.topk_fraction, device=device, map_kind=cfg.cam_map)
            crops, crop_labels, _ = guided_crops(images, cams, labels, rng, margin=cfg.gcm_margin,
                                                 min_side=cfg.gcm_min_side)
            crop_feats = extract_features(backbone, crops, norm, device=device, check_cancel=options.check_cancel)
            stages.update((round_index + 0.5) / cfg.gcm_rounds, f"round {round_index + 1}: {len(crops)} crops")
            train_head(head, torch.cat([feats, crop_feats]), np.concatenate([labels, crop_labels]),
                       HeadSchedule(epochs=cfg.gcm_epochs, clm_weight=cfg.clm_weight, **schedule), projection=projection,
                       seed=options.seed + 2 + round_index, device=device, check_cancel=options.check_cancel)
            stages.update((round_index + 1) / cfg.gcm_rounds, f"round {round_index + 1} trained")
        _keep_head(keep, "gcm", head)
        train_probs, cams = cams_from_features(head, feats, size, cfg.topk_fraction, device=device,
                                               map_kind=cfg.cam_map)
        stages.end(train_ap=_train_ap(train_probs, labels))
        return head, cams

    def run(self, images: np.ndarray, feats: torch.Tensor, labels: np.ndarray, rng: np.random.Generator,
            stages: "_Stages", keep: Path | None = None, meta_base: dict | None = None
            ) -> tuple[CamSegmenter, np.ndarray]:
        """images (N, H, W, 3) uint8, their cached backbone features, labels (N,) -> (the distilled segmenter,
        the last round's pseudo masks (N, H, W) uint8 in {0, 1, IGNORE}). ``keep``: also write the intermediate heads
        and the earlier rounds' packages there (needs ``meta_base``)."""
        cfg, options, device, size, norm = self.cfg, self.options, self.device, self.size, self.norm
        backbone, channels = self.backbone, self.channels
        head, cams = self.classifier(images, feats, labels, rng, stages, keep)
        classify = image_classifier(DefectFocusClassifier(backbone, head, cfg.topk_fraction, cfg.cam_map), norm,
                                    device=device)

        stages.begin("iem", f"up to {cfg.iem_rounds} inpainting rounds")
        defect = np.flatnonzero(labels > 0)
        extended, used = inpaint_extend(images[defect], cams[defect], classify, rounds=cfg.iem_rounds,
                                        threshold=cfg.iem_threshold)
        maps = cams.copy()
        maps[defect] = extended
        unexplained = np.zeros(len(labels), bool)
        unexplained[defect] = used >= cfg.iem_rounds   # never classified good however much was inpainted
        reread = np.zeros(len(labels), bool)
        if cfg.unexplained_cam_map != cfg.cam_map and unexplained.any():
            # A defect the found region does not explain is large or diffuse (mtd's "uneven", "fray", breaks): read its
            # CAM the other way and extend that (docs/results.md, "The CAM read absolutely": not the default)
            _, again = cams_from_features(head, feats, size, cfg.topk_fraction, device=device,
                                          map_kind=cfg.unexplained_cam_map)
            reclassify = image_classifier(DefectFocusClassifier(backbone, head, cfg.topk_fraction,
                                                                cfg.unexplained_cam_map), norm, device=device)
            maps, reread = extend_again(images, maps, unexplained, again, reclassify,
                                        min_cover=cfg.unexplained_min_cover, rounds=cfg.iem_rounds,
                                        threshold=cfg.iem_threshold)
        grown = self._grow_with_anomalies(maps, feats, labels, unexplained)
        within = [cfg.unexplained_background_within if u else cfg.background_within for u in unexplained]
        stages.end(f"mean rounds {used.mean():.2f}", grown_px=float((extended >= 0.5).mean() - (cams[defect] >= 0.5).mean()),
                   unexplained=float(unexplained[defect].mean()) if defect.size else 0.0,
                   reread=float(reread[defect].mean()) if defect.size else 0.0,
                   grown=float(grown[defect].mean()) if defect.size else 0.0)

        stages.begin("crf", f"{len(defect)} defect images")
        masks, _ = crf_pseudo_masks(images, maps, labels, crf=cfg.crf(), high=cfg.mask_high, low=cfg.mask_low,
                                    ring=cfg.mask_ring, background_within=within, check_cancel=options.check_cancel,
                                    on_image=lambda i: stages.update((i + 1) / len(defect)))
        stages.end(**mask_stats(masks, labels))

        model = CamSegmenter(backbone, channels, self.network_config).to(device)
        model.score_head.load_state_dict(head.state_dict())   # the distilled network's image score
        good_per_epoch = cfg.good_per_epoch or None
        seg_kwargs = dict(epochs=cfg.seg_epochs, lr=cfg.seg_lr, good_per_epoch=good_per_epoch, device=device,
                          check_cancel=options.check_cancel)

        stages.begin("segmenter-1", "decoder on CRF pseudo masks")
        train_decoder(model, feats, images, masks, labels, norm, seed=options.seed + 10, **seg_kwargs,
                      on_epoch=lambda e, loss: stages.update((e + 1) / cfg.seg_epochs, f"epoch {e + 1}", loss=loss))
        stages.end()
        if cfg.seg_rounds > 1:  # with one round, round 1 is the package itself
            self._keep_round(keep, 1, model, feats, images, labels, masks, meta_base)

        for round_number in range(2, cfg.seg_rounds + 1):
            refine, segmenter = _round_stages(round_number)
            stages.begin(refine, "CRF on the segmenter's maps")
            _, seg_maps = predict_from_features(model, feats, images, norm, device=device)
            masks, _ = crf_pseudo_masks(images, seg_maps, labels, crf=cfg.crf(), high=cfg.mask_high,
                                        low=cfg.mask_low, ring=cfg.mask_ring, background_within=within,
                                        check_cancel=options.check_cancel,
                                        on_image=lambda i: stages.update((i + 1) / len(defect)))
            stages.end(**mask_stats(masks, labels))

            stages.begin(segmenter, "decoder on refined masks")
            train_decoder(model, feats, images, masks, labels, norm, seed=options.seed + 10 * round_number,
                          **seg_kwargs, on_epoch=lambda e, loss: stages.update((e + 1) / cfg.seg_epochs,
                                                                               f"epoch {e + 1}", loss=loss))
            stages.end()
            if round_number < cfg.seg_rounds:
                self._keep_round(keep, round_number, model, feats, images, labels, masks, meta_base)
        return model, masks

    def _grow_with_anomalies(self, maps: np.ndarray, feats: torch.Tensor, labels: np.ndarray,
                             unexplained: np.ndarray) -> np.ndarray:
        """Grow the chosen defect images' maps (N, H, W), in place, over the anomaly regions that touch their CAM's
        region (cfg.anomaly_growth; core.training.cam.good_cells) -> which images changed (N,) bool."""
        cfg = self.cfg
        chosen = {"none": np.zeros(len(labels), bool), "unexplained": unexplained, "all": labels > 0}[cfg.anomaly_growth]
        good = np.flatnonzero(labels == 0)
        if not chosen.any() or len(good) < 2:
            return np.zeros(len(labels), bool)
        # its own random stream, so that the stages after it draw what they drew without it
        bank = GoodCellBank.fit(feats[good], np.random.default_rng(self.options.seed + 7))
        rows = np.flatnonzero(chosen)
        before = maps[rows] >= 0.5
        maps[rows] = grown_from_cam(maps[rows], bank.anomaly_maps(feats[rows], self.size),
                                    min_area=cfg.anomaly_min_area)
        changed = np.zeros(len(labels), bool)
        changed[rows] = ((maps[rows] >= 0.5) != before).any(axis=(1, 2))
        return changed

    def _keep_round(self, keep: Path | None, round_number: int, model: CamSegmenter, feats: torch.Tensor,
                    images: np.ndarray, labels: np.ndarray, masks: np.ndarray, meta_base: dict | None) -> None:
        """With ``keep``: an earlier round's segmenter as a package ``keep/seg<round>`` for the ablation, its pixel
        threshold from the pseudo masks it learnt from and the package's mask refinement, so that each round's row is
        formed as the shipped package's (the OK/NG thresholds are from its fitted images: the image score is the same
        classifier's in every round)."""
        if keep is None:
            return
        thresholds, _ = _calibrate(model, feats, images, labels, masks, self.norm, self.device)
        meta = new_meta(config={"network": self.network_config}, thresholds=thresholds, **(meta_base or {}))
        save_package(keep / f"seg{round_number}", model, meta | self.cfg.refinement_meta())


def _calibrate(model: CamSegmenter, feats: torch.Tensor, images: np.ndarray, labels: np.ndarray,
               masks: np.ndarray, norm: dict, device: torch.device) -> tuple[Thresholds, np.ndarray]:
    """(Thresholds from the fitted images, their scores (N,)): OK/NG from the scores and labels; the pixel threshold
    on the package's map (config "map_from") that best fits their pseudo masks over the non-ignored pixels (good
    images: all background)."""
    scores, maps = predict_from_features(model, feats, images, norm, device=device, package_map=True)
    ok, ng = image_thresholds(scores, labels)
    valid = [m != IGNORE for m in masks]
    try:
        pixel = pixel_threshold([amap[v] for amap, v in zip(maps, valid)],
                                [(m[v] == 1) & bool(label) for m, v, label in zip(masks, valid, labels)])
    except CalibrationError:
        pixel = 0.5
    return Thresholds(ok=ok, ng=ng, pixel=float(pixel)), np.asarray(scores, dtype=np.float64)


def _keep_head(keep: Path | None, name: str, head: CamHead) -> None:
    if keep is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(keep / f"head_{name}.safetensors"))


def _train_ap(probs: np.ndarray, labels: np.ndarray) -> float:
    from core.metrics import average_precision

    value = average_precision(probs, labels)
    return float("nan") if value is None else float(value)
