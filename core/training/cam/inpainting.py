"""Inpainting Extension Module (IEM): grow a CAM that covers only the most telling part of a defect.

A classifier's CAM fires on the few positions that suffice for the label. Erase them (OpenCV Telea
inpainting) and ask again: if the image still looks defective, the rest of the defect is what now
carries the label, so its CAM is merged in (pixel-wise max). Stop when the image looks good or after
``rounds`` rounds. All images of a batch advance one round together, so the classifier runs batched.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

# images (M, H, W, 3) uint8 -> (defect probability (M,), CAM probability (M, H, W))
Classify = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def erase_region(image: np.ndarray, region: np.ndarray, *, radius: int = 5, grow: int = 3) -> np.ndarray:
    """Inpaint ``region`` (H, W) bool of ``image`` (H, W, 3) uint8, grown by ``grow`` px to take the rim too."""
    mask = region.astype(np.uint8)
    if grow > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return cv2.inpaint(image, mask, radius, cv2.INPAINT_TELEA)


def region_of(cam: np.ndarray, threshold: float) -> np.ndarray:
    """cam >= threshold; if nothing passes, the top half of the CAM's own range (the peak region)."""
    region = cam >= threshold
    return region if region.any() else cam >= 0.5 * float(cam.max())


def inpaint_extend(images: np.ndarray, cams: np.ndarray, classify: Classify, *, rounds: int = 3,
                   threshold: float = 0.5, defect_threshold: float = 0.5, radius: int = 5,
                   grow: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """images (N, H, W, 3) uint8 and their CAMs (N, H, W) in 0..1 -> (extended CAMs (N, H, W),
    rounds that added a map (N,))."""
    merged = cams.astype(np.float32).copy()
    current = images.copy()
    used = np.zeros(len(images), np.int64)
    active = np.arange(len(images))
    for _ in range(rounds):
        if active.size == 0:
            break
        erased = np.stack([erase_region(current[i], region_of(merged[i], threshold), radius=radius, grow=grow)
                           for i in active])
        probs, new_cams = classify(erased)
        still = probs >= defect_threshold
        for slot, index in enumerate(active):
            current[index] = erased[slot]
            if still[slot]:
                merged[index] = np.maximum(merged[index], new_cams[slot])
                used[index] += 1
        active = active[still]
    return merged, used


def extend_again(images: np.ndarray, maps: np.ndarray, chosen: np.ndarray, cams: np.ndarray, classify: Classify, *,
                 min_cover: float = 0.0, rounds: int = 3, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Run IEM again from other CAMs for some images: images (N, H, W, 3) uint8, their extended maps (N, H, W),
    ``chosen`` (N,) bool, and ``cams`` (N, H, W): the CAMs read another way (core.models.cam_classifier.cam_map's
    kind, with ``classify`` reading them the same way) -> (maps (N, H, W) with each chosen image whose CAM covers at
    least ``min_cover`` of it at ``threshold`` replaced by that CAM extended, which images were (N,) bool).

    The trainer's use: a defect the found region does not explain (still classified defective after every IEM
    round) is large or diffuse, and the CAM read absolutely covers more of it than the relative one."""
    redo = chosen & ((cams >= threshold).mean(axis=(1, 2)) >= min_cover)
    out = maps.copy()
    if redo.any():
        out[redo], _ = inpaint_extend(images[redo], cams[redo], classify, rounds=rounds, threshold=threshold)
    return out, redo
