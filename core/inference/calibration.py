"""Choosing thresholds from scored images: image-level OK/NG thresholds and the pixel threshold."""
from __future__ import annotations

import numpy as np

from core.inference.result import Thresholds


class CalibrationError(ValueError):
    """Thresholds cannot be derived from the data given (e.g. no defective images at all)."""


def image_thresholds(scores: np.ndarray, labels: np.ndarray, *, miss_rate: float = 0.01,
                     false_alarm_rate: float = 0.01) -> tuple[float, float]:
    """(ok, ng) from scores (N,) and labels (N,) in {0, 1}.

    ng: the smallest threshold with at most ``false_alarm_rate`` of the good images at or above it; ok: the
    largest threshold with at most ``miss_rate`` of the defects below it. "At most" is counted in images:
    of 100 good images at 1 %, one may lie at or above ng (``floor(rate * n)`` of them), so a single odd
    image does not set the threshold on its own. Scores in [ok, ng) go to REVIEW. When the classes are
    separable at these rates (ok would lie above ng) both become the middle of the gap and there is no
    REVIEW band. Without defective images only ng can be derived from the good ones, and ok = ng (no REVIEW
    band is invented).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise CalibrationError("scores and labels must be 1-D arrays of the same length")
    good, bad = scores[~labels], scores[labels]
    if good.size == 0:
        raise CalibrationError("no good (OK) images to calibrate on")
    descending = np.sort(good)[::-1]
    ng = float(descending[min(_allowed(false_alarm_rate, good.size), good.size - 1)])
    ng = float(np.nextafter(ng, np.inf)) if ng < 1.0 else 1.0
    if bad.size == 0:
        return ng, ng
    ok = float(np.sort(bad)[min(_allowed(miss_rate, bad.size), bad.size - 1)])
    if ok >= ng:
        # Separable at these rates: one cut, in the middle of the gap, for the widest margin both ways.
        ok = ng = 0.5 * (ok + ng)
    return float(np.clip(ok, 0.0, 1.0)), float(np.clip(ng, 0.0, 1.0))


def _allowed(rate: float, count: int) -> int:
    """How many of ``count`` images may fall on the wrong side at ``rate`` (the tolerance absorbs float error:
    0.29 * 100 is 28.999999999999996)."""
    return int(np.floor(rate * count + 1e-9))


def pixel_threshold(maps: list[np.ndarray], masks: list[np.ndarray | None], *, good_quantile: float = 0.999,
                    max_pixels: int = 2_000_000, seed: int = 0) -> float:
    """Pixel threshold from anomaly maps and their masks (bool, same shape; None = unknown).

    With defect masks: the value that maximises the F1 of defect pixels over the pooled pixels (a proxy for
    IoU that also penalises false alarms on good images). Without any mask with defect pixels: the
    ``good_quantile`` of the good images' map values.
    """
    values, truth = [], []
    for amap, mask in zip(maps, masks):
        if mask is None:
            continue
        values.append(np.asarray(amap, dtype=np.float32).ravel())
        truth.append(np.asarray(mask, dtype=bool).ravel())
    if not values:
        raise CalibrationError("no maps with known masks to calibrate the pixel threshold on")
    v, t = np.concatenate(values), np.concatenate(truth)
    if v.size > max_pixels:
        pick = np.random.default_rng(seed).choice(v.size, size=max_pixels, replace=False)
        v, t = v[pick], t[pick]
    if not t.any():
        return float(np.quantile(v, good_quantile))
    order = np.argsort(-v, kind="stable")
    v_sorted, t_sorted = v[order], t[order]
    true_pos = np.cumsum(t_sorted)
    predicted = np.arange(1, v.size + 1)
    f1 = 2 * true_pos / (predicted + t.sum())
    # only cut between distinct values
    distinct = np.r_[v_sorted[1:] != v_sorted[:-1], True]
    best = int(np.argmax(np.where(distinct, f1, -1.0)))
    return float(v_sorted[best])


def calibrate(scores: np.ndarray, labels: np.ndarray, maps: list[np.ndarray],
              masks: list[np.ndarray | None]) -> Thresholds:
    ok, ng = image_thresholds(scores, labels)
    return Thresholds(ok=ok, ng=ng, pixel=pixel_threshold(maps, masks))


def outcome_rates(scores: np.ndarray, labels: np.ndarray, ok: float, ng: float) -> dict[str, float | None]:
    """Outcome shares of thresholds (ok, ng) on scores (N,) with labels (N,) (1 = defect / NG-tagged), by the verdict
    policy of core.inference.result.Thresholds (below ok: OK; from ng: NG; between: REVIEW). miss: defects passed
    as OK; false_alarm: good parts called NG; review: all parts sent to REVIEW; review_good / review_defect: the
    good / the defect parts sent to REVIEW. None where there are no such parts."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise CalibrationError(f"{scores.size} scores for {labels.size} labels")
    in_review = (scores >= ok) & (scores < ng)

    def share(hits: np.ndarray, of: np.ndarray) -> float | None:
        return float(hits[of].mean()) if of.any() else None

    everyone = np.ones_like(labels)
    return {"miss": share(scores < ok, labels), "false_alarm": share(scores >= ng, ~labels),
            "review": share(in_review, everyone), "review_good": share(in_review, ~labels),
            "review_defect": share(in_review, labels)}


def review_shares(scores: np.ndarray, labels: np.ndarray, thresholds: Thresholds) -> dict[str, float | None]:
    """{"good", "defect"}: the share of the good and of the defect images among scores (N,) / labels (N,) that
    ``thresholds`` send to REVIEW (None without images of the class), rounded for a model package's record. A model
    that cannot tell the classes apart gets a wide REVIEW band; this says how much of the line it would leave to
    people."""
    shares = outcome_rates(scores, labels, thresholds.ok, thresholds.ng)
    return {kind: None if shares[f"review_{kind}"] is None else round(shares[f"review_{kind}"], 4)
            for kind in ("good", "defect")}
