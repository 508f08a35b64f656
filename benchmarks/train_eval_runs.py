"""Train and evaluate a list of runs (families, regimes, seeds, settings); SuperSimpleNet encodes each image set once.

Usage:
    .venv/bin/python benchmarks/train_eval_runs.py RUNS.json [--out-root runs/ssn] [--threads 2]

RUNS.json is a list of runs, each {"name", "supervision", "family"?, "backbone"?, "seed"?, "epochs"?, "extra"?,
"dataset"?} ("family" defaults to supersimplenet, "backbone" to efficientnet_lite0, "dataset" to
../shared/datasets/mtd; "extra" is TrainOptions.extra, e.g. {"noise_std": 0.35}, the settings the CLI has no
flag for).
Each run is exactly `inspector train DATASET --family F --supervision S --seed N --out OUT_ROOT/NAME` (same train()
call, same options) followed by `inspector evaluate` on the dataset's test split, whose report is written
to OUT_ROOT/NAME/eval.json; one summary line per run goes to stdout. Runs whose eval.json exists are skipped,
so an interrupted list can be resumed.

The one difference from separate commands: SuperSimpleNet's frozen-backbone features of a sample set are computed once
and handed to every run on the same images (keyed by image file and whether its mask is used), because
encoding is a third of a CPU training run and its result does not depend on the seed or the head settings.
So the `train_s` printed for SuperSimpleNet excludes encoding; time a single `inspector train` for the training time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import core.training.supersimplenet_trainer as trainer
from core.data.dataset import open_dataset
from core.evaluation import evaluate
from core.inference.detector import Detector
from core.models.backbones import DEFAULT_BACKBONE
from core.training.api import TrainOptions, trainer_for
from core.training.feature_cache import FeatureCache

DEFAULT_DATASET = str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mtd")
SUMMARY_KEYS = ("image_ap", "image_auroc", "pixel_ap", "pixel_auroc", "aupro", "miou")


def reuse_features(build):
    """Wrap build_feature_cache so that a sample set is encoded once; each caller gets its own copy (the
    trainer standardises the cache in place)."""
    encoded: dict[tuple, FeatureCache] = {}

    def build_once(samples, encode, size, normalisation, flips=("none",), *args, **kwargs) -> FeatureCache:
        # encode standardises with the network's statistics once they are set (the held-back images are
        # encoded after fitting), so those statistics are part of what was encoded
        network = getattr(encode, "__self__", None)
        statistics = (() if network is None else
                      (float(network.feature_mean.double().sum()), float(network.feature_std.double().sum())))
        backbone = None if network is None else network.config["backbone"]
        key = (backbone, tuple((str(s.image_path.resolve()), s.mask_path is not None) for s in samples),
               tuple(flips), tuple(size), statistics)
        if key not in encoded:
            encoded[key] = build(samples, encode, size, normalisation, flips, *args, **kwargs)
        cache = encoded[key]
        return FeatureCache(features=cache.features.clone(), flips=cache.flips, masks=list(cache.masks))
    return build_once


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out-root", type=Path, default=Path("runs/ssn"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: the trainer's auto)")
    args = parser.parse_args()
    runs = json.loads(args.runs.read_text())
    trainer.build_feature_cache = reuse_features(trainer.build_feature_cache)
    datasets = {}
    for run in runs:
        out = args.out_root / run["name"]
        if (out / "eval.json").exists():
            continue
        root = run.get("dataset", DEFAULT_DATASET)
        dataset = datasets.setdefault(root, open_dataset(root))
        options = TrainOptions(out=out, supervision=run["supervision"], epochs=run.get("epochs"), device="cpu",
                               backbone=run.get("backbone", DEFAULT_BACKBONE),
                               seed=run.get("seed", 0), extra={"threads": args.threads, **run.get("extra", {})})
        start = time.perf_counter()
        trainer_for(run.get("family", "supersimplenet"))(dataset, options, lambda event: None)
        train_s = time.perf_counter() - start
        report = evaluate(Detector.load(out, device="cpu"), dataset, split="test")
        (out / "eval.json").write_text(json.dumps(report, indent=1, default=str))
        figures = " ".join(f"{key}={report[key]:.3f}" for key in SUMMARY_KEYS if report.get(key) is not None)
        verdicts = " ".join(f"{kind}={'/'.join(str(report['verdicts'][kind][v]) for v in ('OK', 'REVIEW', 'NG'))}"
                            for kind in ("good", "defect"))
        print(f"{run['name']} train_s={train_s:.0f} {figures} verdicts(OK/REVIEW/NG) {verdicts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
