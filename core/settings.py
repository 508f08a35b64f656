"""Station settings: one dataclass tree, saved to and loaded from a JSON file, validated on both ways.

The file holds only plain JSON values. Unknown keys, wrong types and out-of-range values are errors that
name the key (``camera.gain: must be a number >= 0, got 'high'``), so a hand-edited file never half-loads.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from core.models.backbone_names import DEFAULT_BACKBONE, LITE_BACKBONES

PIXEL_FORMATS = ("auto", "Mono8", "Mono16", "RGB8", "BGR8", "RGBa8", "BayerRG8", "BayerGR8", "BayerGB8", "BayerBG8")
TRIGGER_MODES = ("free-run", "software", "hardware")
FAMILIES = ("baseline", "supersimplenet", "cam")
SUPERVISIONS = ("unsupervised", "weak", "mixed", "full")
DEVICES = ("auto", "cpu", "cuda")


class SettingsError(ValueError):
    """A settings file or value is unusable; the message names the key and the problem."""


@dataclass
class CameraSettings:
    """Where frames come from. source: "synthetic", "folder:DIR" or "genicam[:CTI[#SERIAL]]"."""

    source: str = "synthetic"
    producer: str = ""          # .cti path; "" = GENICAM_GENTL64_PATH or the simulated viky.cti
    device: str = ""            # serial number or index; "" = first device
    exposure_us: float | None = None   # None = leave the camera's value
    gain_db: float | None = None
    roi: list[int] | None = None       # [x, y, width, height]; None = full sensor
    pixel_format: str = "auto"
    trigger: str = "free-run"
    frame_rate: float = 10.0    # frames/s for synthetic and folder sources; camera rate where settable


@dataclass
class ModelSettings:
    """Inference device and how "Retrain" trains."""

    device: str = "auto"
    retrain_family: str = "baseline"
    retrain_supervision: str = "weak"
    retrain_backbone: str = DEFAULT_BACKBONE  # an EfficientNet-Lite size (wide_resnet50_2 needs a weights file)
    retrain_epochs: int | None = None  # None = the family's default
    test_fraction: float = 0.25        # part of the tagged images held back for evaluation
    ok_threshold: float | None = None  # None = use the active model's thresholds
    ng_threshold: float | None = None


@dataclass
class StorageSettings:
    database_url: str = ""      # "" = SQLite file inside data_dir
    data_dir: str = ""          # "" = the platform default (see default_data_dir)
    ok_sampling: float = 0.1    # fraction of OK images whose image file is kept (NG/REVIEW always kept)


@dataclass
class Settings:
    camera: CameraSettings = field(default_factory=CameraSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Settings":
        """Build and validate; raises SettingsError naming the first bad key."""
        if not isinstance(data, dict):
            raise SettingsError("settings: expected a JSON object at the top level")
        sections = {"camera": CameraSettings, "model": ModelSettings, "storage": StorageSettings}
        unknown = set(data) - set(sections)
        if unknown:
            raise SettingsError(f"settings: unknown section(s) {sorted(unknown)}; known: {sorted(sections)}")
        built = {}
        for name, kind in sections.items():
            section = data.get(name, {})
            if not isinstance(section, dict):
                raise SettingsError(f"{name}: expected an object, got {type(section).__name__}")
            names = {f.name for f in fields(kind)}
            bad = set(section) - names
            if bad:
                raise SettingsError(f"{name}: unknown key(s) {sorted(bad)}; known: {sorted(names)}")
            built[name] = kind(**section)
        settings = cls(**built)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check every value; raises SettingsError naming the first bad key."""
        cam, mod, sto = self.camera, self.model, self.storage
        _check_str("camera.source", cam.source)
        if not (cam.source == "synthetic" or cam.source.startswith("folder:") or cam.source.startswith("genicam")):
            raise SettingsError(f"camera.source: must be 'synthetic', 'folder:DIR' or 'genicam[:CTI[#SERIAL]]', "
                                f"got {cam.source!r}")
        if cam.source.startswith("folder:") and not cam.source[len("folder:"):].strip():
            raise SettingsError("camera.source: 'folder:' needs a folder, e.g. folder:/data/images")
        _check_str("camera.producer", cam.producer)
        _check_str("camera.device", cam.device)
        _check_number("camera.exposure_us", cam.exposure_us, low=1.0, optional=True)
        _check_number("camera.gain_db", cam.gain_db, low=0.0, optional=True)
        if cam.roi is not None:
            if not (isinstance(cam.roi, list) and len(cam.roi) == 4
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in cam.roi)):
                raise SettingsError(f"camera.roi: must be [x, y, width, height] integers or null, got {cam.roi!r}")
            if cam.roi[0] < 0 or cam.roi[1] < 0 or cam.roi[2] < 16 or cam.roi[3] < 16:
                raise SettingsError(f"camera.roi: x, y must be >= 0 and width, height >= 16, got {cam.roi}")
        _check_choice("camera.pixel_format", cam.pixel_format, PIXEL_FORMATS)
        _check_choice("camera.trigger", cam.trigger, TRIGGER_MODES)
        _check_number("camera.frame_rate", cam.frame_rate, low=0.1, high=1000.0)
        _check_choice("model.device", mod.device, DEVICES)
        _check_choice("model.retrain_family", mod.retrain_family, FAMILIES)
        _check_choice("model.retrain_supervision", mod.retrain_supervision, SUPERVISIONS)
        _check_choice("model.retrain_backbone", mod.retrain_backbone, LITE_BACKBONES)
        if mod.retrain_epochs is not None and (not isinstance(mod.retrain_epochs, int) or isinstance(mod.retrain_epochs, bool)
                                               or not 1 <= mod.retrain_epochs <= 10_000):
            raise SettingsError(f"model.retrain_epochs: must be an integer 1..10000 or null, got {mod.retrain_epochs!r}")
        _check_number("model.test_fraction", mod.test_fraction, low=0.05, high=0.9)
        _check_number("model.ok_threshold", mod.ok_threshold, low=0.0, high=1.0, optional=True)
        _check_number("model.ng_threshold", mod.ng_threshold, low=0.0, high=1.0, optional=True)
        if (mod.ok_threshold is None) != (mod.ng_threshold is None):
            raise SettingsError("model.ok_threshold and model.ng_threshold: set both or neither")
        if mod.ok_threshold is not None and mod.ok_threshold > mod.ng_threshold:
            raise SettingsError(f"model.ok_threshold ({mod.ok_threshold}) must not exceed "
                                f"model.ng_threshold ({mod.ng_threshold})")
        _check_str("storage.database_url", sto.database_url)
        if sto.database_url and "://" not in sto.database_url:
            raise SettingsError(f"storage.database_url: not a database URL (e.g. sqlite:///station.db or "
                                f"postgresql://user@host/db), got {sto.database_url!r}")
        _check_str("storage.data_dir", sto.data_dir)
        _check_number("storage.ok_sampling", sto.ok_sampling, low=0.0, high=1.0)

    def resolved_data_dir(self) -> Path:
        return Path(self.storage.data_dir).expanduser() if self.storage.data_dir else default_data_dir()


def default_data_dir(demo: bool = False) -> Path:
    """$INSPECTOR_DATA if set, else ~/.local/share/inspector (``demo`` adds /demo)."""
    base = Path(os.environ["INSPECTOR_DATA"]) if os.environ.get("INSPECTOR_DATA") else (
        Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "inspector")
    return base / "demo" if demo else base


def load_settings(path: str | Path) -> Settings:
    """Read a settings file; a missing file gives the defaults. Raises SettingsError naming the problem."""
    path = Path(path)
    if not path.exists():
        return Settings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    try:
        return Settings.from_dict(data)
    except TypeError as exc:  # dataclass construction with a wrong shape
        raise SettingsError(f"{path}: {exc}") from exc
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from exc


def save_settings(settings: Settings, path: str | Path) -> Path:
    """Validate, then write atomically (write beside, rename) so a crash never leaves half a file."""
    settings.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _check_str(key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise SettingsError(f"{key}: must be text, got {value!r}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingsError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")


def _check_number(key: str, value: Any, *, low: float | None = None, high: float | None = None,
                  optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SettingsError(f"{key}: must be a number, got {value!r}")
    if low is not None and value < low:
        raise SettingsError(f"{key}: must be >= {low}, got {value}")
    if high is not None and value > high:
        raise SettingsError(f"{key}: must be <= {high}, got {value}")
