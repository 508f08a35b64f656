"""Make a mixed-supervision copy of a dataset: every image linked, only every Nth training mask per class kept.

Usage:
    .venv/bin/python benchmarks/make_mixed_dataset.py SOURCE OUT [--keep-every 4]

mtd has a mask for every defect image, so the mixed regime needs a copy where most defects carry only their
image label. Images and test masks are symbolic links to SOURCE (nothing is copied); of the training masks,
the first of every `--keep-every` per class (class = file-name prefix before the first "_", files sorted by
name) is linked and the rest are left out. Prints how many training masks were kept.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path


def link_tree(source: Path, out: Path) -> None:
    """Mirror ``source`` under ``out`` with one symbolic link per file."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            target = out / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--keep-every", type=int, default=4)
    args = parser.parse_args()
    if args.keep_every < 1:
        parser.error("--keep-every must be at least 1")
    masks = args.source / "train" / "masks"
    if not masks.is_dir():
        parser.error(f"{masks} is not a folder: SOURCE must be a dataset in the station's layout with training masks")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    for part in ("train/good", "train/defect", "test"):
        if (args.source / part).is_dir():
            link_tree(args.source / part, args.out / part)
    by_class: dict[str, list[Path]] = defaultdict(list)
    for mask in sorted(masks.iterdir()):
        if mask.is_file():
            by_class[mask.name.split("_")[0]].append(mask)
    (args.out / "train" / "masks").mkdir(parents=True)
    kept = 0
    for files in by_class.values():
        for mask in files[::args.keep_every]:
            (args.out / "train" / "masks" / mask.name).symlink_to(mask.resolve())
            kept += 1
    total = sum(len(files) for files in by_class.values())
    print(f"kept {kept} of {total} training masks ({len(by_class)} classes) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
