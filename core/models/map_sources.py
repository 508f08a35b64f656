"""What a package's defect map is made of, for the families whose network has both a segmentation head and an
image classifier with a class activation map (SuperSimpleNet, the distilled CAM segmenter).

- "segmentation": the segmentation head's map (what both families shipped first; packages without the
  config key "map_from" read as this);
- "classifier": the image score times sigmoid(the classifier's activation map): where the classifier saw the
  defect, scaled so that images it calls good stay low;
- "both": the geometric mean of the two, high only where both heads agree;
- "choice" (CHOICE): per image, the segmentation map where its peak is confident, else "both", each centred at its
  own pixel threshold (config "map_choice"; ``chosen_map``). Set by the SuperSimpleNet trainer for the weak regime
  after calibration, since the thresholds come from the trained network; not a choice of its own in MAP_SOURCES.

In the weak regime the classifier is the part trained on the real labels, and its activation map found the
large, diffuse defects that the segmentation map missed (docs/results.md: "Weak regime: both heads' maps" and,
for the cam family, "Map from both heads").
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

MAP_SOURCES = ("segmentation", "classifier", "both")
CHOICE = "choice"
CHOICE_KEYS = ("segmentation_threshold", "both_threshold", "peak_ratio")
_CENTRE_CLIP = 1e-4  # as core.inference.mask_refinement.centred_probability


def map_source(config: Mapping) -> str:
    """config["map_from"], "segmentation" where absent; ValueError when it is not one of MAP_SOURCES or CHOICE, or
    when CHOICE comes without a valid config["map_choice"]."""
    source = config.get("map_from", "segmentation")
    if source == CHOICE:
        map_choice(config)
        return source
    if source not in MAP_SOURCES:
        raise ValueError(f"config map_from {source!r} is not one of {MAP_SOURCES + (CHOICE,)}")
    return source


def map_choice(config: Mapping) -> dict[str, float]:
    """config["map_choice"] checked: {"segmentation_threshold", "both_threshold"} in (0, 1), "peak_ratio" > 0."""
    choice = config.get("map_choice")
    if not isinstance(choice, Mapping) or set(choice) != set(CHOICE_KEYS):
        raise ValueError(f"config map_from {CHOICE!r} needs map_choice with exactly the keys {CHOICE_KEYS}, "
                         f"got {choice!r}")
    values = {}
    for key in CHOICE_KEYS:
        value = choice[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config map_choice {key} must be a number, got {value!r}")
        values[key] = float(value)
    for key in ("segmentation_threshold", "both_threshold"):
        if not 0.0 < values[key] < 1.0:
            raise ValueError(f"config map_choice {key} must be between 0 and 1, got {values[key]}")
    if values["peak_ratio"] <= 0.0:
        raise ValueError(f"config map_choice peak_ratio must be above 0, got {values['peak_ratio']}")
    return values


def centred(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Maps in 0..1 -> the same shape in (0, 1) with ``threshold`` moved to 0.5 (a shift in logit space; order kept)."""
    def logit(value: torch.Tensor) -> torch.Tensor:
        return torch.logit(value.clamp(_CENTRE_CLIP, 1.0 - _CENTRE_CLIP))

    return torch.sigmoid(logit(maps) - logit(torch.tensor(float(threshold), dtype=maps.dtype, device=maps.device)))


def chosen_map(segmentation: torch.Tensor, both: torch.Tensor, choice: Mapping[str, float]) -> torch.Tensor:
    """segmentation, both (N, 1, H, W) in 0..1 -> (N, 1, H, W) in (0, 1), per image: the segmentation map centred at
    its threshold where its peak exceeds peak_ratio x that threshold, else the "both" map centred at its threshold.
    Masks at 0.5 are then the chosen map's own masks.

    Why (weak SuperSimpleNet): the segmentation head, trained on feature noise, draws small compact defects
    (blowholes) tightly when it is confident, while "both" draws them wide (its classifier half is coarse) but finds the
    large diffuse defects the segmentation map misses. Chosen on held-out halves of mtd/train: mIoU 0.132 / 0.144
    ("both") -> 0.206 / 0.189 at peak_ratio 1.3 (docs/results.md, "Weak regime: the segmentation map where it is
    confident")."""
    seg_threshold, both_threshold = choice["segmentation_threshold"], choice["both_threshold"]
    confident = segmentation.flatten(1).amax(dim=1) > choice["peak_ratio"] * seg_threshold  # (N,)
    return torch.where(confident.view(-1, 1, 1, 1), centred(segmentation, seg_threshold),
                       centred(both, both_threshold))


def joined_map(source: str, segmentation: Callable[[], torch.Tensor], classifier: Callable[[], torch.Tensor],
               choice: Mapping[str, float] | None = None) -> torch.Tensor:
    """The map ``source`` names, from callables that each give a map (N, 1, H, W) in 0..1; only the ones the
    source needs are called. ``choice``: map_choice(config), needed by CHOICE only."""
    if source == "segmentation":
        return segmentation()
    if source == "classifier":
        return classifier()
    if source == "both":
        return torch.sqrt(segmentation() * classifier())
    if source == CHOICE:
        if choice is None:
            raise ValueError(f"map source {CHOICE!r} needs the package's map_choice")
        seg = segmentation()  # computed once for both branches; "both" as above, the map its threshold was set on
        return chosen_map(seg, joined_map("both", lambda: seg, classifier), choice)
    raise ValueError(f"map source {source!r} is not one of {MAP_SOURCES + (CHOICE,)}")


def configured_map(config: Mapping, segmentation: Callable[[], torch.Tensor],
                   classifier: Callable[[], torch.Tensor]) -> torch.Tensor:
    """joined_map for the source config["map_from"] names (with config["map_choice"] for CHOICE)."""
    source = map_source(config)
    return joined_map(source, segmentation, classifier, map_choice(config) if source == CHOICE else None)
