"""Dataset reader (station, MVTec AD, KolektorSDD2 layouts), image/mask reading and bad-input errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data.dataset import DatasetError, check_dataset, list_images, load_samples, open_dataset, validate
from core.data.images import ImageError, as_station_image, read_image, read_mask
from core.data.synthetic import write_synthetic_dataset

MTD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mtd"


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def _grey(rng: np.random.Generator, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    return rng.integers(0, 256, size, dtype=np.uint8)


def _mask(size: tuple[int, int] = (24, 32)) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    mask[5:10, 6:12] = 255
    return mask


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------- layouts


def test_station_layout_from_synthetic_writer(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "ds", train_good=4, train_defect=4, test_good=2, test_defect=3,
                                   size=(32, 32), masks=0.5)
    dataset = open_dataset(root)
    assert dataset.layout == "station"
    assert dataset.counts("train") == {"good": 4, "defect": 4, "segmented": 2}
    assert dataset.counts("test") == {"good": 2, "defect": 3, "segmented": 3}
    unsegmented = next(s for s in dataset.train if s.label == 1 and not s.is_segmented)
    image, mask = unsegmented.load()
    assert image.shape == (32, 32) and image.dtype == np.uint8 and mask is None
    segmented = next(s for s in dataset.test if s.label == 1)
    _, mask = segmented.load()
    assert mask.dtype == bool and mask.any()
    good = next(s for s in dataset.test if s.label == 0)
    assert not good.load()[1].any()
    assert validate(dataset) == []
    check_dataset(dataset)
    assert len(dataset.content_hash()) == 64


def test_package_record_names_the_dataset_by_its_absolute_path_whichever_way_it_was_opened(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    root = write_synthetic_dataset(tmp_path / "ds", train_good=2, train_defect=2, test_good=1, test_defect=1,
                                   size=(32, 32))
    monkeypatch.chdir(tmp_path)
    relative, absolute = open_dataset("ds"), open_dataset(root.resolve())
    assert relative.resolved_path == absolute.resolved_path == str(root.resolve())
    record = relative.package_record("weak")
    assert record == {"path": str(root.resolve()), "hash": absolute.content_hash(), "supervision": "weak"}


def test_grey_colour_8_and_16_bit_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "ds" / "train" / "good"
    grey16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    _write(good / "grey16.png", grey16)
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[:, :, 0] = 200  # blue in OpenCV's BGR order
    _write(good / "colour8.png", bgr)
    bgr16 = (bgr.astype(np.uint16) * 257)
    _write(good / "colour16.png", bgr16)
    bgra = np.dstack([bgr, np.full((20, 30), 255, np.uint8)])
    _write(good / "alpha.png", bgra)
    _write(good / "grey8.jpg", _grey(rng, (20, 30)))
    _write(good / "grey8.bmp", _grey(rng, (20, 30)))
    _write(good / "grey8.tif", _grey(rng, (20, 30)))
    _write(tmp_path / "ds" / "test" / "good" / "t.png", _grey(rng, (20, 30)))
    dataset = open_dataset(tmp_path / "ds")
    assert len(dataset.train) == 7
    check_dataset(dataset)
    assert np.array_equal(read_image(good / "grey16.png"), grey16)  # 16 bit kept, not scaled down
    colour = read_image(good / "colour8.png")
    assert colour.shape == (20, 30, 3) and colour.dtype == np.uint8
    assert colour[0, 0].tolist() == [0, 0, 200]  # returned as RGB
    colour16 = read_image(good / "colour16.png")
    assert colour16.dtype == np.uint16 and colour16[0, 0].tolist() == [0, 0, 200 * 257]
    assert read_image(good / "alpha.png").shape == (20, 30, 3)  # alpha dropped
    assert read_image(good / "grey8.tif").ndim == 2


def test_masks_grey_colour_16_bit_and_alpha(tmp_path: Path) -> None:
    mask = _mask()
    assert np.array_equal(read_mask(_write(tmp_path / "m8.png", mask)), mask > 0)
    assert np.array_equal(read_mask(_write(tmp_path / "m16.png", mask.astype(np.uint16) * 257)), mask > 0)
    assert np.array_equal(read_mask(_write(tmp_path / "mc.png", np.dstack([mask] * 3))), mask > 0)
    # opaque everywhere: alpha alone must not make the whole image a defect
    opaque = np.dstack([mask, mask, mask, np.full_like(mask, 255)])
    assert np.array_equal(read_mask(_write(tmp_path / "mo.png", opaque)), mask > 0)
    # painted overlay: white everywhere, defect where not transparent
    overlay = np.dstack([np.full_like(mask, 255)] * 3 + [mask])
    assert np.array_equal(read_mask(_write(tmp_path / "mt.png", overlay)), mask > 0)


def test_mvtec_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "bottle"
    for index in range(3):
        _write(root / "train" / "good" / f"{index:03d}.png", _grey(rng))
    _write(root / "test" / "good" / "000.png", _grey(rng))
    _write(root / "test" / "crack" / "000.png", _grey(rng))
    _write(root / "test" / "crack" / "001.png", _grey(rng))  # no mask for this one
    _write(root / "test" / "scratch" / "000.png", _grey(rng))
    _write(root / "ground_truth" / "crack" / "000_mask.png", _mask())
    _write(root / "ground_truth" / "scratch" / "000_mask.png", _mask())
    dataset = open_dataset(root)
    assert dataset.layout == "mvtec"
    assert dataset.counts("train") == {"good": 3, "defect": 0, "segmented": 0}
    assert dataset.counts("test") == {"good": 1, "defect": 3, "segmented": 2}
    assert sorted({s.defect_type for s in dataset.test if s.label}) == ["crack", "scratch"]
    crack0 = next(s for s in dataset.test if s.image_path.parent.name == "crack" and s.image_path.stem == "000")
    assert crack0.mask_path == root / "ground_truth" / "crack" / "000_mask.png"
    assert crack0.load()[1].sum() == 30
    check_dataset(dataset)


def test_kolektorsdd2_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    root = tmp_path / "ksdd2"
    empty = np.zeros((24, 32), np.uint8)
    for split, ids in (("train", (10000, 10001, 10002)), ("test", (20000, 20001))):
        for image_id in ids:
            _write(root / split / f"{image_id}.png", np.dstack([_grey(rng)] * 3))
            _write(root / split / f"{image_id}_GT.png", _mask() if image_id % 2 else empty)
    dataset = open_dataset(root)
    assert dataset.layout == "ksdd2"
    assert dataset.counts("train") == {"good": 2, "defect": 1, "segmented": 1}
    assert dataset.counts("test") == {"good": 1, "defect": 1, "segmented": 1}
    assert all(not s.image_path.stem.endswith("_GT") for s in dataset.train + dataset.test)
    good = next(s for s in dataset.train if s.label == 0)
    image, mask = good.load()
    assert image.shape == (24, 32, 3) and mask is not None and not mask.any()
    check_dataset(dataset)


# --------------------------------------------------------------------------- bad input


def _small_station(tmp_path: Path) -> Path:
    return write_synthetic_dataset(tmp_path / "ds", train_good=2, train_defect=2, test_good=2, test_defect=2,
                                   size=(32, 32))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_is_named(tmp_path: Path, suffix: str) -> None:
    root = _small_station(tmp_path)
    bad = _truncate(_write(root / "train" / "good" / f"half{suffix}", _grey(np.random.default_rng(3), (64, 64))))
    with pytest.raises(ImageError, match=f"{bad.name}.*truncated"):
        read_image(bad)
    dataset = open_dataset(root)  # listing does not open files
    with pytest.raises(DatasetError) as info:
        check_dataset(dataset)
    assert str(bad) in str(info.value) and "1 unusable file" in str(info.value)


def test_load_samples_gives_images_with_masks_and_names_a_bad_file(tmp_path: Path) -> None:
    root = _small_station(tmp_path)
    samples = open_dataset(root).test
    loaded = load_samples(samples)
    assert len(loaded) == len(samples)
    for sample, (image, mask) in zip(samples, loaded):
        assert image.shape[:2] == (32, 32) and mask is not None and mask.shape == (32, 32) and mask.dtype == bool
        assert mask.any() == bool(sample.label)  # good: all background; the planted defects are in their masks
    victim = samples[0].image_path
    victim.write_text("this is not an image")
    with pytest.raises(DatasetError, match=victim.name):
        load_samples(samples)


def test_corrupt_empty_and_tiny_images(tmp_path: Path) -> None:
    root = _small_station(tmp_path)
    good = root / "train" / "good"
    (good / "text.png").write_text("this is not an image")
    (good / "empty.jpg").write_bytes(b"")
    _write(good / "tiny.png", np.zeros((4, 4), np.uint8))
    problems = validate(open_dataset(root))
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert "text.png: not a readable image" in joined
    assert "empty.jpg: empty image file" in joined
    assert "tiny.png" in joined and "too small" in joined
    with pytest.raises(ImageError, match="no such image file"):
        read_image(good / "missing.png")


def test_mask_size_mismatch_is_named(tmp_path: Path) -> None:
    root = _small_station(tmp_path)
    mask_path = sorted((root / "test" / "masks").iterdir())[0]
    _write(mask_path, np.zeros((16, 40), np.uint8))
    with pytest.raises(DatasetError, match=f"{mask_path.name}: mask is 40x16 but its image is 32x32"):
        check_dataset(open_dataset(root))
    # training-only checks leave the test split alone
    check_dataset(open_dataset(root), splits=("train",))


def test_truncated_mask_is_named(tmp_path: Path) -> None:
    root = _small_station(tmp_path)
    mask_path = _truncate(sorted((root / "train" / "masks").iterdir())[0])
    with pytest.raises(DatasetError, match=f"{mask_path.name}: truncated mask file"):
        check_dataset(open_dataset(root))


def test_many_problems_are_listed_together(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "ds", train_good=25, train_defect=1, test_good=1, test_defect=1,
                                   size=(16, 16))
    for path in list_images(root / "train" / "good"):
        _truncate(path)
    with pytest.raises(DatasetError) as info:
        check_dataset(open_dataset(root), max_listed=5)
    message = str(info.value)
    assert "25 unusable file(s)" in message and "... and 20 more" in message


def test_unsupported_channels_and_pixel_types() -> None:
    with pytest.raises(ImageError, match="2 channels"):
        as_station_image(np.zeros((16, 16, 2), np.uint8), source="cam0")
    with pytest.raises(ImageError, match="cam0: unsupported pixel type int32"):
        as_station_image(np.zeros((16, 16), np.int32), source="cam0")
    assert as_station_image(np.ones((16, 16), np.float32)).dtype == np.uint8


def test_empty_folders_and_missing_test_split(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "defect").mkdir(parents=True)
    with pytest.raises(DatasetError, match="good and .*defect: no images in the train split"):
        open_dataset(root)
    _write(root / "train" / "good" / "a.png", _grey(np.random.default_rng(4)))
    with pytest.raises(DatasetError, match="test split is missing"):
        open_dataset(root)
    assert len(open_dataset(root, require_test=False).train) == 1
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "good" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no images in the test split"):
        open_dataset(root)
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not a dataset"):
        open_dataset(tmp_path / "plain")


def test_ambiguous_and_orphan_masks(tmp_path: Path) -> None:
    root = _small_station(tmp_path)
    defect = sorted((root / "train" / "defect").iterdir())[0]
    _write(defect.with_suffix(".jpg"), _grey(np.random.default_rng(5), (32, 32)))
    with pytest.raises(DatasetError, match="share the name"):
        open_dataset(root)
    defect.with_suffix(".jpg").unlink()
    _write(root / "train" / "masks" / "stray.png", _mask((32, 32)))
    with pytest.raises(DatasetError, match="mask\\(s\\) without a defect image.*stray"):
        open_dataset(root)


def test_layout_specific_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    ksdd2 = tmp_path / "ksdd2"
    _write(ksdd2 / "train" / "1.png", _grey(rng))
    _write(ksdd2 / "train" / "1_GT.png", _mask())
    _write(ksdd2 / "train" / "2.png", _grey(rng))
    with pytest.raises(DatasetError, match="2.png: KolektorSDD2 image without its 2_GT.png"):
        open_dataset(ksdd2)
    mvtec = tmp_path / "mvtec"
    (mvtec / "ground_truth").mkdir(parents=True)
    with pytest.raises(DatasetError, match="train/good is missing"):
        open_dataset(mvtec)


# --------------------------------------------------------------------------- the real dataset


@pytest.mark.skipif(not MTD.is_dir(), reason=f"shared dataset not found at {MTD}")
def test_real_mtd_dataset() -> None:
    dataset = open_dataset(MTD)
    assert dataset.layout == "station"
    assert dataset.counts("train") == {"good": 666, "defect": 273, "segmented": 273}
    assert dataset.counts("test") == {"good": 286, "defect": 115, "segmented": 115}
    assert {s.defect_type for s in dataset.train if s.label} == {"blowhole", "break", "crack", "fray", "uneven"}
    picks = [dataset.train[0], dataset.train[-1], dataset.test[0], dataset.test[-1]]
    for sample in picks:
        image, mask = sample.load()
        assert image.ndim == 2 and image.dtype == np.uint8  # greyscale JPEG
        assert mask is not None and mask.shape == image.shape
        assert mask.any() == bool(sample.label)
