"""Guided Cropping Module (GCM): zoom the classifier onto the region its CAM points at.

For a defect image the crop is a square around the connected high-activation region that holds the
CAM's peak, with a margin, at least ``min_side`` pixels; resized back to the input size, a small
defect then fills many more positions of the stride-8 CAM. Good images get random squares with the
same side distribution, so crop size and zoom cannot tell the classes apart.
"""
from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive)


def crop_box(cam: np.ndarray, *, relative_threshold: float = 0.5, margin: float = 0.5,
             min_side: int = 64) -> Box:
    """Square box around the peak region of ``cam`` (H, W) float: the connected component of
    cam >= relative_threshold * max that contains the maximum, grown by ``margin`` of its side."""
    height, width = cam.shape
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    region = (cam >= relative_threshold * float(cam.max())).astype(np.uint8)
    _, components = cv2.connectedComponents(region, connectivity=8)
    ys, xs = np.nonzero(components == components[peak])
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    side = int(min(max(side * (1.0 + 2.0 * margin), min_side), height, width))
    cy, cx = (ys.min() + ys.max()) / 2.0, (xs.min() + xs.max()) / 2.0
    y0 = int(np.clip(round(cy - side / 2.0), 0, height - side))
    x0 = int(np.clip(round(cx - side / 2.0), 0, width - side))
    return y0, y0 + side, x0, x0 + side


def random_box(rng: np.random.Generator, shape: tuple[int, int], side: int) -> Box:
    height, width = shape
    side = int(min(side, height, width))
    y0 = int(rng.integers(0, height - side + 1))
    x0 = int(rng.integers(0, width - side + 1))
    return y0, y0 + side, x0, x0 + side


def cut(image: np.ndarray, box: Box) -> np.ndarray:
    """The box of ``image`` (H, W[, C]) resized back to (H, W)."""
    y0, y1, x0, x1 = box
    return cv2.resize(image[y0:y1, x0:x1], (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def guided_crops(images: np.ndarray, cams: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
                 margin: float = 0.5, min_side: int = 64) -> tuple[np.ndarray, np.ndarray, list[Box]]:
    """images (N, H, W, 3) uint8, cams (N, H, W) float, labels (N,) ->
    (crops (M, H, W, 3) uint8, crop labels (M,), boxes): one guided crop per defect image and as many
    random crops of good images (drawn with replacement when there are fewer good images)."""
    defect = np.flatnonzero(labels > 0)
    good = np.flatnonzero(labels == 0)
    crops, crop_labels, boxes = [], [], []
    sides = []
    for index in defect:
        box = crop_box(cams[index], margin=margin, min_side=min_side)
        sides.append(box[1] - box[0])
        crops.append(cut(images[index], box))
        crop_labels.append(1)
        boxes.append(box)
    if len(good) and sides:
        for index, side in zip(rng.choice(good, size=len(sides), replace=len(good) < len(sides)), sides):
            box = random_box(rng, images.shape[1:3], int(side))
            crops.append(cut(images[index], box))
            crop_labels.append(0)
            boxes.append(box)
    if not crops:
        return np.zeros((0, *images.shape[1:]), np.uint8), np.zeros(0, np.int64), []
    return np.stack(crops), np.asarray(crop_labels, np.int64), boxes
