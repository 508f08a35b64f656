"""Detection and segmentation metrics: AUROC, average precision, AUPRO and IoU (numpy + OpenCV only).

All ranking metrics here are exact (no binning, no sampling):

- AUROC is the trapezoid area under the ROC curve drawn through every distinct score, which equals the
  Mann-Whitney statistic with ties counted one half (as sklearn.metrics.roc_auc_score).
- AP is sklearn's ``average_precision_score``: sum over distinct scores t (descending) of
  (recall(t) - recall(t_prev)) * precision(t), where all samples with score >= t count as positive,
  so equal scores form one step.
- AUPRO follows the MVTec AD evaluation code: the per-region overlap (PRO) of threshold t is the mean,
  over connected components (8-connectivity) of the ground-truth defects, of the fraction of the
  component's pixels with value >= t; the FPR of t is the fraction of all defect-free pixels (good
  images and the background of defect images) with value >= t. The curve (FPR, PRO) through every
  distinct value is integrated with the trapezoid rule up to FPR = 0.3 (the last segment linearly
  interpolated at 0.3) and divided by 0.3, so a perfect map scores 1 and a random one about 0.15.

Memory: pixel metrics never sort (value, label) pairs together. Defect and defect-free pixel values are
kept as two float32 arrays (4 bytes per pixel, ~100 MB for 25 M pixels), each sorted in place; the
curves are then evaluated chunk by chunk with binary searches, so no per-pixel float64 curve is built.

A metric that is undefined (e.g. AUROC when every image has the same label) is None, never NaN, and
the reason is reported beside it in a ``notes`` dictionary.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

_CHUNK = 1 << 20  # distinct values per vectorised step: bounds the float64 temporaries to ~10 x 8 MB
AUPRO_MAX_FPR = 0.3


# --------------------------------------------------------------------------- core curve arithmetic


def _distinct_runs(sorted_values: np.ndarray, start: int, stop: int,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values beginning in sorted_values[start:stop] with [left, right) index of each run.

    A run that begins inside the block but continues past ``stop`` gets its true right end; a run
    that began before ``start`` is left to the previous block.
    """
    block = sorted_values[start:stop]
    begins = np.empty(block.size, dtype=bool)
    begins[0] = start == 0 or block[0] != sorted_values[start - 1]
    np.not_equal(block[1:], block[:-1], out=begins[1:])
    left = np.flatnonzero(begins) + start
    values = sorted_values[left]
    right = np.empty_like(left)
    right[:-1] = left[1:]
    if values.size:
        right[-1] = np.searchsorted(sorted_values, values[-1], side="right")
    return values, left, right


def _curve_area(pos_sorted: np.ndarray, neg_sorted: np.ndarray, pos_cum_weight: np.ndarray | None = None,
                max_fpr: float = 1.0) -> float:
    """Trapezoid area under (FPR(t), Y(t)) from t = +inf down to FPR = ``max_fpr``.

    pos_sorted (P,), neg_sorted (N,): ascending values of positives and negatives. FPR(t) = #neg >= t / N.
    Y(t) = weight of positives >= t; weights are uniform 1/P (-> TPR, so the area is AUROC) unless
    ``pos_cum_weight`` (P + 1,) gives the cumulative weight of pos_sorted in ascending order (-> PRO).

    FPR only moves at negative values, so the curve's area is the sum over distinct negative values v
    of dFPR(v) * (Y(> v) + Y(>= v)) / 2; the vertical segments at positive-only values add nothing.
    """
    n_neg, n_pos = neg_sorted.size, pos_sorted.size
    total = 1.0 if pos_cum_weight is None else float(pos_cum_weight[-1])
    area = 0.0
    for start in range(0, n_neg, _CHUNK):
        values, left, right = _distinct_runs(neg_sorted, start, min(start + _CHUNK, n_neg))
        fpr_above = (n_neg - right) / n_neg          # FPR of a threshold just above v
        d_fpr = (right - left) / n_neg               # negatives equal to v
        pos_left = np.searchsorted(pos_sorted, values, side="left")
        pos_right = np.searchsorted(pos_sorted, values, side="right")
        if pos_cum_weight is None:
            y_ge, y_gt = (n_pos - pos_left) / n_pos, (n_pos - pos_right) / n_pos
        else:
            y_ge, y_gt = total - pos_cum_weight[pos_left], total - pos_cum_weight[pos_right]
        if max_fpr < 1.0:
            inside = fpr_above < max_fpr
            # the segment that crosses max_fpr is cut there, with Y interpolated linearly along it
            width = np.minimum(fpr_above + d_fpr, max_fpr) - fpr_above
            y_ge = y_gt + (y_ge - y_gt) * (width / d_fpr)
            d_fpr = np.where(inside, width, 0.0)
        area += float(np.sum(d_fpr * (y_gt + y_ge)) / 2.0)
    return area


def _average_precision(pos_sorted: np.ndarray, neg_sorted: np.ndarray) -> float:
    """sklearn-style AP from ascending positive and negative values (recall only moves at positive values)."""
    n_pos, n_neg = pos_sorted.size, neg_sorted.size
    ap = 0.0
    for start in range(0, n_pos, _CHUNK):
        values, left, right = _distinct_runs(pos_sorted, start, min(start + _CHUNK, n_pos))
        true_pos = (n_pos - left).astype(np.float64)                      # positives >= v
        false_pos = n_neg - np.searchsorted(neg_sorted, values, side="left")  # negatives >= v
        ap += float(np.sum((right - left) / n_pos * true_pos / (true_pos + false_pos)))
    return ap


# --------------------------------------------------------------------------- image-level metrics


def _split_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (good) or 1 (defect)")
    labels = labels.astype(bool)
    return np.sort(scores[labels]), np.sort(scores[~labels])


def undefined_reason(labels: np.ndarray, unit: str = "images") -> str | None:
    """Why AUROC/AP cannot be computed for ``labels`` (None when both classes are present)."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if labels.size == 0:
        return f"no {unit}"
    if labels.all():
        return f"all {labels.size} {unit} are defective: needs good ones too"
    if not labels.any():
        return f"all {labels.size} {unit} are good: needs defective ones too"
    return None


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve of scores (N,) for labels (N,) in {0, 1}; None when one class is absent."""
    pos, neg = _split_scores(scores, labels)
    if pos.size == 0 or neg.size == 0:
        return None
    return _curve_area(pos, neg)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Average precision of scores (N,) for labels (N,) (sklearn's definition); None when one class is absent.

    Without negatives sklearn returns 1.0; here that case is None too, since the figure says nothing.
    """
    pos, neg = _split_scores(scores, labels)
    if pos.size == 0 or neg.size == 0:
        return None
    return _average_precision(pos, neg)


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float | None], dict[str, str]]:
    """({"image_auroc", "image_ap"}, notes) for image scores (N,) and labels (N,)."""
    values = {"image_auroc": auroc(scores, labels), "image_ap": average_precision(scores, labels)}
    reason = undefined_reason(labels, "images")
    notes = {key: reason for key in values if reason is not None}
    return values, notes


# --------------------------------------------------------------------------- pixel-level metrics


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool masks (H, W); 1.0 when both are empty (nothing to disagree on)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} vs {truth.shape}")
    union = int(np.count_nonzero(predicted | truth))
    return 1.0 if union == 0 else int(np.count_nonzero(predicted & truth)) / union


def _gather(chunks: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate and free ``chunks`` one by one, so the peak is the result plus one chunk."""
    out = np.empty(sum(c.size for c in chunks), dtype=dtype)
    at = 0
    while chunks:
        chunk = chunks.pop(0)
        out[at:at + chunk.size] = chunk
        at += chunk.size
    return out


@dataclass
class PixelMetrics:
    """Accumulates maps and masks image by image; ``result()`` gives pixel AUROC, AP, AUPRO, mIoU, IoU.

    Keeps per image only what the metrics need: the map values split into defect-free (float32) and
    defect pixels (float32 plus an int32 region id), and the IoU counts; not the maps themselves.
    """

    max_fpr: float = AUPRO_MAX_FPR
    _neg: list[np.ndarray] = field(default_factory=list, repr=False)
    _pos: list[np.ndarray] = field(default_factory=list, repr=False)
    _region: list[np.ndarray] = field(default_factory=list, repr=False)
    _region_sizes: list[np.ndarray] = field(default_factory=list, repr=False)
    _n_regions: int = 0
    _intersection: int = 0
    _union: int = 0
    _image_ious: list[float] = field(default_factory=list)
    _masks_seen: int = 0
    _images: int = 0

    def add(self, anomaly_map: np.ndarray, truth: np.ndarray, predicted: np.ndarray | None = None,
            defective: bool | None = None) -> float | None:
        """One image: anomaly_map float (H, W); truth bool (H, W) ground truth; predicted bool (H, W) the
        model's mask (None: no IoU); defective: the image label (None: truth.any()). Defective images
        enter ``miou``; every image enters ``iou``. Returns this image's IoU (None without ``predicted``)."""
        amap = np.asarray(anomaly_map, dtype=np.float32)
        truth = np.asarray(truth, dtype=bool)
        if amap.shape != truth.shape or amap.ndim != 2:
            raise ValueError(f"anomaly map {amap.shape} and mask {truth.shape} must be the same (H, W)")
        if not np.isfinite(amap).all():
            raise ValueError("anomaly map contains NaN or infinite values")
        if predicted is not None:
            predicted = np.asarray(predicted, dtype=bool)
            if predicted.shape != truth.shape:
                raise ValueError(f"predicted mask {predicted.shape} and ground truth {truth.shape} differ in size")
        self._images += 1
        self._neg.append(amap[~truth])
        if truth.any():
            count, labels = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            pixel_region = labels[truth]                      # 1..count-1 per defect pixel, row-major
            sizes = np.bincount(pixel_region, minlength=count)[1:]
            self._pos.append(amap[truth])
            self._region.append(pixel_region - 1 + self._n_regions)
            self._region_sizes.append(sizes)
            self._n_regions += count - 1
        if predicted is not None:
            inter = int(np.count_nonzero(predicted & truth))
            union = int(np.count_nonzero(predicted | truth))
            self._masks_seen += 1
            self._intersection += inter
            self._union += union
            image_iou = 1.0 if union == 0 else inter / union
            if bool(truth.any()) if defective is None else bool(defective):
                self._image_ious.append(image_iou)
            return image_iou
        return None

    def result(self) -> tuple[dict[str, float | None], dict[str, str]]:
        """({"pixel_auroc", "pixel_ap", "aupro", "miou", "iou"}, notes). Consumes the stored pixels."""
        values: dict[str, float | None] = dict.fromkeys(("pixel_auroc", "pixel_ap", "aupro", "miou", "iou"))
        notes: dict[str, str] = {}
        neg = _gather(self._neg, np.float32)
        pos = _gather(self._pos, np.float32)
        region = _gather(self._region, np.int32)
        sizes = np.concatenate(self._region_sizes) if self._region_sizes else np.zeros(0, np.int64)
        self._region_sizes.clear()
        reason = ("no defect pixels in the ground truth" if pos.size == 0
                  else "no defect-free pixels" if neg.size == 0 else None)
        if reason is not None:
            for key in ("pixel_auroc", "pixel_ap", "aupro"):
                notes[key] = f"{reason} ({self._images} images with known masks)"
        else:
            neg.sort()
            order = np.argsort(pos, kind="stable")
            pos = pos[order]
            values["pixel_auroc"] = _curve_area(pos, neg)
            values["pixel_ap"] = _average_precision(pos, neg)
            weight = (1.0 / (self._n_regions * sizes.astype(np.float64)))[region[order]]
            cum = np.concatenate(([0.0], np.cumsum(weight)))
            values["aupro"] = _curve_area(pos, neg, cum, self.max_fpr) / self.max_fpr
        if self._masks_seen == 0:
            notes["miou"] = notes["iou"] = "no predicted masks to compare"
        else:
            if self._image_ious:
                values["miou"] = float(np.mean(self._image_ious))
            else:
                notes["miou"] = "no defective images with ground-truth masks"
            if self._union:
                values["iou"] = self._intersection / self._union
            else:
                notes["iou"] = "no defect pixels in the ground truth or the predictions"
        return values, notes


def pixel_metrics(maps: list[np.ndarray], truths: list[np.ndarray], predicted: list[np.ndarray] | None = None,
                  labels: list[int] | None = None) -> tuple[dict[str, float | None], dict[str, str]]:
    """PixelMetrics over lists of maps (H, W), ground-truth masks (H, W) and optional predicted masks."""
    acc = PixelMetrics()
    for index, (amap, truth) in enumerate(zip(maps, truths, strict=True)):
        acc.add(amap, truth, None if predicted is None else predicted[index],
                None if labels is None else bool(labels[index]))
    return acc.result()


def aupro(maps: list[np.ndarray], truths: list[np.ndarray], max_fpr: float = AUPRO_MAX_FPR) -> float | None:
    """Normalised area under the PRO curve up to ``max_fpr`` (see module docstring); None if undefined."""
    acc = PixelMetrics(max_fpr=max_fpr)
    for amap, truth in zip(maps, truths, strict=True):
        acc.add(amap, truth)
    return acc.result()[0]["aupro"]
