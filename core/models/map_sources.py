"""What a package's defect map is made of, for the families whose network has both a segmentation head and an
image classifier with a class activation map (SuperSimpleNet, the distilled CAM segmenter).

- "segmentation": the segmentation head's map (what both families shipped first; packages without the
  config key "map_from" read as this);
- "classifier": the image score times sigmoid(the classifier's activation map): where the classifier saw the
  defect, scaled so that images it calls good stay low;
- "both": the geometric mean of the two, high only where both heads agree.

In the weak regime the classifier is the part trained on the real labels, and its activation map found the
large, diffuse defects that the segmentation map missed (docs/results.md: "Weak regime: both heads' maps" and,
for the cam family, "Map from both heads").
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

MAP_SOURCES = ("segmentation", "classifier", "both")


def map_source(config: Mapping) -> str:
    """config["map_from"], "segmentation" where absent; ValueError when it is not one of MAP_SOURCES."""
    source = config.get("map_from", "segmentation")
    if source not in MAP_SOURCES:
        raise ValueError(f"config map_from {source!r} is not one of {MAP_SOURCES}")
    return source


def joined_map(source: str, segmentation: Callable[[], torch.Tensor],
               classifier: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The map ``source`` names, from callables that each give a map (N, 1, H, W) in 0..1; only the ones the
    source needs are called."""
    if source == "segmentation":
        return segmentation()
    if source == "classifier":
        return classifier()
    if source == "both":
        return torch.sqrt(segmentation() * classifier())
    raise ValueError(f"map source {source!r} is not one of {MAP_SOURCES}")
