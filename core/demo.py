"""Demo set-up for a fresh machine with no camera and no data: data directory, settings, users, a demo model.

``prepare_demo(data_dir, progress)`` is idempotent: a second call finds everything in place and returns at
once. The demo model is trained on first start from synthetic textures with planted defects (the same
generator as the synthetic camera), so verdicts are meaningful; the baseline family trains in seconds on a
CPU. Demo users have fixed, published passwords: this is a demo, never a production station.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.settings import Settings, load_settings, save_settings
from core.training.api import ProgressEvent

log = logging.getLogger(__name__)

# (name, password, role): shown on the demo's log-in screen
DEMO_USERS: tuple[tuple[str, str, str], ...] = (("engineer", "engineer", "engineer"), ("operator", "operator", "operator"),
                                                 ("admin", "admin", "admin"))
DEMO_IMAGE_SIZE = (256, 256)  # the synthetic camera's default frame size
SETTINGS_FILE = "settings.json"


@dataclass
class DemoSetup:
    data_dir: Path
    settings_path: Path
    model_dir: Path
    credentials: tuple[tuple[str, str, str], ...]
    trained: bool  # True when this call trained the model (first start)


DEMO_TRAINING = {  # family -> (supervision, epochs); short runs: the demo must show verdicts soon
    "baseline": ("unsupervised", None),
    "supersimplenet": ("weak", 4),
    "cam": ("weak", 2),
}


def prepare_demo(data_dir: str | Path, progress: Callable[[ProgressEvent], None] | None = None,
                 family: str = "baseline") -> DemoSetup:
    """Create (or find) the demo's data directory, settings, database users and active model.

    family: the demo model's family; "baseline" trains in seconds on a CPU, "supersimplenet" (weakly
    supervised, a few epochs on the synthetic images) takes minutes there and is the better model."""
    if family not in DEMO_TRAINING:
        raise ValueError(f"demo family must be one of {', '.join(DEMO_TRAINING)}, not {family!r}")
    from core.data.dataset import open_dataset
    from core.data.synthetic import write_synthetic_dataset
    from core.inference.package import read_meta
    from core.storage import open_database
    from core.training.api import TrainOptions, trainer_for

    report = progress or (lambda _event: None)
    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings_path = data_dir / SETTINGS_FILE
    if not settings_path.exists():
        settings = Settings()
        settings.camera.source = "synthetic"
        settings.camera.frame_rate = 10.0
        settings.storage.data_dir = str(data_dir)
        settings.storage.ok_sampling = 0.25
        save_settings(settings, settings_path)
    settings = load_settings(settings_path)

    report(ProgressEvent("database", 0.02, f"opening the station database in {data_dir}"))
    db = open_database(settings.storage.database_url or None, data_dir)
    try:
        existing = {user.name for user in db.list_users()}
        for name, password, role in DEMO_USERS:
            if name not in existing:
                db.create_user(name, password, role)
        model_dir = data_dir / "models" / f"demo-{family}"
        active = db.active_model()
        if active is not None and Path(active.package_path).is_dir():
            report(ProgressEvent("ready", 1.0, f"demo model {active.name} is active"))
            return DemoSetup(data_dir, settings_path, Path(active.package_path), DEMO_USERS, trained=False)

        dataset_dir = data_dir / "demo-dataset"
        if not (dataset_dir / "train").is_dir():
            report(ProgressEvent("data", 0.05, "making synthetic training images with planted defects"))
            write_synthetic_dataset(dataset_dir, train_good=60, train_defect=20, test_good=20, test_defect=20,
                                    size=DEMO_IMAGE_SIZE, seed=7)
        dataset = open_dataset(dataset_dir)
        if model_dir.exists():  # a half-trained package from an interrupted first start
            shutil.rmtree(model_dir)

        def scaled(event: ProgressEvent) -> None:  # training is 10..95 % of the demo set-up
            report(ProgressEvent(event.stage, 0.1 + 0.85 * event.fraction, event.message, event.eta_s, event.metrics))

        supervision, epochs = DEMO_TRAINING[family]
        report(ProgressEvent("train", 0.1, f"training the demo model ({family}, {supervision})"))
        path = Path(trainer_for(family)(dataset, TrainOptions(out=model_dir, supervision=supervision, epochs=epochs,
                                                              device="auto"), scaled))
        report(ProgressEvent("evaluate", 0.95, "evaluating the demo model"))
        _evaluate_into_meta(path, dataset)
        engineer = db.authenticate(DEMO_USERS[0][0], DEMO_USERS[0][1])
        model_id = db.register_model(path, read_meta(path), user=engineer)
        db.activate_model(model_id, engineer)
        report(ProgressEvent("ready", 1.0, f"demo model trained and active: {path}"))
        return DemoSetup(data_dir, settings_path, path, DEMO_USERS, trained=True)
    finally:
        db.close()


def _evaluate_into_meta(path: Path, dataset) -> None:
    """Record the demo model's figures on its synthetic test split (shown on the Models screen)."""
    try:
        from core.evaluation import evaluate
        from core.inference.detector import Detector
        from core.inference.package import read_meta, write_meta

        figures = evaluate(Detector.load(path, device="auto"), dataset)
        meta = read_meta(path)
        meta["evaluation"] = {k: v for k, v in figures.items() if isinstance(v, (int, float, str)) or v is None}
        write_meta(path, meta)
    except Exception:  # figures are a nicety for the demo; the model works without them
        log.exception("demo model evaluation failed")
