"""Reading datasets: the station layout, MVTec AD and KolektorSDD2, into one in-memory description.

Station layout (../shared/datasets/README.md):
    <root>/{train,test}/good/*.png|jpg...   <root>/{train,test}/defect/*   <root>/{train,test}/masks/<stem>.png
MVTec AD:
    <root>/train/good/*   <root>/test/<type>/*   <root>/ground_truth/<type>/<stem>_mask.png
KolektorSDD2:
    <root>/{train,test}/<id>.png  with  <root>/{train,test}/<id>_GT.png  (an all-zero GT = good image)

Every reader only lists files; ``check_dataset`` opens each image and mask once so that a bad file
fails before training starts, with a message naming it.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from core.data.images import IMAGE_SUFFIXES, ImageError, read_image, read_mask

Split = Literal["train", "test"]


class DatasetError(ValueError):
    """A dataset folder cannot be used; the message names the folder or file and the reason."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset. label: 0 good (OK), 1 defect (NG).

    mask_path: the defect mask; None for an unsegmented defect image and for good images without a mask
    file (a good image may have one, e.g. KolektorSDD2's all-zero GT, which reads as all background).
    """

    image_path: Path
    label: int
    mask_path: Path | None = None
    defect_type: str = ""

    @property
    def is_segmented(self) -> bool:
        return self.mask_path is not None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(image, mask): mask is bool (H, W); all False for good images; None for unsegmented defects."""
        image = read_image(self.image_path)
        if self.mask_path is not None:
            return image, read_mask(self.mask_path, image.shape[:2])
        if self.label == 0:
            return image, np.zeros(image.shape[:2], dtype=bool)
        return image, None


def load_samples(samples: Sequence[Sample]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(image, mask) per sample, as Sample.load gives them; a file that cannot be read becomes a DatasetError
    naming it (so a caller reports the dataset, not an image decoder)."""
    loaded = []
    for sample in samples:
        try:
            loaded.append(sample.load())
        except ImageError as exc:
            raise DatasetError(str(exc)) from exc
    return loaded


@dataclass
class Dataset:
    root: Path
    layout: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    def split(self, name: Split) -> list[Sample]:
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {name!r}")
        return self.train if name == "train" else self.test

    def counts(self, name: Split) -> dict[str, int]:
        samples = self.split(name)
        return {"good": sum(s.label == 0 for s in samples), "defect": sum(s.label == 1 for s in samples),
                "segmented": sum(s.label == 1 and s.is_segmented for s in samples)}

    @property
    def resolved_path(self) -> str:
        """The dataset's absolute path, as packages and reports record it (so a relative path given once and an
        absolute one given later name the same dataset)."""
        return str(Path(self.root).resolve())

    def package_record(self, supervision: str) -> dict:
        """model.json's ``dataset`` entry for a model trained on this dataset: path, content hash, supervision."""
        return {"path": self.resolved_path, "hash": self.content_hash(), "supervision": supervision}

    def content_hash(self) -> str:
        """sha256 over every file's relative path, label and bytes: identifies exactly what was trained on."""
        digest = hashlib.sha256()
        for sample in sorted(self.train + self.test, key=lambda s: str(s.image_path)):
            for path in (sample.image_path, sample.mask_path):
                if path is None:
                    continue
                digest.update(str(path.relative_to(self.root)).encode())
                digest.update(str(sample.label).encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


def open_dataset(root: str | Path, *, require_test: bool = True) -> Dataset:
    """Detect the layout of ``root`` and list its samples; raises DatasetError naming what is wrong.

    Only file names are read here (plus KolektorSDD2's ground-truth masks, which carry the labels);
    ``check_dataset`` opens every file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if (root / "ground_truth").is_dir():
        dataset = _read_mvtec(root)
    elif (root / "train" / "good").is_dir() or (root / "train" / "defect").is_dir():
        dataset = _read_station(root)
    elif (root / "train").is_dir() and any(p.stem.endswith("_GT") for p in (root / "train").iterdir()):
        dataset = _read_ksdd2(root)
    else:
        raise DatasetError(f"{root}: not a dataset: expected train/good and train/defect (station layout), "
                           "ground_truth/ (MVTec AD) or train/<id>_GT.png (KolektorSDD2)")
    if not dataset.train:
        raise DatasetError(f"{root / 'train'}: the train split holds no images "
                           f"(image files end in {', '.join(IMAGE_SUFFIXES)})")
    if require_test:
        if not (root / "test").is_dir():
            raise DatasetError(f"{root}: the test split is missing (no {root / 'test'} folder)")
        if not dataset.test:
            raise DatasetError(f"{root / 'test'}: the test split holds no images "
                               f"(image files end in {', '.join(IMAGE_SUFFIXES)})")
    return dataset


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; [] when the folder does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def validate(dataset: Dataset, splits: tuple[str, ...] = ("train", "test"),
             progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Open every image and mask of ``splits`` once; one line per problem ([] when all are usable).

    Checks: each file decodes (not truncated/corrupt), has 1, 3 or 4 channels, 8/16-bit pixels, at
    least 8x8 pixels, and each mask has its image's size. ``progress(done, total)`` is called as it goes.
    """
    samples = [s for name in splits for s in dataset.split(name)]  # type: ignore[arg-type]
    problems: list[str] = []
    # Decoding releases the GIL, so a few threads overlap file reads and JPEG decoding.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for done, problem in enumerate(pool.map(_check_sample, samples), start=1):
            if problem:
                problems.append(problem)
            if progress is not None:
                progress(done, len(samples))
    return problems


def check_dataset(dataset: Dataset, splits: tuple[str, ...] = ("train", "test"), *, max_listed: int = 20,
                  progress: Callable[[int, int], None] | None = None) -> None:
    """``validate`` and raise one DatasetError listing the problems (the first ``max_listed``), if any."""
    problems = validate(dataset, splits, progress)
    if problems:
        more = f"\n  ... and {len(problems) - max_listed} more" if len(problems) > max_listed else ""
        raise DatasetError(f"{dataset.root}: {len(problems)} unusable file(s):\n  "
                           + "\n  ".join(problems[:max_listed]) + more)


def _check_sample(sample: Sample) -> str:
    try:
        sample.load()
    except ImageError as exc:
        return str(exc)
    return ""


def _unique_stems(paths: list[Path], folder: Path) -> dict[str, Path]:
    """{stem: path}; two files with one stem (a.png and a.jpg) make the image-mask pairing ambiguous."""
    by_stem: dict[str, Path] = {}
    for path in paths:
        if path.stem in by_stem:
            raise DatasetError(f"{folder}: {by_stem[path.stem].name} and {path.name} share the name "
                               f"{path.stem!r}; masks are matched by name, so rename one")
        by_stem[path.stem] = path
    return by_stem


def _read_station(root: Path) -> Dataset:
    dataset = Dataset(root=root, layout="station")
    for split in ("train", "test"):
        base = root / split
        if not base.is_dir():
            continue
        masks = _unique_stems(list_images(base / "masks"), base / "masks")
        good = [Sample(p, 0) for p in list_images(base / "good")]
        defect_paths = list(_unique_stems(list_images(base / "defect"), base / "defect").values())
        defect = [Sample(p, 1, masks.get(p.stem), p.stem.split("_")[0]) for p in defect_paths]
        orphan = set(masks) - {p.stem for p in defect_paths}
        if orphan:
            raise DatasetError(f"{base / 'masks'}: {len(orphan)} mask(s) without a defect image of the same "
                               f"name in {base / 'defect'}, e.g. {sorted(orphan)[:5]}")
        if not good and not defect:
            present = [base / sub for sub in ("good", "defect") if (base / sub).is_dir()]
            where = " and ".join(str(p) for p in present) if present else f"{base} (no good/ or defect/ folder)"
            raise DatasetError(f"{where}: no images in the {split} split")
        dataset.split(split).extend(good + defect)  # type: ignore[arg-type]
    return dataset


def _read_mvtec(root: Path) -> Dataset:
    dataset = Dataset(root=root, layout="mvtec")
    if not (root / "train" / "good").is_dir():
        raise DatasetError(f"{root}: MVTec AD layout (ground_truth/ exists) but {root / 'train' / 'good'} is missing")
    dataset.train.extend(Sample(p, 0) for p in list_images(root / "train" / "good"))
    test_dir = root / "test"
    for type_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()) if test_dir.is_dir() else []:
        for path in list_images(type_dir):
            if type_dir.name == "good":
                dataset.test.append(Sample(path, 0))
                continue
            mask = root / "ground_truth" / type_dir.name / f"{path.stem}_mask.png"
            dataset.test.append(Sample(path, 1, mask if mask.is_file() else None, type_dir.name))
    return dataset


def _read_ksdd2(root: Path) -> Dataset:
    dataset = Dataset(root=root, layout="ksdd2")
    for split in ("train", "test"):
        for path in list_images(root / split):
            if path.stem.endswith("_GT"):
                continue
            gt = path.with_name(f"{path.stem}_GT.png")
            if not gt.is_file():
                raise DatasetError(f"{path}: KolektorSDD2 image without its {gt.name}")
            try:
                defective = bool(read_mask(gt).any())
            except ImageError as exc:
                raise DatasetError(str(exc)) from exc
            # good images keep their (empty) GT too, so check_dataset verifies its size like any mask
            dataset.split(split).append(Sample(path, int(defective), gt))  # type: ignore[arg-type]
    return dataset
