"""Calibrate screen: score histograms of tagged OK vs NG images; thresholds by dragging or from target rates.

Scores come from the database (the active model's stored scores of tagged inspections) or, on request, from
re-scoring every tagged image with the active model in a worker thread. Without NG tags the miss rate cannot
be measured: the screen says so and proposes no threshold (core.inference.calibration is not asked to guess).
"""
from __future__ import annotations

import logging

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (QDoubleSpinBox, QGroupBox, QHBoxLayout, QLabel, QPushButton,
                               QVBoxLayout, QWidget)

from core.inference.calibration import CalibrationError, image_thresholds, outcome_rates, review_shares
from core.inference.result import Thresholds
from inspector import workers
from inspector.styles import THRESHOLD_PENS, VERDICT_COLOURS

log = logging.getLogger(__name__)
BINS = 50


def rescore_tagged(db, package_path: str, device: str, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and labels (N,) of every tagged inspection with a stored image, by the given model."""
    from core.inference.detector import Detector

    detector = Detector.load(package_path, device=device)
    rows = [r for r in db.tagged_for_export() if r[2] is not None]
    scores, labels = [], []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        images = [db.load_image(r[0]) for r in chunk]
        chunk_scores, _maps = detector.infer(images)
        scores.extend(float(s) for s in np.clip(chunk_scores, 0.0, 1.0))
        labels.extend(1 if r[1] == "NG" else 0 for r in chunk)
    return np.asarray(scores, np.float64), np.asarray(labels, np.int64)


def stored_scores(db, model_id: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = db.tagged_scores(model_id=model_id)
    return (np.asarray([s for s, _ in pairs], np.float64),
            np.asarray([1 if label == "NG" else 0 for _, label in pairs], np.int64))


class CalibrateView(QWidget):
    def __init__(self, context) -> None:
        super().__init__()
        self.context = context
        self.model = None  # the active ModelVersionView
        self.scores = np.zeros(0)
        self.labels = np.zeros(0, np.int64)

        title = QLabel("Calibrate thresholds")
        title.setObjectName("pageTitle")
        self.source_label = QLabel("")
        self.source_label.setObjectName("hint")
        self.source_label.setWordWrap(True)  # the thresholds' origin and REVIEW shares run to two lines
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "score", color="#24292f")
        self.plot.setLabel("left", "tagged images", color="#24292f")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen("#24292f")
        self.plot.setXRange(0, 1)
        legend = self.plot.addLegend(offset=(-10, 10), labelTextColor="#24292f")
        ok_colour, ng_colour = pg.mkColor(VERDICT_COLOURS["OK"]), pg.mkColor(VERDICT_COLOURS["NG"])
        self.ok_curve = pg.PlotCurveItem(x=[0.0, 1.0], y=[0.0], stepMode="center", fillLevel=0, pen=pg.mkPen(ok_colour, width=2),
                                         brush=pg.mkBrush(ok_colour.red(), ok_colour.green(), ok_colour.blue(), 70))
        self.ng_curve = pg.PlotCurveItem(x=[0.0, 1.0], y=[0.0], stepMode="center", fillLevel=0, pen=pg.mkPen(ng_colour, width=2),
                                         brush=pg.mkBrush(ng_colour.red(), ng_colour.green(), ng_colour.blue(), 70))
        self.plot.addItem(self.ok_curve)
        self.plot.addItem(self.ng_curve)
        legend.addItem(self.ok_curve, "tagged OK")
        legend.addItem(self.ng_curve, "tagged NG")
        self.ok_line = pg.InfiniteLine(0.3, angle=90, movable=True, bounds=(0, 1),
                                       pen=pg.mkPen(THRESHOLD_PENS["ok"], width=3), hoverPen=pg.mkPen("#000", width=3),
                                       label="OK below {value:.3f}", labelOpts={"position": 0.9, "color": THRESHOLD_PENS["ok"]})
        self.ng_line = pg.InfiniteLine(0.7, angle=90, movable=True, bounds=(0, 1),
                                       pen=pg.mkPen(THRESHOLD_PENS["ng"], width=3), hoverPen=pg.mkPen("#000", width=3),
                                       label="NG from {value:.3f}", labelOpts={"position": 0.8, "color": THRESHOLD_PENS["ng"]})
        for line in (self.ok_line, self.ng_line):
            self.plot.addItem(line)
            line.sigPositionChanged.connect(self._line_moved)

        self.miss_spin = QDoubleSpinBox()
        self.miss_spin.setRange(0.0, 50.0)
        self.miss_spin.setDecimals(1)
        self.miss_spin.setSuffix(" %")
        self.miss_spin.setValue(1.0)
        self.alarm_spin = QDoubleSpinBox()
        self.alarm_spin.setRange(0.0, 50.0)
        self.alarm_spin.setDecimals(1)
        self.alarm_spin.setSuffix(" %")
        self.alarm_spin.setValue(1.0)
        self.from_rates = QPushButton("Set thresholds from these rates")
        self.from_rates.clicked.connect(self.set_from_rates)
        self.readout = QLabel("")
        self.readout.setWordWrap(True)
        self.readout.setObjectName("stat")
        self.readout.setMinimumHeight(110)
        self.guard = QLabel("")
        self.guard.setObjectName("errorBar")
        self.guard.setWordWrap(True)
        self.guard.setVisible(False)
        self.apply_button = QPushButton("Apply to active model")
        self.apply_button.setObjectName("primary")
        self.apply_button.clicked.connect(self.apply)
        self.reload_button = QPushButton("Reload stored scores")
        self.reload_button.clicked.connect(self.reload)
        self.rescore_button = QPushButton("Re-score tagged images with the active model")
        self.rescore_button.clicked.connect(self.rescore)

        targets = QGroupBox("From target rates")
        form = QVBoxLayout(targets)
        for text, spin in (("Highest miss rate (NG passed as OK):", self.miss_spin),
                           ("Highest false-alarm rate (OK called NG):", self.alarm_spin)):
            form.addWidget(QLabel(text))
            form.addWidget(spin)
        form.addWidget(self.from_rates)
        outcome = QGroupBox("With these thresholds")
        outcome_layout = QVBoxLayout(outcome)
        outcome_layout.addWidget(self.readout)
        side = QVBoxLayout()
        side.addWidget(targets)
        side.addWidget(outcome)
        side.addStretch(1)
        side.addWidget(self.reload_button)
        side.addWidget(self.rescore_button)
        side.addWidget(self.apply_button)
        side_widget = QWidget()
        side_widget.setLayout(side)
        side_widget.setFixedWidth(380)
        body = QHBoxLayout()
        plot_box = QVBoxLayout()
        plot_box.addWidget(self.plot, 1)
        hint = QLabel("Drag the green (OK) and red (NG) lines. Scores between them go to the REVIEW queue.")
        hint.setObjectName("hint")
        plot_box.addWidget(hint)
        body.addLayout(plot_box, 1)
        body.addWidget(side_widget)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(self.source_label)
        layout.addWidget(self.guard)
        layout.addLayout(body, 1)

        context.user_changed.connect(lambda _u: self._update_buttons())
        context.models_changed.connect(self.reload)
        context.tags_changed.connect(self._tags_changed)
        self._dirty = True
        self._update_buttons()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._dirty:
            self.reload()

    def _tags_changed(self) -> None:
        self._dirty = True
        if self.isVisible():
            self.reload()

    # -- data ----------------------------------------------------------------------------------------
    def reload(self) -> None:
        self._dirty = False
        db = self.context.db

        def work():
            model = db.active_model()
            if model is None:
                return None, np.zeros(0), np.zeros(0, np.int64)
            return (model, *stored_scores(db, model.id))

        workers.submit(work, self._scores_arrived,
                       lambda m: self.context.report(f"Tagged scores could not be read: {m}"), "calibrate-load")

    def rescore(self) -> None:
        if self.model is None:
            return
        db, path, device = self.context.db, self.model.package_path, self.context.settings.model.device
        model = self.model
        self.source_label.setText("Re-scoring the tagged images with the active model…")
        self.rescore_button.setEnabled(False)
        workers.submit(lambda: (model, *rescore_tagged(db, path, device)), self._scores_arrived,
                       lambda m: self.context.report(f"Re-scoring failed: {m}"), "calibrate-rescore")

    def _scores_arrived(self, loaded) -> None:
        model, scores, labels = loaded
        self.model, self.scores, self.labels = model, scores, labels
        self.rescore_button.setEnabled(True)
        if model is None:
            self.source_label.setText("No active model: train and promote one on the Models page first.")
        else:
            n_ok, n_ng = int((labels == 0).sum()), int((labels == 1).sum())
            self.source_label.setText(f"Model #{model.id} {model.name}: {n_ok} images tagged OK, {n_ng} tagged NG."
                                      + _calibration_origin(model.meta.get("calibration")))
            thresholds = model.meta.get("thresholds", {})
            self._set_lines(float(thresholds.get("ok", 0.3)), float(thresholds.get("ng", 0.7)))
        self._draw()
        self._update_buttons()

    def _draw(self) -> None:
        edges = np.linspace(0.0, 1.0, BINS + 1)
        peak = 0
        for curve, label in ((self.ok_curve, 0), (self.ng_curve, 1)):
            counts, _ = np.histogram(self.scores[self.labels == label], bins=edges)
            curve.setData(edges, counts.astype(float), stepMode="center", fillLevel=0)
            peak = max(peak, int(counts.max()))
        self.plot.setYRange(0, max(5, peak) * 1.1, padding=0)
        self._line_moved()

    # -- thresholds ----------------------------------------------------------------------------------
    def thresholds(self) -> tuple[float, float]:
        return float(self.ok_line.value()), float(self.ng_line.value())

    def _set_lines(self, ok: float, ng: float) -> None:
        self._setting = True  # both lines move together: no pushing while they do
        self.ng_line.setValue(max(ok, ng))
        self.ok_line.setValue(min(ok, ng))
        self._setting = False
        self._line_moved()

    def _line_moved(self, *_args) -> None:
        if getattr(self, "_setting", False):
            return
        ok, ng = self.thresholds()
        if ok > ng:  # keep ok <= ng: the line being dragged pushes the other one
            self._setting = True
            if self.sender() is self.ng_line:
                self.ok_line.setValue(ng)
            else:
                self.ng_line.setValue(ok)
            self._setting = False
            ok, ng = self.thresholds()
        r = outcome_rates(self.scores, self.labels, ok, ng)
        pct = lambda v: "— (no such tags)" if v is None else f"{100 * v:.1f} %"  # noqa: E731
        self.readout.setText(f"OK below {ok:.3f}, NG from {ng:.3f}\n\nMissed defects: {pct(r['miss'])}\n"
                             f"False alarms: {pct(r['false_alarm'])}\nSent to REVIEW: {pct(r['review'])}")
        self._update_guard()

    def _update_guard(self) -> None:
        n_ok, n_ng = int((self.labels == 0).sum()), int((self.labels == 1).sum())
        if self.model is not None and n_ng == 0:
            self.guard.setText("No image is tagged NG yet, so the miss rate cannot be measured and no OK "
                               "threshold is suggested. Tag defective images on the Review screen first; you may "
                               "still set the lines by hand.")
        elif self.model is not None and n_ok == 0:
            self.guard.setText("No image is tagged OK yet, so the false-alarm rate cannot be measured. "
                               "Tag good images on the Review screen first.")
        else:
            self.guard.setText("")
        self.guard.setVisible(bool(self.guard.text()))

    def set_from_rates(self) -> None:
        n_ng = int((self.labels == 1).sum())
        if n_ng == 0 or int((self.labels == 0).sum()) == 0:
            self._update_guard()
            return
        try:
            ok, ng = image_thresholds(self.scores, self.labels, miss_rate=self.miss_spin.value() / 100.0,
                                      false_alarm_rate=self.alarm_spin.value() / 100.0)
        except CalibrationError as exc:
            self.context.report(f"Thresholds cannot be derived: {exc}")
            return
        self._set_lines(ok, ng)

    def _update_buttons(self) -> None:
        may = self.context.may("calibrate")
        has_both = int((self.labels == 1).sum()) > 0 and int((self.labels == 0).sum()) > 0
        self.from_rates.setEnabled(has_both)
        self.apply_button.setEnabled(may and self.model is not None)
        self.rescore_button.setEnabled(self.model is not None)
        for line in (self.ok_line, self.ng_line):
            line.setMovable(may)

    def apply(self) -> None:
        if self.model is None or not self.context.require("calibrate"):
            return
        ok, ng = self.thresholds()
        model, db, user = self.model, self.context.db, self.context.user
        scores, labels = self.scores, self.labels
        tagged = {"good": int((self.labels == 0).sum()), "defect": int((self.labels == 1).sum())}

        def work():
            from core.inference.package import read_meta, write_meta

            meta = read_meta(model.package_path)
            thresholds = Thresholds(ok=round(ok, 6), ng=round(ng, 6), pixel=float(meta["thresholds"]["pixel"]))
            meta["thresholds"] = thresholds.to_dict()
            previous = meta.get("calibration") or {}
            meta["calibration"] = {"source": "tagged images, on the Calibrate page", **tagged, "note": "",
                                   "review": review_shares(scores, labels, thresholds)}
            if "mask_refinement" in previous:  # how the trainer chose it stays on record: this page keeps it
                meta["calibration"]["mask_refinement"] = previous["mask_refinement"]
            write_meta(model.package_path, meta)
            db.update_model_meta(model.id, meta, user)
            return thresholds

        def done(thresholds: Thresholds) -> None:
            if self.context.line is not None and self.context.line.model_id == model.id:
                self.context.line.set_thresholds(thresholds)
            self.context.tell(f"Thresholds of model #{model.id} set to OK below {thresholds.ok:.3f}, "
                              f"NG from {thresholds.ng:.3f}; the line uses them now.")
            self.context.models_changed.emit()

        workers.submit(work, done, lambda m: self.context.report(f"Thresholds were not applied: {m}"), "calibrate")


def _calibration_origin(record: object) -> str:
    """' Its thresholds were set on …' from a package's meta["calibration"] ('' when it has none)."""
    if not isinstance(record, dict) or "source" not in record:
        return ""
    origin = (f" Its thresholds were set on {record.get('good', '?')} good and {record.get('defect', '?')} defect "
              f"{record['source']}.")
    review = record.get("review")
    if isinstance(review, dict) and isinstance(review.get("good"), (int, float)):
        defect = review.get("defect")
        origin += (f" They sent {review['good']:.0%} of those good"
                   + (f" and {defect:.0%} of those defect" if isinstance(defect, (int, float)) else "")
                   + " images to REVIEW.")
    return origin
