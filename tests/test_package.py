"""Model package: save/load round trip and every kind of bad package rejected with a clear message."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.inference.detector import CPU_NETWORK_BATCH, Detector
from core.inference.flip_average import describe as describe_views
from core.inference.package import (FORMAT_VERSION, PackageError, load_package, new_meta, package_figures, read_meta,
                                    save_package)
from core.inference.result import Thresholds
from core.models.backbones import IMAGENET_NORMALISATION
from core.models.baseline import BaselineNetwork


def _package(tmp_path: Path) -> Path:
    network = BaselineNetwork((32, 32))
    torch.manual_seed(0)
    network.mean.normal_()
    network.std.uniform_(0.5, 2.0)
    meta = new_meta(family="baseline", backbone="none", config={"smoothing": 5}, input_size=(32, 32),
                    normalisation=IMAGENET_NORMALISATION, thresholds=Thresholds(0.3, 0.7, 2.0),
                    dataset={"path": "/data/x", "hash": "abc"})
    return save_package(tmp_path / "pkg", network, meta)


def test_round_trip_gives_identical_outputs(tmp_path):
    path = _package(tmp_path)
    image = (np.random.default_rng(1).random((40, 50)) * 255).astype(np.uint8)
    first = Detector.load(path, device="cpu").predict([image])[0]
    second = Detector.load(path, device="cpu").predict([image])[0]
    assert first.score == second.score
    np.testing.assert_array_equal(first.anomaly_map, second.anomaly_map)
    assert first.anomaly_map.shape == (40, 50) and first.anomaly_map.dtype == np.float32
    meta = read_meta(path)
    assert meta["format_version"] == FORMAT_VERSION and meta["software"]["torch"] == torch.__version__
    assert not list(path.glob("*.tmp")), "temporary files left behind"


def test_mirror_views_are_averaged_as_the_package_says(tmp_path):
    """A package with test_time_flips ["none", "h"]: the map is the mean of the image's map and its mirror's map
    flipped back, the score the mean of both scores; flip_average=False (--single-view) gives the image alone."""
    path = _package(tmp_path)
    meta = read_meta(path)
    meta["test_time_flips"] = ["none", "h"]
    (path / "model.json").write_text(json.dumps(meta))
    image = (np.random.default_rng(2).random((32, 32)) * 255).astype(np.uint8)
    single = Detector.load(path, device="cpu", flip_average=False)
    assert single.flips == ("none",)
    score, amap = single.infer([image])
    mirror_score, mirror_map = single.infer([np.ascontiguousarray(image[:, ::-1])])
    averaged = Detector.load(path, device="cpu")
    assert averaged.flips == ("none", "h")
    both_score, both_map = averaged.infer([image])
    np.testing.assert_allclose(both_map[0], (amap[0] + mirror_map[0][:, ::-1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both_score, (score + mirror_score) / 2, rtol=1e-5)
    assert not np.allclose(both_map, amap)  # the baseline's per-pixel model is not mirror-symmetric: the views differ
    # what the Models page says of it
    assert describe_views(meta) == "maps averaged with mirror views (left-right)"
    assert describe_views({**meta, "test_time_flips": ["none"]}) == describe_views({}) == ""


def test_a_large_batch_gives_what_its_images_give_one_at_a_time(tmp_path):
    """On a CPU the Detector runs a batch in parts of CPU_NETWORK_BATCH views; the parts must join in order."""
    path = _package(tmp_path)
    meta = read_meta(path)
    meta["test_time_flips"] = ["none", "h"]
    (path / "model.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(3)
    images = [(rng.random((32 + i, 30)) * 255).astype(np.uint8) for i in range(CPU_NETWORK_BATCH + 3)]
    for detector in (Detector.load(path, device="cpu"), Detector.load(path, device="cpu", flip_average=False)):
        scores, maps = detector.infer(images)
        assert scores.shape == (len(images),) and maps.shape == (len(images), 32, 32)
        for index, image in enumerate(images):
            one_score, one_map = detector.infer([image])
            np.testing.assert_allclose(scores[index], one_score[0], rtol=1e-6)
            np.testing.assert_allclose(maps[index], one_map[0], rtol=1e-5, atol=1e-6)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        load_package(tmp_path / "nope")
    path = _package(tmp_path)
    (path / "weights.safetensors").unlink()
    with pytest.raises(PackageError, match="no weights.safetensors"):
        load_package(path)
    (path / "model.json").unlink()
    with pytest.raises(PackageError, match="no model.json"):
        load_package(path)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(family="resnet-magic"), "unknown model family 'resnet-magic'"),
    (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer than this software reads"),
    (lambda m: m.pop("thresholds"), "missing keys \\['thresholds'\\]"),
    (lambda m: m.update(input_size=[32]), "input_size must be"),
    (lambda m: m["thresholds"].update(ok=0.9, ng=0.1), "bad thresholds"),
    (lambda m: m["normalisation"].update(std=[0, 1, 1]), "normalisation must be"),
    (lambda m: m.update(test_time_flips=["h"]), "test_time_flips must start with 'none'"),
    (lambda m: m.update(test_time_flips=["none", "none"]), "name each flip once"),
    (lambda m: m.update(test_time_flips=["none", "mirror"]), "unknown flips \\['mirror'\\]"),
    (lambda m: m.update(test_time_flips="none"), "must be a non-empty list"),
])
def test_bad_meta_is_rejected_naming_the_problem(tmp_path, edit, message):
    path = _package(tmp_path)
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match=message):
        load_package(path)


def test_not_json_is_rejected(tmp_path):
    path = _package(tmp_path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(path)


def test_corrupt_weights_are_rejected(tmp_path):
    path = _package(tmp_path)
    (path / "weights.safetensors").write_bytes(b"\x80\x04pickle? no thanks")
    with pytest.raises(PackageError, match="not a readable safetensors file"):
        load_package(path)


def test_wrong_shapes_and_keys_are_rejected(tmp_path):
    path = _package(tmp_path)
    weights = path / "weights.safetensors"
    save_file({"mean": torch.zeros(1, 1, 16, 16), "std": torch.ones(1, 1, 32, 32), "scale": torch.ones(1)}, str(weights))
    with pytest.raises(PackageError, match="'mean' has shape \\(1, 1, 16, 16\\)"):
        load_package(path)
    save_file({"mean": torch.zeros(1, 1, 32, 32), "scale": torch.ones(1)}, str(weights))
    with pytest.raises(PackageError, match="lacks 1 tensors"):
        load_package(path)
    save_file({"mean": torch.zeros(1, 1, 32, 32), "std": torch.ones(1, 1, 32, 32), "scale": torch.ones(1),
               "extra": torch.ones(2)}, str(weights))
    with pytest.raises(PackageError, match="does not know"):
        load_package(path)


def test_non_finite_weights_are_rejected(tmp_path):
    path = _package(tmp_path)
    save_file({"mean": torch.full((1, 1, 32, 32), float("nan")), "std": torch.ones(1, 1, 32, 32),
               "scale": torch.ones(1)}, str(path / "weights.safetensors"))
    with pytest.raises(PackageError, match="NaN or infinite"):
        load_package(path)


def test_the_figures_shown_for_a_package_come_from_either_way_of_recording_them():
    retrained = {"evaluation": {"image_auroc": 0.9, "miou": 0.4, "seconds": 3.0}, "dataset": {"path": "/d/a"}}
    assert package_figures(retrained) == {"image_auroc": 0.9, "miou": 0.4}
    evaluated = {"dataset": {"path": "/d/a"}, "evaluation": {
        "a/test": {"image_auroc": 0.8, "miou": 0.3, "dataset_path": "/d/a", "images": 10},
        "b/test": {"image_auroc": 0.7, "miou": 0.2, "dataset_path": "/d/b", "images": 5}}}
    assert package_figures(evaluated) == {"image_auroc": 0.8, "miou": 0.3}  # the dataset it was trained on
    evaluated["dataset"]["path"] = "/d/elsewhere"
    assert package_figures(evaluated) == {"image_auroc": 0.7, "miou": 0.2}  # else the latest recorded
    assert package_figures({"evaluation": {}}) == {} and package_figures({"evaluation": "junk"}) == {}
