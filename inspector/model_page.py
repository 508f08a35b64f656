"""Model screen: model versions with their figures, one-click Retrain, Promote and Roll back.

Retrain = export the tagged images (worker thread) -> train + evaluate on the held-back part in a child
process (core.training.jobs) with a progress bar, stage, time left, log and cancel -> register the new
package (not active) -> show its figures beside the active model's. Promote / Roll back switch the active
model in the database and hand the model to the running line without stopping it.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
                               QPlainTextEdit, QProgressBar, QPushButton, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from core.inference.flip_average import describe as describe_views
from core.inference.mask_refinement import describe as describe_refinement
from core.inference.package import package_figures
from core.training.jobs import JobSpec, JobState, TrainingJob
from inspector import workers

log = logging.getLogger(__name__)

FIGURES = (("image_auroc", "Image AUROC"), ("image_ap", "Image AP"), ("pixel_auroc", "Pixel AUROC"),
           ("pixel_ap", "Pixel AP"), ("aupro", "AUPRO"), ("miou", "mIoU"), ("iou", "IoU"))
FAMILIES = ("baseline", "supersimplenet", "cam")


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "time left: estimating…"
    seconds = int(round(seconds))
    return f"time left: {seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"time left: {seconds} s"


class ModelPage(QWidget):
    """Signals: ``retrain_finished(model_id | None, state)``."""

    retrain_finished = Signal(object, str)

    def __init__(self, context) -> None:
        super().__init__()
        self.context = context
        self.models: list = []
        self.job: TrainingJob | None = None
        self.run_id: int | None = None
        self.new_model_id: int | None = None
        self.compare_figures: dict | None = None  # the active model on the same held-back images
        self.compare_model_id: int | None = None
        self._log_buffer: list[str] = []
        self._last_db_update = 0.0

        title = QLabel("Models")
        title.setObjectName("pageTitle")
        self.table = QTableWidget(0, 4 + len(FIGURES))
        self.table.setHorizontalHeaderLabels(["", "ID", "Name", "Family"] + [name for _, name in FIGURES])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.active_label = QLabel("Active model: —")
        self.active_label.setObjectName("stat")
        self.active_label.setWordWrap(True)  # how the package refines masks and averages views makes it long

        self.promote_button = QPushButton("Promote selected")
        self.promote_button.setObjectName("primary")
        self.rollback_button = QPushButton("Roll back to previous")
        self.promote_button.clicked.connect(self.promote_selected)
        self.rollback_button.clicked.connect(self.roll_back)
        versions_buttons = QHBoxLayout()
        versions_buttons.addWidget(self.active_label, 1)
        versions_buttons.addWidget(self.promote_button)
        versions_buttons.addWidget(self.rollback_button)

        self.family_box = QComboBox()
        self.family_box.addItems(FAMILIES)
        self.family_box.setCurrentText(context.settings.model.retrain_family)
        self.retrain_button = QPushButton("Retrain from tagged images")
        self.retrain_button.setObjectName("primary")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("danger")
        self.retrain_button.clicked.connect(self.retrain)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("%p%")
        self.stage_label = QLabel("Idle")
        self.eta_label = QLabel("")
        self.eta_label.setObjectName("hint")
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.compare = QTableWidget(len(FIGURES), 2)
        self.compare.setHorizontalHeaderLabels(["Active", "New"])
        self.compare.setVerticalHeaderLabels([name for _, name in FIGURES])
        self.compare.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.compare.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.compare_note = QLabel("Figures on the held-back part of the tagged images appear here after a retrain.")
        self.compare_note.setObjectName("hint")
        self.compare_note.setWordWrap(True)

        retrain_row = QHBoxLayout()
        retrain_row.addWidget(QLabel("Family"))
        retrain_row.addWidget(self.family_box)
        retrain_row.addWidget(self.retrain_button)
        retrain_row.addWidget(self.cancel_button)
        retrain_row.addStretch(1)
        stage_row = QHBoxLayout()
        stage_row.addWidget(self.stage_label, 1)
        stage_row.addWidget(self.eta_label)
        retrain_left = QVBoxLayout()
        retrain_left.addLayout(retrain_row)
        retrain_left.addWidget(self.progress)
        retrain_left.addLayout(stage_row)
        retrain_left.addWidget(self.log_view, 1)
        compare_box = QVBoxLayout()
        compare_box.addWidget(self.compare, 1)
        compare_box.addWidget(self.compare_note)
        retrain_group = QGroupBox("Retrain")
        retrain_layout = QHBoxLayout(retrain_group)
        retrain_layout.addLayout(retrain_left, 3)
        retrain_layout.addLayout(compare_box, 2)

        versions_group = QGroupBox("Model versions")
        versions_layout = QVBoxLayout(versions_group)
        versions_layout.addWidget(self.table, 1)
        versions_layout.addLayout(versions_buttons)

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(versions_group, 2)
        layout.addWidget(retrain_group, 3)

        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(150)
        self.poll_timer.timeout.connect(self.poll_job)
        context.user_changed.connect(lambda _u: self._update_buttons())
        context.models_changed.connect(self.reload)
        self._update_buttons()
        self.reload()

    # -- versions ----------------------------------------------------------------------------------
    def reload(self) -> None:
        workers.submit(self.context.db.list_models, self._models_arrived,
                       lambda m: self.context.report(f"The model list could not be read: {m}"), "list-models")

    def _models_arrived(self, models: list) -> None:
        self.models = models
        selected = self.selected_model()
        keep_id = selected.id if selected else self.new_model_id
        self.table.setRowCount(len(models))
        active = None
        for row, model in enumerate(models):
            figures = package_figures(model.meta)
            values = ["● active" if model.is_active else "", str(model.id), model.name, model.family] + \
                     [_fmt(figures.get(key)) for key, _ in FIGURES]
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                if model.is_active:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                    if column == 0:
                        item.setForeground(Qt.GlobalColor.darkGreen)
                self.table.setItem(row, column, item)
            if model.is_active:
                active = model
            if model.id == keep_id:
                self.table.selectRow(row)
        inference = ", ".join(part for part in (describe_refinement(active.meta), describe_views(active.meta))
                              if part) if active is not None else ""
        self.active_label.setText(f"Active model: #{active.id} {active.name} ({active.family})"
                                  + (f", {inference}" if inference else "") if active
                                  else "Active model: none — train one and promote it")
        self._fill_compare()
        self._update_buttons()

    def selected_model(self):
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows or rows[0].row() >= len(self.models):
            return None
        return self.models[rows[0].row()]

    def active_model(self):
        return next((m for m in self.models if m.is_active), None)

    def _fill_compare(self) -> None:
        active = self.active_model()
        new = next((m for m in self.models if m.id == self.new_model_id), None)
        same_images = (new is not None and active is not None and self.compare_figures is not None
                       and self.compare_model_id == active.id)
        for column, model in enumerate((active, new)):
            figures = package_figures(model.meta) if model else {}
            if column == 0 and same_images:
                figures = self.compare_figures
            for row, (key, _) in enumerate(FIGURES):
                self.compare.setItem(row, column, QTableWidgetItem(_fmt(figures.get(key)) if model else "—"))
        self.compare.setHorizontalHeaderLabels([f"Active #{active.id}" if active else "Active",
                                                f"New #{new.id}" if new else "New"])
        if same_images:
            self.compare_note.setText("Both models measured on the same held-back tagged images.")
        elif new is not None:
            self.compare_note.setText("Active model: the figures stored with it (its own test images).")

    def _update_buttons(self) -> None:
        training = self.job is not None and not self.job.finished
        selected = self.selected_model()
        self.promote_button.setEnabled(self.context.may("promote") and selected is not None
                                       and not selected.is_active)
        self.rollback_button.setEnabled(self.context.may("promote") and any(
            m.activated_at is not None and not m.is_active for m in self.models))
        self.retrain_button.setEnabled(self.context.may("retrain") and not training)
        self.family_box.setEnabled(not training)
        self.cancel_button.setEnabled(training)

    def promote_selected(self) -> None:
        model = self.selected_model()
        if model is None or not self.context.require("promote"):
            return
        db, user = self.context.db, self.context.user
        workers.submit(lambda: (db.activate_model(model.id, user), db.get_model(model.id))[1], self._activated,
                       lambda m: self.context.report(f"The model was not promoted: {m}"), "promote")

    def roll_back(self) -> None:
        if not self.context.require("promote"):
            return
        db, user = self.context.db, self.context.user
        workers.submit(lambda: db.get_model(db.rollback_model(user)), self._activated,
                       lambda m: self.context.report(f"Roll back failed: {m}"), "rollback")

    def _activated(self, model) -> None:
        self.context.tell(f"Model #{model.id} {model.name} is now active; the line uses it from the next frame.")
        if self.context.line is not None:
            self.context.line.use_model(model.package_path, model.id)
        self.context.models_changed.emit()

    # -- retrain -----------------------------------------------------------------------------------
    def retrain(self) -> None:
        if not self.context.require("retrain"):
            return
        if self.job is not None and not self.job.finished:
            return
        settings, db, user = self.context.settings, self.context.db, self.context.user
        family = self.family_box.currentText()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        dataset_dir = self.context.data_dir / "exports" / stamp
        package_dir = self.context.data_dir / "models" / f"{family}-{stamp}"
        self.new_model_id = None
        self.compare_figures = None
        active = self.active_model()
        self.compare_model_id = active.id if active else None
        compare_with = Path(active.package_path) if active else None
        self.log_view.clear()
        self._fill_compare()
        self.progress.setValue(0)
        self.stage_label.setText("Exporting the tagged images…")
        self.eta_label.setText("")
        self.retrain_button.setEnabled(False)

        def export():
            counts = db.export_tagged(dataset_dir, test_fraction=settings.model.test_fraction, seed=0)
            if counts.get("train_good", 0) == 0:
                raise ValueError("no OK-tagged images with a stored image to train on; tag some good parts first")
            if counts.get("test_good", 0) + counts.get("test_defect", 0) == 0:
                raise ValueError("too few tagged images to hold some back for evaluation; tag more images")
            supervision = _supervision_for(family, settings.model.retrain_supervision, counts)
            run_id = db.create_training_run(family, supervision, dataset_dir, user)
            return counts, run_id, supervision

        def exported(result) -> None:
            counts, run_id, supervision = result
            self.run_id = run_id
            self._append_log(f"exported tagged images to {dataset_dir}: " +
                             ", ".join(f"{k} {v}" for k, v in counts.items()))
            spec = JobSpec(dataset=dataset_dir, family=family, out=package_dir,
                           supervision=supervision, backbone=settings.model.retrain_backbone,
                           epochs=settings.model.retrain_epochs, device=settings.model.device,
                           compare_with=compare_with if compare_with and compare_with.is_dir() else None)
            self.job = TrainingJob(spec)
            try:
                self.job.start()
            except Exception as exc:  # e.g. cannot spawn a process
                self._finish(JobState.FAILED, f"the training process could not start: {exc}")
                return
            self._db_update(status="running", stage="start")
            self.poll_timer.start()
            self._update_buttons()

        def failed(message: str) -> None:
            self.stage_label.setText("Retrain did not start")
            self.context.report(f"Retrain did not start: {message}")
            self._update_buttons()

        workers.submit(export, exported, failed, "export-tagged")

    def cancel(self) -> None:
        if self.job is not None and not self.job.finished:
            self.job.cancel()
            self.stage_label.setText("Cancelling…")
            self._append_log("cancel requested")

    def poll_job(self) -> None:
        if self.job is None:
            return
        for message in self.job.poll():
            if message.kind == "progress" and message.event is not None:
                event = message.event
                self.progress.setValue(int(round(event.fraction * 1000)))
                self.stage_label.setText(f"Stage: {event.stage}  {event.message}")
                self.eta_label.setText(_eta(event.eta_s))
            elif message.kind == "log":
                self._append_log(message.text)
            elif message.kind == "compare":
                self.compare_figures = message.figures
        if time.monotonic() - self._last_db_update > 1.0 and self.job.last_event is not None and not self.job.finished:
            self._db_update(progress=min(1.0, self.job.last_event.fraction), stage=self.job.last_event.stage)
        if self.job.finished:
            self.poll_timer.stop()
            self._finish(self.job.state, self.job.error or "")

    def _finish(self, state: JobState, error: str) -> None:
        job = self.job
        if state is JobState.DONE and job is not None and job.result is not None:
            self.stage_label.setText("Trained and evaluated; registering the new model…")
            self.eta_label.setText("")
            db, user, path = self.context.db, self.context.user, job.result

            def register():
                from core.inference.package import read_meta

                meta = read_meta(path)
                return db.register_model(path, meta, user=user)

            def registered(model_id: int) -> None:
                self.new_model_id = model_id
                self._append_log(f"registered as model #{model_id} (not active)")
                self._db_update(status="succeeded", progress=1.0, stage="done", result_path=str(path))
                self.stage_label.setText(f"New model #{model_id} ready. Compare, then Promote to use it.")
                self.context.models_changed.emit()
                self.retrain_finished.emit(model_id, "done")
                self._update_buttons()

            def failed(message: str) -> None:
                self._db_update(status="failed", stage="register")
                self.context.report(f"The new model could not be registered: {message}")
                self.retrain_finished.emit(None, "failed")
                self._update_buttons()

            workers.submit(register, registered, failed, "register-model")
            return
        if state is JobState.CANCELLED:
            self.stage_label.setText("Retrain cancelled; the active model is unchanged.")
            self._db_update(status="cancelled")
            self.retrain_finished.emit(None, "cancelled")
        else:
            self.stage_label.setText("Retrain failed; the active model is unchanged.")
            self._append_log(f"error: {error}")
            self._db_update(status="failed")
            self.context.report(f"Retrain failed: {error}")
            self.retrain_finished.emit(None, "failed")
        self._update_buttons()

    def _append_log(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        for line in text.rstrip().splitlines() or [""]:
            self.log_view.appendPlainText(f"{stamp}  {line}")
        self._log_buffer.append(text.rstrip() + "\n")

    def _db_update(self, **fields) -> None:
        """Record the run's progress and new log lines in the database (worker thread, at most ~1/s)."""
        if self.run_id is None:
            return
        self._last_db_update = time.monotonic()
        log_text, self._log_buffer = "".join(self._log_buffer), []
        db, run_id = self.context.db, self.run_id
        workers.submit(lambda: db.update_training_run(run_id, log_append=log_text or None, **fields),
                       on_error=lambda m: log.error("training run %s not updated: %s", run_id, m),
                       name="update-run")

    def shutdown(self) -> None:
        if self.job is not None and not self.job.finished:
            self.job.kill()


def _supervision_for(family: str, wanted: str, counts: dict) -> str:
    """The settings' supervision, lowered to what the export can support (e.g. 'mixed' with no masks)."""
    if family == "baseline":
        return "unsupervised"
    if counts.get("train_defect", 0) == 0:
        return "unsupervised"
    if wanted in ("mixed", "full") and counts.get("masks", 0) == 0:
        return "weak"
    return wanted
