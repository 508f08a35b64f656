"""The evaluation loop behind ``inspector evaluate``: run a Detector over a dataset split, report metrics.

evaluate() returns one JSON-serialisable dict:
    image_auroc, image_ap, pixel_auroc, pixel_ap, aupro, miou, iou   float or None (see core.metrics)
    counts     {"images", "good", "defect", "segmented"}  (segmented: defect images with a mask)
    split, model {"path", "family", "device"}, dataset {"path", "layout"}, thresholds {"ok", "ng", "pixel"},
    verdicts   {"good": {"OK", "REVIEW", "NG"}, "defect": {...}}  how the package's own thresholds decided
    by_type    {defect type: {"images", "segmented", "image_auroc" (that type against all good images),
               "miou" (over its segmented images)}}; types come from the dataset (MVTec folder, file prefix)
    notes      {metric: why it is None}, seconds  wall time of the whole evaluation.

Pixel metrics use the images whose masks are known: good images count as all background; defect
images without a mask are left out of them (but not out of the image metrics).
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from core.data.dataset import Dataset, DatasetError, Sample, load_samples
from core.inference.result import Result, Verdict
from core.metrics import PixelMetrics, auroc, image_metrics
from core.training.api import EtaClock, ProgressEvent

METRIC_KEYS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro", "miou", "iou")
Loaded = list[tuple[np.ndarray, "np.ndarray | None"]]


def evaluate(detector, dataset: Dataset, split: str = "test",
             progress: Callable[[ProgressEvent], None] | None = None, *, batch_size: int = 8) -> dict:
    """Predict every image of ``dataset``'s ``split`` with ``detector`` (a core.inference.detector.Detector,
    or anything with its ``predict``, ``package``, ``family``, ``device`` and ``thresholds``) and measure.

    Images are read one batch ahead on a worker thread while the detector predicts the current batch.
    Only each image's score and the pixel values the metrics need are kept, never the images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    samples = dataset.split(split)  # type: ignore[arg-type]
    if not samples:
        raise DatasetError(f"{dataset.root}: the {split} split holds no images")
    started = time.perf_counter()
    clock = EtaClock()
    labels = np.array([s.label for s in samples], dtype=np.int64)
    scores = np.empty(len(samples), dtype=np.float64)
    pixels = PixelMetrics()
    verdicts = {name: {v.value: 0 for v in Verdict} for name in ("good", "defect")}
    ious: dict[str, list[float]] = {}
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    done = 0
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending: Future[Loaded] = reader.submit(load_samples, batches[0])
        for index, batch in enumerate(batches):
            loaded = pending.result()
            if index + 1 < len(batches):
                pending = reader.submit(load_samples, batches[index + 1])
            results = detector.predict([image for image, _ in loaded])
            if len(results) != len(batch):
                raise RuntimeError(f"the detector returned {len(results)} results for {len(batch)} images")
            for sample, (image, mask), result in zip(batch, loaded, results):
                _check_result(sample, image, result)
                scores[done] = result.score
                verdicts["defect" if sample.label else "good"][Verdict(result.verdict).value] += 1
                if mask is not None:
                    image_iou = pixels.add(result.anomaly_map, mask, result.mask, defective=bool(sample.label))
                    if sample.label and image_iou is not None:
                        ious.setdefault(sample.defect_type, []).append(image_iou)
                done += 1
            del loaded, results  # let the images and full-size maps go before the next batch
            if progress is not None:
                fraction = done / len(samples)
                progress(ProgressEvent(stage="evaluate", fraction=fraction, message=f"{done}/{len(samples)} images",
                                       eta_s=clock.eta(fraction)))
    if progress is not None:
        progress(ProgressEvent(stage="metrics", fraction=1.0, message="computing pixel metrics"))
    image_values, notes = image_metrics(scores, labels)
    pixel_values, pixel_notes = pixels.result()
    notes.update(pixel_notes)
    counts = dataset.counts(split)  # type: ignore[arg-type]
    package = detector.package
    report = {
        **{key: _plain(value) for key, value in {**image_values, **pixel_values}.items()},
        "counts": {"images": len(samples), **counts},
        "split": split,
        "model": {"path": str(package.path), "family": str(package.meta.get("family", "")),
                  "device": str(detector.device)},
        "dataset": {"path": dataset.resolved_path, "layout": dataset.layout},
        "thresholds": detector.thresholds.to_dict(),
        "mask_refinement": _refinement(detector),
        "verdicts": verdicts,
        "by_type": _by_type(samples, scores, ious),
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return report


def _check_result(sample: Sample, image: np.ndarray, result: Result) -> None:
    """The Result must be at image size with a finite score: a wrong shape would silently skew the metrics."""
    size = image.shape[:2]
    if result.anomaly_map.shape != size or result.mask.shape != size:
        raise RuntimeError(f"{sample.image_path}: the detector's map {result.anomaly_map.shape} / mask "
                           f"{result.mask.shape} is not at the image's size {size}")
    if not np.isfinite(result.score):
        raise RuntimeError(f"{sample.image_path}: the detector returned a non-finite score {result.score}")


def _by_type(samples: Sequence[Sample], scores: np.ndarray, ious: dict[str, list[float]]) -> dict[str, dict]:
    """Image AUROC of each defect type against all good images, and its mIoU (None where undefined)."""
    good = np.array([s.label == 0 for s in samples])
    out = {}
    for kind in sorted({s.defect_type for s in samples if s.label}):
        of_kind = np.array([s.label == 1 and s.defect_type == kind for s in samples])
        pick = good | of_kind
        out[kind] = {"images": int(of_kind.sum()), "segmented": len(ious.get(kind, [])),
                     "image_auroc": _plain(auroc(scores[pick], of_kind[pick].astype(np.int64))),
                     "miou": float(np.mean(ious[kind])) if ious.get(kind) else None}
    return out


def _plain(value: float | None) -> float | None:
    return None if value is None else float(value)


def _refinement(detector) -> dict | None:
    """The dense-CRF mask refinement the masks were made with (None: the thresholded map)."""
    refinement = getattr(detector, "mask_refinement", None)
    return None if refinement is None else refinement.to_dict()
