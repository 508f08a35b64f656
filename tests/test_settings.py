"""Station settings: round trip through the file, defaults, and clear errors for bad values."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.settings import Settings, SettingsError, load_settings, save_settings

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def test_round_trip(tmp_path):
    settings = Settings()
    settings.camera.source = "folder:/data/images"
    settings.camera.roi = [0, 8, 320, 240]
    settings.model.retrain_family = "supersimplenet"
    settings.model.retrain_backbone = "efficientnet_lite2"
    settings.model.ok_threshold, settings.model.ng_threshold = 0.3, 0.7
    settings.storage.ok_sampling = 0.5
    path = save_settings(settings, tmp_path / "sub" / "settings.json")
    assert load_settings(path) == settings
    assert not list(path.parent.glob("*.tmp"))


def test_missing_file_gives_defaults(tmp_path):
    assert load_settings(tmp_path / "none.json") == Settings()


def test_shipped_defaults_match_code():
    data = json.loads((RESOURCES / "default_settings.json").read_text())
    assert Settings.from_dict(data) == Settings()


@pytest.mark.parametrize("patch, words", [
    ({"camera": {"gain_db": "high"}}, "camera.gain_db: must be a number"),
    ({"camera": {"source": "usb0"}}, "camera.source"),
    ({"camera": {"roi": [0, 0, 8, 8]}}, "camera.roi"),
    ({"camera": {"trigger": "sometimes"}}, "camera.trigger"),
    ({"model": {"retrain_family": "resnet"}}, "model.retrain_family"),
    ({"model": {"retrain_backbone": "wide_resnet50_2"}}, "model.retrain_backbone"),
    ({"model": {"ok_threshold": 0.8, "ng_threshold": 0.2}}, "must not exceed"),
    ({"model": {"ok_threshold": 0.8}}, "set both or neither"),
    ({"storage": {"ok_sampling": 2}}, "storage.ok_sampling: must be <= 1.0"),
    ({"storage": {"database_url": "station.db"}}, "storage.database_url"),
    ({"storage": {"colour": "blue"}}, "unknown key(s) ['colour']"),
    ({"network": {}}, "unknown section"),
])
def test_bad_values_are_named(tmp_path, patch, words):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(patch))
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_broken_json_names_line(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"camera": {\n  "gain_db": 1,\n}')
    with pytest.raises(SettingsError, match="not valid JSON .line 3"):
        load_settings(path)


def test_save_refuses_invalid(tmp_path):
    settings = Settings()
    settings.camera.frame_rate = 0
    with pytest.raises(SettingsError, match="camera.frame_rate"):
        save_settings(settings, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()
