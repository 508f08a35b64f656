"""Make two held-out halves of a dataset's train split: halfA trains on one half of each class and tests on the
other, halfB the other way round.

Usage:
    .venv/bin/python benchmarks/make_heldout_halves.py SOURCE OUT [--seed 0]

For design-time checks on training images that a package never fitted, without touching SOURCE's test split:
train a package on OUT/halfA and measure it on OUT/halfA's test split (the other half), then the same with halfB.
Every file is a symbolic link to SOURCE/train (nothing is copied); the class of an image is its file-name prefix
before the first "_" (mtd: blowhole, break, crack, fray, uneven, free); each class is halved at random with
``--seed``. How weak SuperSimpleNet's map source was chosen (benchmarks/weak_map_sources.py, docs/results.md).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from core.data.dataset import open_dataset


def halves(paths: list[Path], rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    """``paths`` split into two halves per class (class: file-name prefix before the first "_")."""
    by_class: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(paths):
        by_class[path.stem.split("_")[0]].append(path)
    first, second = [], []
    for _, members in sorted(by_class.items()):
        order = rng.permutation(len(members))
        first += [members[i] for i in order[:len(members) // 2]]
        second += [members[i] for i in order[len(members) // 2:]]
    return first, second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    train = open_dataset(args.source).split("train")
    rng = np.random.default_rng(args.seed)
    by_label = {label: halves([s.image_path for s in train if s.label == label], rng) for label in (0, 1)}
    masks = {s.image_path: s.mask_path for s in train if s.mask_path is not None}
    for name, (fit, held_out) in (("halfA", (0, 1)), ("halfB", (1, 0))):
        for split, which in (("train", fit), ("test", held_out)):
            for label, folder in ((0, "good"), (1, "defect")):
                for image in by_label[label][which]:
                    _link(image, args.out / name / split / folder / image.name)
                    if image in masks:
                        _link(masks[image], args.out / name / split / "masks" / (image.stem + masks[image].suffix))
        counts = {split: open_dataset(args.out / name).counts(split) for split in ("train", "test")}
        print(f"{name}: {counts}")
    return 0


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(target).resolve())


if __name__ == "__main__":
    sys.exit(main())
