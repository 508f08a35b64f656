"""Mask refinement: a dense CRF (Krähenbühl & Koltun 2011, via pydensecrf) that snaps a thresholded defect map
to the edges of the image, and the choice of whether and how to use it, made on images with known masks.

Why: the maps of both families are coarse (SuperSimpleNet's is a 32x32 grid upsampled and smoothed), so a
thresholded map draws a blob where a crack or a blowhole has a sharp outline. On mtd/test the full-supervision
packages went from mIoU 0.332 ± 0.002 to 0.399 ± 0.005 (3 seeds) with the refinement (docs/results.md, "Mask
refinement"). The map itself (pixel AP, the heat overlay) is left as the network made it; only the mask changes.

Where: at the network's input size (``resolution`` "input": the image squashed to the grid the map was made on,
the posterior resized back) or at the image's own size (``resolution`` "image": the map resized up first, the
spatial kernels and the margin widened by how many image pixels one input pixel spans, so the CRF has about the
same reach on the part but sees the image's own edges, not a squashed copy's). On mtd/test, a full package's
chosen setting at "image" raised its mIoU from 0.466 to 0.476 (docs/results.md).

Cost: the CRF runs only inside the box around the raw mask (plus ``margin``) and not at all where the raw mask
is empty, so an image without a finding costs nothing extra. A box larger than ``work_pixels`` is downscaled for
the CRF (its spatial kernels with it), which bounds the cost: on 2 CPU cores a 256x256 box took 60-80 ms, a
128x128 one 15-18 ms. The boxes that need the fine outline (blowholes, cracks) are small and keep full resolution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Sequence

import cv2
import numpy as np

from core.data.images import resize_rgb_float, to_rgb_float

_CLIP = 1e-4


def dense_crf(image: np.ndarray, prob: np.ndarray, *, iterations: int = 5, gauss_sxy: float = 3.0,
              gauss_compat: float = 3.0, bilateral_sxy: float = 20.0, bilateral_srgb: float = 10.0,
              bilateral_compat: float = 6.0, clip: float = _CLIP) -> np.ndarray:
    """image (H, W, 3) uint8 RGB, prob (H, W) defect probability -> CRF posterior of defect (H, W) float32.

    Unary: -log of (1 - prob, prob). Pairwise: a Gaussian smoothness kernel and a bilateral
    (position + colour) kernel, so labels spread along similar pixels and stop at edges."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width = prob.shape
    p = np.clip(prob.astype(np.float32), clip, 1.0 - clip)
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1.0 - p, p]))))
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image),
                             compat=bilateral_compat)
    q = np.asarray(crf.inference(iterations), dtype=np.float32).reshape(2, height, width)
    return q[1]


def centred_probability(amap: np.ndarray, threshold: float, *, clip: float = _CLIP,
                        dtype: type = np.float32) -> np.ndarray:
    """Map (..., H, W) in [0, 1] -> the same shape in ``dtype``, in (0, 1), with the pixel threshold moved to 0.5 (a
    shift in logit space), so the CRF's defect/background balance is the one the threshold was calibrated for.
    Values are clipped to [clip, 1 - clip] first; a clip far below 1e-4 needs float64 to stay below 1."""
    def logit(value):
        value = np.clip(value, clip, 1.0 - clip)
        return np.log(value / (1.0 - value))

    return (1.0 / (1.0 + np.exp(-(logit(amap.astype(dtype)) - logit(dtype(threshold)))))).astype(dtype)


RESOLUTIONS = ("input", "image")  # where the CRF runs: at the network's input size, or at the image's own size


@dataclass(frozen=True)
class MaskRefinement:
    """Dense-CRF settings (pixels at the network's input size) and the margin the mask may grow into, and the
    ``resolution`` the CRF runs at (one of RESOLUTIONS; see the module's docstring)."""

    iterations: int = 5
    gauss_sxy: float = 1.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 10.0
    bilateral_srgb: float = 12.0
    bilateral_compat: float = 10.0
    margin: int = 24
    work_pixels: int = 128 * 128
    resolution: str = "input"

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"mask refinement resolution must be one of {list(RESOLUTIONS)}, got {self.resolution!r}")
        for item in fields(self):
            if item.name == "resolution":
                continue
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"mask refinement {item.name!r} must be a number, got {value!r}")
        if not (isinstance(self.iterations, int) and 1 <= self.iterations <= 50):
            raise ValueError(f"mask refinement iterations must be a whole number in 1..50, got {self.iterations!r}")
        if not (isinstance(self.margin, int) and 0 <= self.margin <= 512):
            raise ValueError(f"mask refinement margin must be a whole number of pixels in 0..512, got {self.margin!r}")
        if not (isinstance(self.work_pixels, int) and 1024 <= self.work_pixels <= 4096 * 4096):
            raise ValueError("mask refinement work_pixels must be a whole number in 1024..16777216, "
                             f"got {self.work_pixels!r}")
        for name in ("gauss_sxy", "bilateral_sxy", "bilateral_srgb"):
            if not 0 < getattr(self, name) <= 1000:
                raise ValueError(f"mask refinement {name} must be in (0, 1000], got {getattr(self, name)!r}")
        for name in ("gauss_compat", "bilateral_compat"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"mask refinement {name} must be in [0, 100], got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> "MaskRefinement":
        """From model.json's ``mask_refinement``; ValueError naming the problem for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"mask refinement must be an object, got {type(data).__name__}")
        unknown = set(data) - {item.name for item in fields(cls)}
        if unknown:
            raise ValueError(f"mask refinement has unknown keys {sorted(unknown)}")
        return cls(**data)

    def posterior(self, image: np.ndarray, amap: np.ndarray, threshold: float, stretch: float = 1.0) -> np.ndarray:
        """image (H, W, 3) uint8 RGB and its map (H, W) in [0, 1] at the same size -> defect posterior (H, W)
        float32; a pixel is defect where it is >= 0.5. Zero where the map stays below ``threshold`` everywhere,
        and outside the box around the raw mask widened by ``margin``. ``stretch``: how many of these pixels one
        pixel at the input size spans (per axis, on average); the spatial kernels and the margin widen by it."""
        raw = amap >= threshold
        out = np.zeros(amap.shape, np.float32)
        if not raw.any():
            return out
        margin = int(round(self.margin * stretch))
        rows, cols = np.flatnonzero(raw.any(axis=1)), np.flatnonzero(raw.any(axis=0))
        top, bottom = max(0, rows[0] - margin), min(amap.shape[0], rows[-1] + 1 + margin)
        left, right = max(0, cols[0] - margin), min(amap.shape[1], cols[-1] + 1 + margin)
        out[top:bottom, left:right] = self._crf_in_box(np.ascontiguousarray(image[top:bottom, left:right]),
                                                       centred_probability(amap[top:bottom, left:right], threshold),
                                                       stretch)
        return out

    def _crf_in_box(self, image: np.ndarray, prob: np.ndarray, stretch: float) -> np.ndarray:
        """image (h, w, 3) uint8 and prob (h, w) of one box -> posterior (h, w) float32, computed on at most
        ``work_pixels`` pixels (the box downscaled, its spatial kernel widths with it) and resized back."""
        height, width = prob.shape
        scale = min(1.0, float(np.sqrt(self.work_pixels / (height * width))))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 order: (w, h)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            prob = cv2.resize(prob, size, interpolation=cv2.INTER_AREA)
        reach = scale * stretch  # kernel widths are in input-size pixels
        posterior = dense_crf(image, prob, iterations=self.iterations, gauss_sxy=self.gauss_sxy * reach,
                              gauss_compat=self.gauss_compat, bilateral_sxy=self.bilateral_sxy * reach,
                              bilateral_srgb=self.bilateral_srgb, bilateral_compat=self.bilateral_compat)
        if scale < 1.0:
            posterior = cv2.resize(posterior, (width, height), interpolation=cv2.INTER_LINEAR)
        return posterior


# What a trainer tries on its out-of-fold maps: three settings, each at both resolutions. The first setting is the
# best of a 54-setting grid on the maps of 120 of mtd's training defect images (full supervision, seed 2, at the input
# size; docs/results.md, "Mask refinement"), the second the CAM pipeline's pseudo-mask CRF, the third a weaker
# bilateral pull.
_SETTINGS: tuple[MaskRefinement, ...] = (
    MaskRefinement(),
    MaskRefinement(gauss_sxy=3.0, bilateral_sxy=20.0, bilateral_srgb=10.0, bilateral_compat=6.0),
    MaskRefinement(bilateral_srgb=6.0, bilateral_compat=6.0),
)
CANDIDATES: tuple[MaskRefinement, ...] = tuple(replace(setting, resolution=resolution)
                                               for resolution in RESOLUTIONS for setting in _SETTINGS)
MIN_GAIN = 0.01  # mIoU a candidate must add over the raw masks to be used: less is within the noise
# What a trainer ships when it has no training masks to choose on (the cam family, SuperSimpleNet's weak regime): the
# pseudo-mask CRF's settings, the best candidate on average over 3 seeds of each on mtd/train's masks, which neither
# trainer reads (mIoU cam 0.209 -> 0.256, weak 0.057 -> 0.129; docs/results.md, "Masks snapped to edges at inference").
WITHOUT_MASKS = _SETTINGS[1]


def fixed_choice_record() -> dict:
    """calibration.mask_refinement of a package whose refinement is the fixed one (no masks were there to choose on)."""
    return {"images": 0, "chosen": "fixed",
            "note": "no training masks to choose on: the fixed setting chosen on mtd/train's masks"}


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] (core.data.images.resize_rgb_float) -> (H, W, 3) uint8."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def mean_iou(masks: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Mean over images of the IoU of bool masks (H, W) with their truths (1.0 where both are empty)."""
    from core.metrics import iou

    return float(np.mean([iou(mask, truth) for mask, truth in zip(masks, truths)])) if masks else float("nan")


def choose_refinement(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                      threshold: float, candidates: Sequence[MaskRefinement] = CANDIDATES,
                      min_gain: float = MIN_GAIN) -> tuple[MaskRefinement | None, dict]:
    """Pick the refinement with the best mean IoU on defect images with known masks, or none.

    images: station images (H, W) or (H, W, 3), each its own size; maps (N, h, w) in [0, 1] at the network's input
    size; truths: bool (H, W) at each image's size. Masks are made as the Detector makes them (refined_mask) and
    compared at the image's size, as ``inspector evaluate`` does. The maps should come from networks that never
    trained on these images (out-of-fold), as the thresholds do. Returns (the chosen refinement or None when no
    candidate beats the raw masks by ``min_gain``, a record: images, raw mIoU, each candidate's mIoU, the chosen
    index into ``candidates`` or None)."""
    if not len(maps):
        return None, {"images": 0, "note": "no defect images with known masks"}
    full_maps = [map_at_size(amap, image.shape[:2]) for image, amap in zip(images, maps)]  # once, for every candidate
    raw = mean_iou([full_map >= threshold for full_map in full_maps], truths)
    scores = [mean_iou([refined_mask(refinement, image, amap, threshold, full_map)
                        for image, amap, full_map in zip(images, maps, full_maps)], truths)
              for refinement in candidates]
    best = int(np.argmax(scores))
    chosen = best if scores[best] >= raw + min_gain else None
    record = {"images": len(maps), "miou_raw": round(raw, 4), "miou_candidates": [round(s, 4) for s in scores],
              "chosen": chosen}
    return (candidates[chosen] if chosen is not None else None), record


def describe(meta: dict) -> str:
    """One line for a package's model.json: whether its masks are refined, and what the trainer saw when it chose
    to (out-of-fold mIoU of the training masks, raw -> refined); '' when the package has no refinement."""
    if meta.get("mask_refinement") is None:
        return ""
    crf = "dense CRF at the image's size" if meta["mask_refinement"].get("resolution") == "image" else "dense CRF"
    record = (meta.get("calibration") or {}).get("mask_refinement") or {}
    chosen, scores = record.get("chosen"), record.get("miou_candidates") or []
    if chosen == "fixed":
        return f"masks snapped to image edges ({crf}; fixed setting: no training masks to choose one on)"
    if isinstance(chosen, int) and 0 <= chosen < len(scores) and "miou_raw" in record:
        return (f"masks snapped to image edges ({crf}; mIoU on {record.get('images')} training masks "
                f"{record['miou_raw']:.2f} → {scores[chosen]:.2f})")
    return f"masks snapped to image edges ({crf})"


def map_at_size(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float map -> a new (H, W) = ``size`` array, bilinear: the Detector's map at the image's size."""
    return cv2.resize(amap, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _colour_u8(image: np.ndarray) -> np.ndarray:
    """Station image (H, W) or (H, W, 3) -> (H, W, 3) uint8 RGB, the CRF's colour input. A uint8 image is only
    repeated to three channels (the same values as through to_rgb_float, about 10x faster at 600x300)."""
    if image.dtype != np.uint8:
        return to_uint8_rgb(to_rgb_float(image))
    return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2)) if image.ndim == 2 else image


def refined_mask(refinement: MaskRefinement, image: np.ndarray, small_map: np.ndarray, threshold: float,
                 full_map: np.ndarray | None = None) -> np.ndarray:
    """The refined mask (H, W) bool of one station image ``image`` (H, W) or (H, W, 3), from its map at the
    network's input size ``small_map`` (h, w) in [0, 1] (``full_map``: that map already resized to (H, W)).

    resolution "input": the CRF on the image resized to (h, w) and ``small_map``, its posterior resized to (H, W).
    resolution "image": the CRF on the image and the map at (H, W), kernels and margin widened by sqrt(HW / hw)."""
    size = image.shape[:2]
    if refinement.resolution == "image":
        # one isotropic stretch (the geometric mean of the two axes' ratios), so the kernels stay round on the part:
        # on mtd/test it gave full seed 0 mIoU 0.476 against 0.469 with per-axis widths (0.466 at the input size)
        stretch = float(np.sqrt(size[0] * size[1] / (small_map.shape[0] * small_map.shape[1])))
        amap = map_at_size(small_map, size) if full_map is None else full_map
        return refinement.posterior(_colour_u8(image), amap, threshold, stretch) >= 0.5
    posterior = refinement.posterior(to_uint8_rgb(resize_rgb_float(image, small_map.shape)), small_map, threshold)
    return map_at_size(posterior, size) >= 0.5
