"""The model package: one directory with ``weights.safetensors`` and ``model.json``. Never pickle.

model.json keys (all required unless marked optional):
    format_version   int, this module's FORMAT_VERSION or older
    family           registered family name (core.models.registry)
    backbone         backbone name, e.g. "efficientnet_lite0"
    config           dict, family-specific hyper-parameters needed to rebuild the network
    input_size       [H, W] the network's input size
    normalisation    {"mean": [3 floats], "std": [3 floats]}
    thresholds       {"ok", "ng", "pixel"}
    dataset          {"path": str, "hash": str} the training data (optional "supervision")
    evaluation       dict of figures (may be empty): flat {"image_auroc": ...} as a retrain records them on its
                     own test images, and/or one {"<dataset>/<split>": {figures, "dataset_path"}} per
                     `inspector evaluate`; package_figures() reads either
    software         {"inspector": str, "torch": str}
    created          ISO-8601 time
    mask_refinement  optional: the dense-CRF settings that refine masks and the resolution they run at
                     (core.inference.mask_refinement; no "resolution": "input"); absent or null: masks are the
                     thresholded map
    test_time_flips  optional: the views the network's outputs are averaged over at inference, e.g. ["none", "h"]
                     (core.inference.flip_average); absent: the image alone
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from core.data.flips import check_flips
from core.inference.mask_refinement import MaskRefinement
from core.inference.result import Thresholds
from core.models.backbones import BackboneError
from core.models.registry import build_network
from core.version import __version__

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"
_REQUIRED_KEYS = ("format_version", "family", "backbone", "config", "input_size", "normalisation",
                  "thresholds", "dataset", "evaluation", "software", "created")


class PackageError(ValueError):
    """A model package is missing, malformed or incompatible; the message names the problem."""


@dataclass
class LoadedPackage:
    """A validated package: its metadata and the network with its weights loaded (eval mode, CPU)."""

    path: Path
    meta: dict
    network: nn.Module

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds.from_dict(self.meta["thresholds"])

    @property
    def mask_refinement(self) -> MaskRefinement | None:
        data = self.meta.get("mask_refinement")
        return None if data is None else MaskRefinement.from_dict(data)

    @property
    def test_time_flips(self) -> tuple[str, ...]:
        """The views averaged at inference; ("none",) (the image alone) for packages that name none."""
        return tuple(self.meta.get("test_time_flips") or ("none",))

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = self.meta["input_size"]
        return int(height), int(width)


def new_meta(*, family: str, backbone: str, config: dict, input_size: tuple[int, int],
             normalisation: dict, thresholds: Thresholds, dataset: dict,
             evaluation: dict | None = None) -> dict:
    """A complete model.json dictionary for a freshly trained network."""
    return {
        "format_version": FORMAT_VERSION,
        "family": family,
        "backbone": backbone,
        "config": config,
        "input_size": [int(input_size[0]), int(input_size[1])],
        "normalisation": normalisation,
        "thresholds": thresholds.to_dict(),
        "dataset": dataset,
        "evaluation": evaluation or {},
        "software": {"inspector": __version__, "torch": torch.__version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


FIGURE_KEYS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro", "miou", "iou")


def package_figures(meta: dict) -> dict:
    """The evaluation figures to show for a package ({key: number or None}, keys of FIGURE_KEYS that it has).

    Flat figures (a retrain's, on its own test images) come first; otherwise the `inspector evaluate` entry on
    the dataset the package was trained on, or else the latest entry recorded."""
    evaluation = meta.get("evaluation") or {}
    if not isinstance(evaluation, dict):
        return {}
    flat = {key: evaluation[key] for key in FIGURE_KEYS if key in evaluation}
    if flat:
        return flat
    entries = [entry for entry in evaluation.values() if isinstance(entry, dict)]
    if not entries:
        return {}
    trained_on = str((meta.get("dataset") or {}).get("path", ""))
    chosen = next((entry for entry in reversed(entries) if str(entry.get("dataset_path", "")) == trained_on),
                  entries[-1])
    return {key: chosen[key] for key in FIGURE_KEYS if key in chosen}


def save_package(out_dir: str | Path, network: nn.Module, meta: dict) -> Path:
    """Write ``network``'s state and ``meta`` as a package; validates ``meta`` first. Returns the directory."""
    out = Path(out_dir)
    _validate_meta(meta, source=str(out / META_FILE))
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    # Write beside and rename, so a crash never leaves a half-written package that looks complete.
    tmp_weights = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"family": meta["family"]})
    tmp_weights.replace(out / WEIGHTS_FILE)
    write_meta(out, meta)
    return out


def write_meta(package_dir: str | Path, meta: dict) -> None:
    """Rewrite model.json (e.g. after evaluation or threshold calibration), atomically."""
    _validate_meta(meta, source=str(Path(package_dir) / META_FILE))
    path = Path(package_dir) / META_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path)


def read_meta(package_dir: str | Path) -> dict:
    """Read and validate model.json alone (no weights)."""
    path = Path(package_dir)
    if not path.is_dir():
        raise PackageError(f"model package {path} does not exist or is not a directory")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise PackageError(f"model package {path} has no {META_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{meta_path} is not valid JSON: {exc}") from exc
    _validate_meta(meta, source=str(meta_path))
    return meta


def load_package(package_dir: str | Path) -> LoadedPackage:
    """Load and fully validate a package; raises PackageError naming what is wrong."""
    path = Path(package_dir)
    meta = read_meta(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise PackageError(f"model package {path} has no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise PackageError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    try:
        network = build_network(meta)
    except (KeyError, TypeError, ValueError, BackboneError) as exc:
        raise PackageError(f"{path / META_FILE}: cannot build a {meta['family']!r} network from its config: {exc}") from exc
    _check_state(network, tensors, weights_path)
    network.load_state_dict(tensors, strict=True)
    network.eval()
    return LoadedPackage(path=path, meta=meta, network=network)


def _check_state(network: nn.Module, tensors: dict[str, torch.Tensor], weights_path: Path) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise PackageError(f"{weights_path} lacks {len(missing)} tensors the network needs, e.g. {missing[:3]}")
    if unexpected:
        raise PackageError(f"{weights_path} has {len(unexpected)} tensors the network does not know, e.g. {unexpected[:3]}")
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise PackageError(f"{weights_path}: tensor {key!r} has shape {tuple(got.shape)}, "
                               f"the network expects {tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise PackageError(f"{weights_path}: tensor {key!r} holds NaN or infinite values")


def _validate_meta(meta: object, *, source: str) -> None:
    if not isinstance(meta, dict):
        raise PackageError(f"{source}: expected a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise PackageError(f"{source}: missing keys {missing}")
    version = meta["format_version"]
    if not isinstance(version, int) or version < 1:
        raise PackageError(f"{source}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise PackageError(f"{source}: format_version {version} is newer than this software reads "
                           f"({FORMAT_VERSION}); update the station software")
    from core.models.registry import known_families

    if meta["family"] not in known_families():
        raise PackageError(f"{source}: unknown model family {meta['family']!r}; known: {', '.join(known_families())}")
    size = meta["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 16 <= v <= 4096 for v in size)):
        raise PackageError(f"{source}: input_size must be [H, W] integers in 16..4096, got {size!r}")
    norm = meta["normalisation"]
    if not (isinstance(norm, dict) and all(
            isinstance(norm.get(k), list) and len(norm[k]) == 3 and all(isinstance(v, (int, float)) for v in norm[k])
            for k in ("mean", "std")) and all(v > 0 for v in norm["std"])):
        raise PackageError(f"{source}: normalisation must be {{'mean': [3 numbers], 'std': [3 positive numbers]}}")
    if not isinstance(meta["config"], dict):
        raise PackageError(f"{source}: config must be an object")
    try:
        Thresholds.from_dict(meta["thresholds"] if isinstance(meta["thresholds"], dict) else {})
    except ValueError as exc:
        raise PackageError(f"{source}: bad thresholds: {exc}") from exc
    if meta.get("mask_refinement") is not None:
        try:
            MaskRefinement.from_dict(meta["mask_refinement"])
        except (TypeError, ValueError) as exc:
            raise PackageError(f"{source}: bad mask_refinement: {exc}") from exc
        if not 0.0 < meta["thresholds"]["pixel"] < 1.0:  # the refinement reads the map as a probability
            raise PackageError(f"{source}: a mask_refinement needs a pixel threshold in (0, 1), "
                               f"got {meta['thresholds']['pixel']}")
    if meta.get("test_time_flips") is not None:
        try:
            check_flips(meta["test_time_flips"], what="test_time_flips")
        except ValueError as exc:
            raise PackageError(f"{source}: bad {exc}") from exc
