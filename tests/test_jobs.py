"""Retraining jobs in a spawned child process: finish with a package, cancel, fail in plain words."""
from __future__ import annotations

import importlib.util

import pytest

from core.data.synthetic import write_synthetic_dataset
from core.inference.package import read_meta
from core.training.jobs import JobSpec, JobState, TrainingJob

HAVE_EVALUATION = importlib.util.find_spec("core.evaluation") is not None


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", train_good=8, train_defect=4,
                                   test_good=4, test_defect=4, size=(64, 64), seed=1)


def test_job_trains_to_a_package_and_reports_progress(tiny_dataset, tmp_path):
    job = TrainingJob(JobSpec(dataset=tiny_dataset, family="baseline", out=tmp_path / "pkg",
                              evaluate=HAVE_EVALUATION, threads=1))
    job.start()
    messages = []
    assert job.wait(timeout=120, on_message=messages.append) is JobState.DONE, job.error
    assert job.result == tmp_path / "pkg"
    meta = read_meta(job.result)
    assert meta["family"] == "baseline"
    stages = [m.event.stage for m in messages if m.kind == "progress"]
    assert stages[0] == "start" and stages[-1] == "done"
    fractions = [m.event.fraction for m in messages if m.kind == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.kind == "log" and "train split: 8 good, 4 defect" in m.text for m in messages)
    if HAVE_EVALUATION:
        assert meta["evaluation"], "evaluation figures were not recorded in model.json"


def test_cancel_before_training_starts(tiny_dataset, tmp_path):
    job = TrainingJob(JobSpec(dataset=tiny_dataset, family="baseline", out=tmp_path / "pkg", evaluate=False))
    job.start()
    job.cancel()  # set while the child is still importing: the trainer's first check raises
    assert job.wait(timeout=60) is JobState.CANCELLED
    assert job.result is None
    assert not (tmp_path / "pkg" / "weights.safetensors").exists()


def test_missing_dataset_fails_in_plain_words(tmp_path):
    job = TrainingJob(JobSpec(dataset=tmp_path / "nowhere", family="baseline", out=tmp_path / "pkg"))
    job.start()
    assert job.wait(timeout=60) is JobState.FAILED
    assert "nowhere" in job.error and "does not exist" in job.error


def test_unknown_family_fails(tiny_dataset, tmp_path):
    job = TrainingJob(JobSpec(dataset=tiny_dataset, family="resnet", out=tmp_path / "pkg"))
    job.start()
    assert job.wait(timeout=60) is JobState.FAILED
    assert "unknown family 'resnet'" in job.error


def test_poll_never_blocks_and_start_only_once(tiny_dataset, tmp_path):
    import time

    job = TrainingJob(JobSpec(dataset=tiny_dataset, family="baseline", out=tmp_path / "pkg", evaluate=False))
    job.start()
    started = time.perf_counter()
    job.poll()
    assert time.perf_counter() - started < 0.3
    with pytest.raises(RuntimeError):
        job.start()
    job.wait(timeout=60)
    assert job.state is JobState.DONE


@pytest.mark.skipif(not HAVE_EVALUATION, reason="core.evaluation is not available in this build")
def test_compare_with_evaluates_the_other_package_on_the_same_images_without_touching_it(tiny_dataset, tmp_path):
    first = TrainingJob(JobSpec(dataset=tiny_dataset, family="baseline", out=tmp_path / "a", evaluate=False))
    first.start()
    assert first.wait(timeout=120) is JobState.DONE
    before = (tmp_path / "a" / "model.json").read_bytes()
    job = TrainingJob(JobSpec(dataset=tiny_dataset, family="baseline", out=tmp_path / "b", compare_with=tmp_path / "a"))
    job.start()
    messages = []
    assert job.wait(timeout=120, on_message=messages.append) is JobState.DONE, job.error
    assert job.compare_figures is not None and "image_auroc" in job.compare_figures
    assert job.compare_figures["counts"]["images"] == 8  # the same 4 + 4 test images the new model saw
    assert (tmp_path / "a" / "model.json").read_bytes() == before
    assert any(m.kind == "compare" for m in messages)


def test_the_retrain_backbone_reaches_the_package(tiny_dataset, tmp_path):
    job = TrainingJob(JobSpec(dataset=tiny_dataset, family="supersimplenet", out=tmp_path / "pkg",
                              backbone="efficientnet_lite1", epochs=1, evaluate=False, threads=1,
                              extra={"input_size": [64, 64]}))
    job.start()
    assert job.wait(timeout=120) is JobState.DONE, job.error
    meta = read_meta(job.result)
    assert meta["backbone"] == meta["config"]["backbone"] == "efficientnet_lite1"
