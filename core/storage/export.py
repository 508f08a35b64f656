"""Export of the operators' tags as a dataset in the station layout, so that "retrain" is "export, then train".

Layout written (../shared/datasets/README.md):
    <out>/{train,test}/good/ok_<id>.png      inspections whose latest tag is OK
    <out>/{train,test}/defect/ng_<id>.png    inspections whose latest tag is NG
    <out>/{train,test}/masks/ng_<id>.png     the mask drawn with that NG tag, where there is one
    <out>/export.json                        which inspection went where, with the seed and counts

The split is per class and deterministic: inspections are ordered by sha256(seed, id) and the first
round(n * test_fraction) go to test (at least one when a class has two or more, never all of them).
Ordering by a hash of the id, not by position, keeps an inspection's split stable as more tags arrive.
The folder is built under a temporary name and renamed into place, so a half-written export never
looks complete.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from core.storage.errors import StorageError
from core.storage.views import now_utc

if TYPE_CHECKING:  # pragma: no cover
    from core.storage.db import StationDB

_CLASS_DIR = {"OK": "good", "NG": "defect"}


def split_ids(ids: list[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train ids, test ids) for one class; deterministic in (ids, test_fraction, seed)."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    n_test = round(len(ranked) * test_fraction)
    if test_fraction > 0 and len(ranked) >= 2:
        n_test = min(max(n_test, 1), len(ranked) - 1)
    test = sorted(ranked[:n_test])
    train = sorted(ranked[n_test:])
    return train, test


def export_tagged(db: "StationDB", out_dir: str | Path, *, test_fraction: float = 0.2,
                  seed: int = 0) -> dict[str, int]:
    """Write every tagged inspection that has a stored image into ``out_dir`` (which must not exist or be
    empty). Returns counts: train_good, train_defect, test_good, test_defect, masks, skipped_no_image."""
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StorageError(f"export folder {out} already exists and is not empty")
    tagged = db.tagged_for_export()
    skipped = sum(1 for row in tagged if row[2] is None)
    usable = {row[0]: row for row in tagged if row[2] is not None}
    if not usable:
        raise StorageError("nothing to export: no tagged inspection has a stored image")

    counts = {"train_good": 0, "train_defect": 0, "test_good": 0, "test_defect": 0, "masks": 0,
              "skipped_no_image": skipped}
    items = []
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for label, class_dir in _CLASS_DIR.items():
            ids = [i for i, row in usable.items() if row[1] == label]
            train, test = split_ids(ids, float(test_fraction), int(seed))
            for split, split_ids_ in (("train", train), ("test", test)):
                for inspection_id in split_ids_:
                    _, _, image_path, sha256, mask_path = usable[inspection_id]
                    stem = f"{label.lower()}_{inspection_id:08d}"
                    target = staging / split / class_dir / f"{stem}.png"
                    _copy_checked(db, image_path, sha256, target, inspection_id)
                    counts[f"{split}_{class_dir}"] += 1
                    item = {"inspection_id": inspection_id, "label": label, "split": split,
                            "image": target.relative_to(staging).as_posix(), "mask": None}
                    if label == "NG" and mask_path is not None:
                        mask_target = staging / split / "masks" / f"{stem}.png"
                        _copy_checked(db, mask_path, None, mask_target, inspection_id)
                        counts["masks"] += 1
                        item["mask"] = mask_target.relative_to(staging).as_posix()
                    items.append(item)
        manifest = {"created": now_utc().isoformat(timespec="seconds"), "source": db.url, "seed": int(seed),
                    "test_fraction": float(test_fraction), "counts": counts, "items": items}
        (staging / "export.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def _copy_checked(db: "StationDB", relative: str, sha256: str | None, target: Path, inspection_id: int) -> None:
    source = db.images.path(relative)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise StorageError(f"inspection {inspection_id}: cannot read stored file {source}: {exc}") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise StorageError(f"inspection {inspection_id}: {source} does not match its recorded sha256")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
