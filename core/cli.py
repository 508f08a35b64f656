"""The `inspector` command: train, evaluate, predict, bench, run, export; no sub-command starts the GUI."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from core.models.backbone_names import BACKBONES, DEFAULT_BACKBONE
from core.reporting import emit_json

SUBCOMMANDS = ("train", "evaluate", "predict", "bench", "run", "export")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _folds(text: str) -> int:
    value = _whole_number(text)
    if value < 0 or value == 1:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or at least 2, got {value}")
    return value


def _setting(text: str) -> tuple[str, object]:
    """KEY=VALUE of --set: VALUE as JSON (0.05, true, [1, 2], {"weak": 0.3}), else as a plain word."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a setting name as KEY, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspector", description="Line-side visual inspection station.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model package on a dataset folder")
    p.add_argument("dataset", help="dataset folder (station layout, MVTec AD or KolektorSDD2)")
    p.add_argument("--family", required=True, choices=("supersimplenet", "cam", "baseline"))
    p.add_argument("--supervision", default="weak", choices=("unsupervised", "weak", "mixed", "full"))
    p.add_argument("--out", required=True, help="model package directory to write")
    p.add_argument("--epochs", type=_positive_int, help="training epochs (default: the family's CPU setting)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=BACKBONES,
                   help="frozen ImageNet backbone (default %(default)s; efficientnet_lite1 drew better weak-supervision "
                        "maps on mtd at the same latency, see docs/results.md)")
    p.add_argument("--backbone-weights", help="torchvision-format weights file for wide_resnet50_2")
    p.add_argument("--paper", action="store_true", help="the papers' full settings (meant for a GPU)")
    p.add_argument("--calibration-folds", type=_folds,
                   help="calibration copies of the model, each fitted without one fold of the training images and "
                        "scoring that fold; the OK/NG thresholds are set on these out-of-fold scores and the shipped "
                        "model is then fitted on all images (default 2 for supersimplenet, 3 for cam; 0: set them "
                        "on the fitted images, no copies)")
    p.add_argument("--set", dest="settings", action="append", default=[], type=_setting, metavar="KEY=VALUE",
                   help="a training setting that has no flag of its own (the trainers' DEFAULTS; docs/results.md says "
                        "what was measured), e.g. --set unmasked_top_cells=0.05; VALUE is JSON or a plain word; "
                        "repeatable; unknown settings are refused")
    p.add_argument("--force", action="store_true", help="overwrite an existing model package at --out")

    p = sub.add_parser("evaluate", help="evaluate a model package on a dataset's test split; prints JSON")
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--split", default="test", choices=("test", "train"))
    p.add_argument("--json", dest="json_out", help="also write the JSON report to this file")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-record", action="store_true", help="do not store the figures in the package's model.json")
    _add_comparison_flags(p)

    p = sub.add_parser("predict", help="predict images or folders; prints one JSON line per image")
    p.add_argument("model")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--out", help="write <stem>_overlay.png and <stem>_mask.png here")
    p.add_argument("--device", default="auto")
    _add_comparison_flags(p)

    p = sub.add_parser("bench", help="inference latency and throughput of a model package; prints JSON")
    p.add_argument("model")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=_positive_int, default=8)
    p.add_argument("--iterations", type=_positive_int, default=100)
    p.add_argument("--size", type=_positive_int, default=256, help="square synthetic image side in pixels")
    p.add_argument("--dataset", help="time this dataset's images instead of synthetic ones (decoding excluded)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="the dataset split to draw from")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    _add_comparison_flags(p)
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", dest="json_out")

    p = sub.add_parser("run", help="run the inspection pipeline (GUI unless --headless)")
    p.add_argument("--source", required=True, help="genicam[:CTI[#SERIAL]] | folder:DIR | synthetic")
    p.add_argument("--model", required=True)
    p.add_argument("--db", help="SQLAlchemy URL (default: SQLite in the data directory)")
    p.add_argument("--data-dir", default="data", help="database and image store directory")
    p.add_argument("--frames", type=_positive_int, help="stop after N frames")
    p.add_argument("--headless", action="store_true", help="no GUI: print statistics as JSON at the end")
    p.add_argument("--ok-sampling", type=_positive_int, default=100, help="store every Nth OK image")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("export", help="export tagged inspections as a dataset (station layout)")
    p.add_argument("--db", help="SQLAlchemy URL (default: SQLite in the data directory)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", required=True)
    p.add_argument("--test-fraction", type=float, default=0.2)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from core.allocator import keep_freed_memory

    keep_freed_memory()  # before any tensor: freed activations reused, not page-faulted in again (core.allocator)
    if not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        from inspector.app import main as gui_main  # GUI only when asked for: the CLI stays Qt-free

        return gui_main(argv)
    args = build_parser().parse_args(argv)
    handlers = {"train": _train, "evaluate": _evaluate, "predict": _predict, "bench": _bench, "run": _run,
                "export": _export}
    from core.data.dataset import DatasetError
    from core.data.images import ImageError
    from core.inference.package import PackageError
    from core.training.api import TrainingCancelled, TrainingError

    try:
        return handlers[args.command](args)
    except (CliError, DatasetError, ImageError, PackageError, TrainingError, RuntimeError, ValueError) as exc:
        print(f"inspector {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingCancelled:
        print(f"inspector {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"inspector {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0


def _print_json(report: dict, json_out: str | None) -> None:
    emit_json(report, json_out, sort_keys=True)


def _train(args: argparse.Namespace) -> int:
    from core.data.dataset import open_dataset
    from core.inference.package import read_meta
    from core.training.api import StderrProgress, TrainOptions, trainer_for

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CliError(f"{out} exists and is not empty; choose another --out or pass --force")
    if args.backbone == "wide_resnet50_2" and not args.backbone_weights:
        raise CliError("--backbone wide_resnet50_2 needs --backbone-weights FILE (torchvision-format weights)")
    dataset = open_dataset(args.dataset, require_test=False)
    _check_dataset(dataset)
    extra: dict = {"paper": True} if args.paper else {}
    if args.calibration_folds is not None:
        if args.family == "baseline":
            raise CliError("--calibration-folds applies to supersimplenet and cam; the baseline fits no network "
                           "and sets its thresholds on all training images")
        extra["calibration_folds"] = args.calibration_folds
    for key, value in args.settings:
        if args.family == "baseline":
            raise CliError("--set applies to supersimplenet and cam; the baseline has no training settings")
        if key in extra:
            raise CliError(f"setting {key!r} is given twice (by --set and by its own flag, or by --set twice)")
        extra[key] = value
    train = trainer_for(args.family)
    options = TrainOptions(out=out, supervision=args.supervision, epochs=args.epochs, device=args.device,
                           seed=args.seed, backbone=args.backbone, backbone_weights=args.backbone_weights,
                           extra=extra)
    counts = dataset.counts("train")
    print(f"inspector train: {args.family}/{args.supervision} on {dataset.root} ({dataset.layout} layout): "
          f"{counts['good']} good, {counts['defect']} defect ({counts['segmented']} with masks)", file=sys.stderr)
    start = time.perf_counter()
    package = train(dataset, options, StderrProgress())
    calibration = read_meta(package).get("calibration", {})
    _print_json({"package": str(package), "family": args.family, "supervision": args.supervision,
                 "seconds": round(time.perf_counter() - start, 1),
                 # how much of the images the thresholds were set on they send to REVIEW (share of good, of defect)
                 "review": calibration.get("review")}, None)
    return 0


def _check_dataset(dataset, splits: tuple[str, ...] = ("train",)) -> None:
    """Open every file once before long work starts (a bad file fails now, not at minute 9)."""
    from core.data.dataset import check_dataset

    check_dataset(dataset, splits=splits)


def _add_comparison_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that switch off a part of the package's inference, to measure what it adds (evaluate, predict, bench)."""
    parser.add_argument("--raw-masks", action="store_true",
                        help="masks without the package's mask refinement (dense CRF), to compare; not recorded")
    parser.add_argument("--single-view", action="store_true",
                        help="the image alone, without averaging the package's mirror views (test_time_flips), "
                             "to compare; not recorded")


def _load_detector(args: argparse.Namespace, half: bool = False):
    from core.inference.detector import Detector

    return Detector.load(args.model, device=args.device, half=half, refine_masks=not args.raw_masks,
                         flip_average=not args.single_view)


def _evaluate(args: argparse.Namespace) -> int:
    from core.data.dataset import open_dataset
    from core.evaluation import evaluate
    from core.inference.package import FIGURE_KEYS, read_meta, write_meta
    from core.training.api import StderrProgress

    detector = _load_detector(args)
    dataset = open_dataset(args.dataset, require_test=args.split == "test")
    _check_dataset(dataset, splits=(args.split,))
    report = evaluate(detector, dataset, split=args.split, progress=StderrProgress())
    _print_json(report, args.json_out)
    if not (args.no_record or args.raw_masks or args.single_view):  # the package's figures: its own masks and views
        meta = read_meta(args.model)
        figures = {k: report.get(k) for k in FIGURE_KEYS}
        meta.setdefault("evaluation", {})[f"{dataset.root.name}/{args.split}"] = {
            **figures, "dataset_path": report["dataset"]["path"], "images": report.get("counts", {}).get("images")}
        try:
            write_meta(args.model, meta)
        except OSError as exc:
            print(f"inspector evaluate: note: figures not recorded in the package ({exc})", file=sys.stderr)
    return 0


def _predict(args: argparse.Namespace) -> int:
    import cv2

    from core.data.dataset import list_images
    from core.data.images import read_image
    from core.inference.overlay import render_overlay

    paths: list[Path] = []
    for item in args.inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_images(path))
        elif path.is_file():
            paths.append(path)
        else:
            raise CliError(f"{path}: no such file or folder")
    if not paths:
        raise CliError("no images found in the given inputs")
    detector = _load_detector(args)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        image = read_image(path)
        result = detector.predict([image])[0]
        line = {"image": str(path), "score": round(result.score, 6), "verdict": result.verdict.value,
                "defect_pixels": int(result.mask.sum())}
        if out:
            cv2.imwrite(str(out / f"{path.stem}_overlay.png"), render_overlay(image, result))
            cv2.imwrite(str(out / f"{path.stem}_mask.png"), result.mask.astype("uint8") * 255)
        print(json.dumps(line), flush=True)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from core.data.dataset import open_dataset
    from core.inference.bench import bench, dataset_images

    if args.threads:
        torch.set_num_threads(args.threads)
    detector = _load_detector(args, half=args.half)
    real = {}
    if args.dataset:
        images, labels = dataset_images(open_dataset(args.dataset, require_test=args.split == "test"), args.split,
                                        args.iterations)
        real = {"images": images, "labels": labels, "source": f"{args.dataset} ({args.split})"}
    report = bench(detector, batch=args.batch, iterations=args.iterations, image_size=(args.size, args.size), **real)
    _print_json(report, args.json_out)
    return 0


def _run(args: argparse.Namespace) -> int:
    if not args.headless:
        from inspector.app import main as gui_main

        gui_args = ["--source", args.source, "--model", args.model, "--data-dir", args.data_dir]
        if args.db:
            gui_args += ["--db", args.db]
        return gui_main(gui_args)
    from core.pipeline import run_headless

    stats = run_headless(source=args.source, model_dir=args.model, db_url=args.db, data_dir=args.data_dir,
                         frames=args.frames, ok_sampling=args.ok_sampling, device=args.device)
    _print_json(stats, None)
    return 0


def _export(args: argparse.Namespace) -> int:
    from core.storage import open_database

    if not 0.0 <= args.test_fraction < 1.0:
        raise CliError("--test-fraction must be in [0, 1)")
    db = open_database(args.db, data_dir=args.data_dir)
    try:
        counts = db.export_tagged(args.out, test_fraction=args.test_fraction)
    finally:
        db.close()
    _print_json({"out": args.out, "counts": counts}, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
