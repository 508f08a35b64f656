"""Detector: a loaded model package that predicts Results for station images, on CPU or GPU.

Family-agnostic: pre-processing (resize to the package's input size, grey -> RGB, normalise),
batching, the family's network (averaged over the package's mirror views, core.inference.flip_average), and
post-processing (map back to each image's size, mask, verdict). The mask is
the thresholded map, refined by a dense CRF where the package says so (core.inference.mask_refinement).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from core.data.images import resize_rgb_float
from core.inference.flip_average import FlipAveraged
from core.inference.mask_refinement import map_at_size, refined_mask
from core.inference.package import LoadedPackage, load_package
from core.inference.result import Result, Thresholds, Verdict
from core.models.inference_form import inference_form


# Images per network call on a CPU, views included: on 2 cores a large batch cost more per image than a small one
# (the activations leave the cache), so a batch is run in parts. With channels-last as well, batch-8 throughput of a
# one-view package went from about 31 to 17 ms per image in one bench sequence (docs/results.md, "Mirror views")
CPU_NETWORK_BATCH = 4


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu. "cuda" without a GPU is an error, said plainly."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA GPU on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


class Detector:
    """Predicts defects with one model package.

    predict(images) -> list[Result]; images are station images ((H, W) or (H, W, 3), uint8/uint16),
    each may have its own size.
    """

    def __init__(self, package: LoadedPackage, device: str = "auto", half: bool = False,
                 thresholds: Thresholds | None = None, refine_masks: bool = True, flip_average: bool = True) -> None:
        self.package = package
        self.device = resolve_device(device)
        self.half = bool(half and self.device.type == "cuda")
        # the package's mirror views averaged (its thresholds were set that way); flip_average=False: the image alone
        self.flips = package.test_time_flips if flip_average else ("none",)
        self.input_size = package.input_size  # (H, W)
        # BatchNorm folded into the convolutions and pads into them, on a copy (the package's network stays as saved):
        # the same outputs to float rounding, checked on an example image (core.models.inference_form)
        example = torch.randn(1, 3, *self.input_size, generator=torch.Generator().manual_seed(0))
        base = inference_form(package.network.eval(), example)
        network = base if len(self.flips) == 1 else FlipAveraged(base, self.flips)
        # channels-last (NHWC) memory: faster convolutions on a CPU, outputs equal to 1e-7 (a mirror-averaged full
        # package's p50 fell from 56-63 to 47 ms on 2 cores); preprocess() hands the images over in that layout
        self.network = network.to(self.device, memory_format=torch.channels_last)
        if self.half:
            self.network = self.network.half()
        self.network.eval()
        self.thresholds = thresholds or package.thresholds
        # the package's dense-CRF mask refinement, if it has one; refine_masks=False gives the raw masks
        self.mask_refinement = package.mask_refinement if refine_masks else None
        norm = package.meta["normalisation"]
        self._mean = np.asarray(norm["mean"], dtype=np.float32)
        self._std = np.asarray(norm["std"], dtype=np.float32)

    @classmethod
    def load(cls, package_dir: str | Path, device: str = "auto", half: bool = False,
             refine_masks: bool = True, flip_average: bool = True) -> "Detector":
        return cls(load_package(package_dir), device=device, half=half, refine_masks=refine_masks,
                   flip_average=flip_average)

    @property
    def family(self) -> str:
        return self.package.meta["family"]

    @property
    def name(self) -> str:
        return self.package.path.name

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Station images -> (N, 3, H, W) float32 normalised tensor (channels-last memory) on the detector's device."""
        height, width = self.input_size
        batch = np.empty((len(images), height, width, 3), dtype=np.float32)
        for index, image in enumerate(images):
            batch[index] = (resize_rgb_float(image, (height, width)) - self._mean) / self._std
        # (N, H, W, 3) memory seen as (N, 3, H, W): already channels-last, so no copy
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        tensor = tensor.to(self.device)
        return tensor.half() if self.half else tensor

    @torch.inference_mode()
    def infer(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs at the network's input size: scores (N,) and maps (N, H, W), float32 numpy."""
        if len(images) == 0:
            return np.zeros(0, np.float32), np.zeros((0, *self.input_size), np.float32)
        step = len(images) if self.device.type != "cpu" else max(1, CPU_NETWORK_BATCH // len(self.flips))
        outputs = [self.network(self.preprocess(images[start:start + step])) for start in range(0, len(images), step)]
        maps, scores = (torch.cat(part) for part in zip(*outputs))
        return (scores.float().cpu().numpy().reshape(-1),
                maps.float().cpu().numpy().reshape(len(images), *self.input_size))

    def predict(self, images: Sequence[np.ndarray]) -> list[Result]:
        return self.postprocess(images, *self.infer(images))

    def postprocess(self, images: Sequence[np.ndarray], scores: np.ndarray, maps: np.ndarray) -> list[Result]:
        """Results from infer()'s scores (N,) and maps (N, H, W) for the same images: the map back at each image's
        size, the mask, the verdict."""
        results = []
        for image, score, small_map in zip(images, scores, maps):
            full_map = map_at_size(small_map, image.shape[:2])
            score = float(np.clip(score, 0.0, 1.0))
            verdict = self.thresholds.verdict(score)
            results.append(Result(score=score, anomaly_map=full_map.astype(np.float32, copy=False),
                                  mask=self._mask(image, small_map, full_map, verdict), verdict=verdict))
        return results

    def _mask(self, image: np.ndarray, small_map: np.ndarray, full_map: np.ndarray, verdict: Verdict) -> np.ndarray:
        """The defect mask (H, W) bool at the image's size: the thresholded map, refined where the package says so
        and the map found something (a map below the threshold at the input size stays below it when resized).

        The refinement may erase a finding altogether (on mtd/test it cleared most false alarms on good images,
        and the faint maps of some small defects). Where the verdict is NG the raw mask is kept instead: an NG
        part is shown with where the map found the defect, not with an empty mask."""
        threshold = self.thresholds.pixel
        raw = full_map >= threshold
        if self.mask_refinement is None or not (small_map >= threshold).any():
            return raw
        refined = refined_mask(self.mask_refinement, image, small_map, threshold, full_map)
        return raw if verdict is Verdict.NG and not refined.any() else refined

    def timed_predict(self, images: Sequence[np.ndarray]) -> tuple[list[Result], float]:
        """predict() and its wall time in milliseconds (synchronised on GPU)."""
        start = time.perf_counter()
        results = self.predict(images)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return results, (time.perf_counter() - start) * 1000.0
