"""The SuperSimpleNet network (Rolih, Fučka, Skočaj, ICPR 2024 / JIMS 2025), written from the papers' text.

frozen backbone -> [stride-8, stride-16] features -> each bilinearly resized to the grid
(stride-8 size x ``feature_scale``) -> concat (C channels) -> 3x3 avg-pool (stride 1) -> per-channel standardisation (statistics of the training set)
-> adaptor (1x1 conv C->C) -> segmentation head (1x1 C->W, BN, LeakyReLU 0.2, 1x1 W->1: map logits)
                           -> classification head (features ++ map: 5x5 conv -> 128, BN, ReLU;
                              global max + mean of it and of the map = 258 values -> linear -> score logit)

Inference (the registry contract): forward(x (N, 3, H, W) normalised) ->
    anomaly_map (N, 1, H, W): sigmoid of the map logits, bilinearly resized to H, W, Gaussian-smoothed (sigma 4)
        (the papers'); with config "map_from" "classifier" or "both" the classification head's activation map
        makes it or joins it (SuperSimpleNet.outputs), for regimes whose map never saw a real defect
    score (N,): sigmoid of the score logit (the papers'); with config "score_from" "map", the mean of the highest
        "score_top_share" (default 1 %) of the anomaly map's pixels, for the unsupervised regime, whose classifier
        learns only from feature noise

The CPU configuration (default) differs from the paper only in sizes, all in ``config``: grid at the stride-8
size (paper: twice it), head width 256 (paper: 1024) and a 2x2 average pool before the classification
conv (``cls_pool``; paper: 1). PAPER_CONFIG restores the published sizes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.models.backbones import backbone_channels, build_backbone
from core.models.map_sources import configured_map, map_source

CPU_CONFIG: dict = {"feature_scale": 1, "seg_width": 256, "cls_channels": 128, "cls_pool": 2, "smooth_sigma": 4.0}
# What the image score is (SuperSimpleNet.outputs); packages without "score_from" read as "classifier".
SCORE_SOURCES = ("classifier", "map")
DEFAULT_SCORE_TOP_SHARE = 0.01
PAPER_CONFIG: dict = {"feature_scale": 2, "seg_width": 1024, "cls_channels": 128, "cls_pool": 1, "smooth_sigma": 4.0}


def make_config(backbone: str, paper: bool = False, **overrides) -> dict:
    """A complete network config for ``backbone`` (CPU sizes, or the paper's with ``paper=True``)."""
    config = dict(PAPER_CONFIG if paper else CPU_CONFIG)
    config.update(overrides)
    config["backbone"] = backbone
    config["channels"] = list(backbone_channels(backbone))
    return config


class FeatureAggregator(nn.Module):
    """[f8 (N, C8, h8, w8), f16 (N, C16, ...)] -> (N, C8 + C16, h8 * scale, w8 * scale), 3x3 avg-pooled."""

    def __init__(self, feature_scale: int) -> None:
        super().__init__()
        self.feature_scale = int(feature_scale)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        height, width = features[0].shape[-2:]
        size = (height * self.feature_scale, width * self.feature_scale)
        resized = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features]
        return self.pool(torch.cat(resized, dim=1))


class SegmentationHead(nn.Module):
    """(N, C, h, w) -> map logits (N, 1, h, w)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
                                    nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ClassificationHead(nn.Module):
    """(features (N, C, h, w), map logits (N, 1, h, w)) -> score logit (N,)."""

    def __init__(self, channels: int, hidden: int = 128, pool: int = 1) -> None:
        super().__init__()
        self.pool = int(pool)
        self.conv = nn.Sequential(nn.Conv2d(channels + 1, hidden, 5, padding=2), nn.BatchNorm2d(hidden), nn.ReLU())
        self.fc = nn.Linear(2 * hidden + 2, 1)

    def activations(self, features: torch.Tensor, map_logits: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w), (N, 1, h, w) -> the 5x5 conv's activations (N, hidden, h / pool, w / pool) (ceil)."""
        x = torch.cat([features, map_logits], dim=1)
        if self.pool > 1:  # CPU configuration: the 5x5 conv is the costliest layer; run it at half the grid
            x = F.avg_pool2d(x, self.pool, ceil_mode=True)
        return self.conv(x)

    def score(self, activations: torch.Tensor, map_logits: torch.Tensor) -> torch.Tensor:
        """activations (N, hidden, h', w'), map logits (N, 1, h, w) -> score logit (N,)."""
        pooled = torch.cat([activations.amax(dim=(2, 3)), activations.mean(dim=(2, 3)),
                            map_logits.amax(dim=(2, 3)), map_logits.mean(dim=(2, 3))], dim=1)
        return self.fc(pooled).squeeze(1)

    def activation_map(self, activations: torch.Tensor) -> torch.Tensor:
        """activations (N, hidden, h', w') -> class activation map (N, 1, h', w') (Zhou et al., CVPR 2016): each
        channel weighted by what the linear layer gives its max and its mean, i.e. where the head saw a defect."""
        hidden = activations.shape[1]
        weights = self.fc.weight[0, :hidden] + self.fc.weight[0, hidden:2 * hidden]
        return (activations * weights.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)

    def forward(self, features: torch.Tensor, map_logits: torch.Tensor) -> torch.Tensor:
        return self.score(self.activations(features, map_logits), map_logits)


class GaussianSmoothing(nn.Module):
    """Separable Gaussian blur of (N, 1, H, W) maps, reflect-padded, kernel radius ceil(4 sigma)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        radius = max(1, math.ceil(4 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        self.radius = radius
        self.register_buffer("kernel", (kernel / kernel.sum()), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        r = self.radius
        k = self.kernel.to(maps.dtype)
        if min(maps.shape[-2:]) <= r:  # reflect padding needs a larger map; replicate is close enough
            padded = F.pad(maps, (r, r, r, r), mode="replicate")
        else:
            padded = F.pad(maps, (r, r, r, r), mode="reflect")
        out = F.conv2d(padded, k.view(1, 1, 1, -1))
        return F.conv2d(out, k.view(1, 1, -1, 1))


class SuperSimpleNet(nn.Module):
    """Backbone + aggregator + adaptor + heads; see the module docstring for shapes.

    ``pretrained``: load the backbone's ImageNet weights (training); False when a package provides them.
    """

    def __init__(self, config: dict, *, pretrained: bool = False, backbone_weights: str | None = None) -> None:
        super().__init__()
        self.config = dict(config)
        channels = int(sum(config["channels"]))
        map_source(config)  # refuse a bad "map_from" or "score_from" now, not at the first image
        score_source(config)
        if tuple(config["channels"]) != tuple(backbone_channels(config["backbone"])):
            raise ValueError(f"config channels {config['channels']} do not match backbone {config['backbone']!r}")
        self.backbone = build_backbone(config["backbone"], pretrained=pretrained, weights_path=backbone_weights)
        self.aggregator = FeatureAggregator(int(config["feature_scale"]))
        # Per-channel standardisation of the aggregated features, fitted on the training set: the feature-space
        # noise (std 0.015) then has the same size relative to the features whatever the backbone's scale.
        self.register_buffer("feature_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, channels, 1, 1))
        self.adaptor = nn.Conv2d(channels, channels, 1)
        self.seg_head = SegmentationHead(channels, int(config["seg_width"]))
        self.cls_head = ClassificationHead(channels, int(config["cls_channels"]), int(config["cls_pool"]))
        self.smoothing = GaussianSmoothing(float(config["smooth_sigma"]))

    def train(self, mode: bool = True) -> "SuperSimpleNet":
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics never change
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, 3, H, W) -> standardised aggregated features (N, C, h, w): what training caches."""
        return (self.aggregator(self.backbone(x)) - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and std (C,) of the aggregated features; std is floored to stay invertible."""
        self.feature_mean.copy_(mean.reshape(self.feature_mean.shape))
        self.feature_std.copy_(std.clamp_min(1e-3).reshape(self.feature_std.shape))

    def decide(self, adapted: torch.Tensor, detach_map: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted features (N, C, h, w) -> (map logits (N, 1, h, w), score logits (N,))."""
        map_logits = self.seg_head(adapted)
        score_logits = self.cls_head(adapted, map_logits.detach() if detach_map else map_logits)
        return map_logits, score_logits

    def anomaly_map(self, map_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Map logits (N, 1, h, w) -> anomaly map (N, 1, *size) in 0..1, smoothed."""
        maps = F.interpolate(torch.sigmoid(map_logits), size=size, mode="bilinear", align_corners=False)
        return self.smoothing(maps)

    def outputs(self, adapted: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted features (N, C, h, w) -> (anomaly map (N, 1, *size) in 0..1, score (N,) in 0..1), the map as
        config["map_from"] says (core.models.map_sources; absent: "segmentation", the papers' map):
        segmentation: the segmentation head's map;
        classifier: score * sigmoid(the classification head's activation map), resized and smoothed alike;
        both: the geometric mean of the two;
        choice: per image the segmentation map or "both", each centred at its threshold (map_sources.chosen_map).
        The score is the classification head's, or with config["score_from"] "map" the mean of the map's highest
        config["score_top_share"] of pixels (then, with the segmentation map, the classification head is not run)."""
        map_logits = self.seg_head(adapted)
        source, score_from = map_source(self.config), score_source(self.config)
        score = None
        if score_from == "classifier" or source != "segmentation":
            activations = self.cls_head.activations(adapted, map_logits)
            score = torch.sigmoid(self.cls_head.score(activations, map_logits))

        def classifier() -> torch.Tensor:
            return self.anomaly_map(self.cls_head.activation_map(activations), size) * score.view(-1, 1, 1, 1)

        anomaly_map = configured_map(self.config, lambda: self.anomaly_map(map_logits, size), classifier)
        if score_from == "map":
            score = top_share_mean(anomaly_map, float(self.config.get("score_top_share", DEFAULT_SCORE_TOP_SHARE)))
        return anomaly_map, score

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs(self.adaptor(self.encode(x)), tuple(x.shape[-2:]))


def score_source(config: dict) -> str:
    """config["score_from"], "classifier" where absent; ValueError for an unknown source or a bad top share."""
    source = config.get("score_from", "classifier")
    if source not in SCORE_SOURCES:
        raise ValueError(f"config score_from {source!r} is not one of {SCORE_SOURCES}")
    share = config.get("score_top_share", DEFAULT_SCORE_TOP_SHARE)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share <= 1.0:
        raise ValueError(f"config score_top_share must be a share above 0 and at most 1, got {share!r}")
    return source


def top_share_mean(maps: torch.Tensor, share: float) -> torch.Tensor:
    """maps (N, 1, H, W) -> (N,): the mean of each map's highest ``share`` of pixels (at least one)."""
    flat = maps.flatten(1)
    return flat.topk(max(1, int(round(share * flat.shape[1]))), dim=1).values.mean(dim=1)


def build(meta: dict) -> SuperSimpleNet:
    """Registry hook: the untrained network a package's model.json describes (weights come from the package)."""
    config = meta["config"]
    if config.get("backbone") != meta["backbone"]:
        raise ValueError(f"config backbone {config.get('backbone')!r} differs from model.json backbone "
                         f"{meta['backbone']!r}")
    return SuperSimpleNet(config, pretrained=False)
