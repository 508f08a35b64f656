"""Settings screen: camera, model, thresholds, database and data directory, OK-image sampling.

Edits a copy of the station settings; "Save" validates (core.settings) and writes the settings file, audited.
Only engineers may save. Camera and database changes apply at the next start of the line / the application.
"""
from __future__ import annotations

import copy

from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget)

from core.models.backbone_names import LITE_BACKBONES
from core.settings import (DEVICES, FAMILIES, PIXEL_FORMATS, SUPERVISIONS, TRIGGER_MODES, Settings,
                           SettingsError)


def _optional_spin(low: float, high: float, decimals: int, suffix: str) -> tuple[QCheckBox, QDoubleSpinBox, QWidget]:
    check = QCheckBox("set")
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setDecimals(decimals)
    spin.setSuffix(suffix)
    check.toggled.connect(spin.setEnabled)
    spin.setEnabled(False)
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(check)
    row.addWidget(spin, 1)
    return check, spin, box


def _combo(items) -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    return box


class SettingsPage(QWidget):
    def __init__(self, context) -> None:
        super().__init__()
        self.context = context
        title = QLabel("Settings")
        title.setObjectName("pageTitle")
        self.path_label = QLabel(f"Settings file: {context.settings_path}")
        self.path_label.setObjectName("hint")

        self.source = QLineEdit()
        self.source.setPlaceholderText("synthetic | folder:DIR | genicam[:CTI[#SERIAL]]")
        self.producer = QLineEdit()
        self.producer.setPlaceholderText("GenTL producer (.cti); empty = GENICAM_GENTL64_PATH or the simulator")
        self.device = QLineEdit()
        self.device.setPlaceholderText("serial number or index; empty = first camera")
        self.exposure_set, self.exposure, exposure_box = _optional_spin(1, 10_000_000, 0, " µs")
        self.gain_set, self.gain, gain_box = _optional_spin(0, 48, 1, " dB")
        self.roi_set = QCheckBox("set")
        self.roi = [QSpinBox() for _ in range(4)]
        roi_box = QWidget()
        roi_row = QHBoxLayout(roi_box)
        roi_row.setContentsMargins(0, 0, 0, 0)
        roi_row.addWidget(self.roi_set)
        for spin, name in zip(self.roi, ("x", "y", "w", "h")):
            spin.setRange(0, 20000)
            spin.setPrefix(f"{name} ")
            spin.setEnabled(False)
            self.roi_set.toggled.connect(spin.setEnabled)
            roi_row.addWidget(spin)
        self.pixel_format = _combo(PIXEL_FORMATS)
        self.trigger = _combo(TRIGGER_MODES)
        self.frame_rate = QDoubleSpinBox()
        self.frame_rate.setRange(0.1, 1000)
        self.frame_rate.setSuffix(" frames/s")
        camera = QGroupBox("Camera")
        form = QFormLayout(camera)
        form.addRow("Source", self.source)
        form.addRow("Producer", self.producer)
        form.addRow("Device", self.device)
        form.addRow("Exposure", exposure_box)
        form.addRow("Gain", gain_box)
        form.addRow("Region of interest", roi_box)
        form.addRow("Pixel format", self.pixel_format)
        form.addRow("Trigger", self.trigger)
        form.addRow("Frame rate", self.frame_rate)

        self.device_box = _combo(DEVICES)
        self.family = _combo(FAMILIES)
        self.supervision = _combo(SUPERVISIONS)
        self.backbone = _combo(LITE_BACKBONES)
        self.epochs_set = QCheckBox("set")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        self.epochs.setEnabled(False)
        self.epochs_set.toggled.connect(self.epochs.setEnabled)
        epochs_box = QWidget()
        epochs_row = QHBoxLayout(epochs_box)
        epochs_row.setContentsMargins(0, 0, 0, 0)
        epochs_row.addWidget(self.epochs_set)
        epochs_row.addWidget(self.epochs, 1)
        self.test_fraction = QDoubleSpinBox()
        self.test_fraction.setRange(0.05, 0.9)
        self.test_fraction.setSingleStep(0.05)
        self.thresholds_set = QCheckBox("override the model's thresholds")
        self.ok_threshold = QDoubleSpinBox()
        self.ng_threshold = QDoubleSpinBox()
        for spin in (self.ok_threshold, self.ng_threshold):
            spin.setRange(0, 1)
            spin.setDecimals(3)
            spin.setSingleStep(0.01)
            spin.setEnabled(False)
            self.thresholds_set.toggled.connect(spin.setEnabled)
        model = QGroupBox("Model and thresholds")
        form = QFormLayout(model)
        form.addRow("Inference device", self.device_box)
        form.addRow("Retrain family", self.family)
        form.addRow("Retrain supervision", self.supervision)
        form.addRow("Retrain backbone", self.backbone)
        form.addRow("Retrain epochs", epochs_box)
        form.addRow("Held back for evaluation", self.test_fraction)
        form.addRow(self.thresholds_set)
        form.addRow("OK below", self.ok_threshold)
        form.addRow("NG from", self.ng_threshold)

        self.database_url = QLineEdit()
        self.database_url.setPlaceholderText("empty = SQLite in the data directory; e.g. postgresql://user@host/db")
        self.data_dir = QLineEdit()
        self.data_dir.setPlaceholderText("empty = the default data directory")
        self.ok_sampling = QDoubleSpinBox()
        self.ok_sampling.setRange(0.0, 1.0)
        self.ok_sampling.setDecimals(3)
        self.ok_sampling.setSingleStep(0.05)
        storage = QGroupBox("Storage")
        form = QFormLayout(storage)
        form.addRow("Database URL", self.database_url)
        form.addRow("Data directory", self.data_dir)
        form.addRow("Keep OK images (share)", self.ok_sampling)
        note = QLabel("NG and REVIEW images are always kept. Camera changes apply at the next start of the line; "
                      "database and data directory at the next start of the application.")
        note.setObjectName("hint")
        note.setWordWrap(True)
        form.addRow(note)

        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.save_button = QPushButton("Save settings")
        self.save_button.setObjectName("primary")
        self.save_button.clicked.connect(self.save)
        self.revert_button = QPushButton("Revert")
        self.revert_button.clicked.connect(lambda: self.load(self.context.settings))
        buttons = QHBoxLayout()
        buttons.addWidget(self.message, 1)
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.save_button)

        columns = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(camera)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(model)
        right.addWidget(storage)
        right.addStretch(1)
        columns.addLayout(left, 1)
        columns.addLayout(right, 1)
        inner = QWidget()
        inner_layout = QVBoxLayout(inner)
        inner_layout.addLayout(columns)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(self.path_label)
        layout.addWidget(scroll, 1)
        layout.addLayout(buttons)
        context.user_changed.connect(lambda _u: self._update_rights())
        self.load(context.settings)
        self._update_rights()

    def _update_rights(self) -> None:
        may = self.context.may("settings")
        self.save_button.setEnabled(may)
        if not may:
            self.message.setText("Only engineers may change settings; you can look at them.")
            self.message.setObjectName("hint")
        elif self.message.text().startswith("Only engineers"):
            self.message.setText("")

    def load(self, settings: Settings) -> None:
        cam, mod, sto = settings.camera, settings.model, settings.storage
        self.source.setText(cam.source)
        self.producer.setText(cam.producer)
        self.device.setText(cam.device)
        self.exposure_set.setChecked(cam.exposure_us is not None)
        self.exposure.setValue(cam.exposure_us or 10_000)
        self.gain_set.setChecked(cam.gain_db is not None)
        self.gain.setValue(cam.gain_db or 0)
        self.roi_set.setChecked(cam.roi is not None)
        for spin, value in zip(self.roi, cam.roi or [0, 0, 640, 480]):
            spin.setValue(value)
        self.pixel_format.setCurrentText(cam.pixel_format)
        self.trigger.setCurrentText(cam.trigger)
        self.frame_rate.setValue(cam.frame_rate)
        self.device_box.setCurrentText(mod.device)
        self.family.setCurrentText(mod.retrain_family)
        self.supervision.setCurrentText(mod.retrain_supervision)
        self.backbone.setCurrentText(mod.retrain_backbone)
        self.epochs_set.setChecked(mod.retrain_epochs is not None)
        self.epochs.setValue(mod.retrain_epochs or 10)
        self.test_fraction.setValue(mod.test_fraction)
        self.thresholds_set.setChecked(mod.ok_threshold is not None)
        self.ok_threshold.setValue(mod.ok_threshold if mod.ok_threshold is not None else 0.3)
        self.ng_threshold.setValue(mod.ng_threshold if mod.ng_threshold is not None else 0.7)
        self.database_url.setText(sto.database_url)
        self.data_dir.setText(sto.data_dir)
        self.ok_sampling.setValue(sto.ok_sampling)

    def collect(self) -> Settings:
        settings = copy.deepcopy(self.context.settings)
        cam, mod, sto = settings.camera, settings.model, settings.storage
        cam.source = self.source.text().strip()
        cam.producer = self.producer.text().strip()
        cam.device = self.device.text().strip()
        cam.exposure_us = self.exposure.value() if self.exposure_set.isChecked() else None
        cam.gain_db = self.gain.value() if self.gain_set.isChecked() else None
        cam.roi = [spin.value() for spin in self.roi] if self.roi_set.isChecked() else None
        cam.pixel_format = self.pixel_format.currentText()
        cam.trigger = self.trigger.currentText()
        cam.frame_rate = self.frame_rate.value()
        mod.device = self.device_box.currentText()
        mod.retrain_family = self.family.currentText()
        mod.retrain_supervision = self.supervision.currentText()
        mod.retrain_backbone = self.backbone.currentText()
        mod.retrain_epochs = self.epochs.value() if self.epochs_set.isChecked() else None
        mod.test_fraction = round(self.test_fraction.value(), 3)
        if self.thresholds_set.isChecked():
            mod.ok_threshold, mod.ng_threshold = self.ok_threshold.value(), self.ng_threshold.value()
        else:
            mod.ok_threshold = mod.ng_threshold = None
        sto.database_url = self.database_url.text().strip()
        sto.data_dir = self.data_dir.text().strip()
        sto.ok_sampling = round(self.ok_sampling.value(), 3)
        return settings

    def save(self) -> bool:
        if not self.context.require("settings"):
            return False
        settings = self.collect()
        try:
            self.context.save_settings(settings)
        except SettingsError as exc:
            self.message.setText(f"Not saved: {exc}")
            self.message.setStyleSheet("color: #cf222e;")
            return False
        except OSError as exc:
            self.context.report(f"The settings file could not be written: {exc}")
            return False
        self.message.setStyleSheet("color: #1a7f37;")
        self.message.setText(f"Saved to {self.context.settings_path}.")
        return True
