"""Live screen: the camera image with the defect overlay, the verdict banner, the last verdicts, line state.

A timer polls the line's latest-result slot (~30 Hz) and redraws only when a new frame arrived; the
statistics are polled at 2 Hz. Drawing is cheap numpy on the displayed frame only (colour map by lookup
table, contour by OpenCV on the mask), so the event loop never waits on inference.
"""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QPainter, QPen
from PySide6.QtWidgets import (QCheckBox, QGridLayout, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QSlider,
                               QVBoxLayout, QWidget)

from inspector.line import LiveFrame
from inspector.styles import VERDICT_COLOURS, set_property

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)
STRIP_LENGTH = 24


def _heat_lut() -> np.ndarray:
    """(256, 3) uint8 colour map: dark red -> orange -> yellow (readable over grey metal)."""
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(0.5 + 1.5 * x, 0, 1)
    g = np.clip(1.6 * x - 0.35, 0, 1)
    b = np.clip(3.0 * x - 2.2, 0, 1)
    return (np.stack([r, g, b], axis=1) * 255).astype(np.uint8)


HEAT_LUT = _heat_lut()


def heat_lut_rgba(opacity: float) -> np.ndarray:
    """(256, 4) uint8: colour plus alpha. Transparent below index 128 (the pixel threshold), so only what the
    model calls defective is tinted; from half of ``opacity`` at the threshold to full at twice it."""
    lut = np.empty((256, 4), np.uint8)
    lut[:, :3] = HEAT_LUT
    index = np.arange(256, dtype=np.float32)
    ramp = np.where(index < 128, 0.0, 0.5 + 0.5 * (index - 128.0) / 127.0)
    lut[:, 3] = (ramp * (255 * opacity)).astype(np.uint8)
    return lut


def heat_index(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """(H, W) uint8 index into the heat LUT: the pixel threshold maps to 128 (mid-scale), saturating at 255."""
    scale = 2.0 * pixel_threshold if pixel_threshold > 0 else float(anomaly_map.max() or 1.0)
    # convertScaleAbs: scale, round and saturate to uint8 in one C pass (maps are >= 0)
    return cv2.convertScaleAbs(np.asarray(anomaly_map, np.float32), alpha=255.0 / scale)


def heat_rgba(anomaly_map: np.ndarray, pixel_threshold: float, opacity: float) -> np.ndarray:
    """(H, W, 4) uint8 overlay (for reports and tests; the view lets pyqtgraph apply the LUT)."""
    return heat_lut_rgba(opacity)[heat_index(anomaly_map, pixel_threshold)]


def contour_xy(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outline of a bool (H, W) mask as x, y arrays with NaN breaks between separate contours."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros(0), np.zeros(0)
    parts = []
    for contour in contours:
        pts = contour.reshape(-1, 2).astype(np.float64) + 0.5
        parts.append(np.vstack([pts, pts[:1], [[np.nan, np.nan]]]))
    xy = np.vstack(parts)
    return xy[:, 0], xy[:, 1]


class ImageOverlayView(pg.GraphicsLayoutWidget):
    """Image + heat map + contour, zoom/pan with the mouse (wheel, drag), aspect ratio locked."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setBackground("#0d1117")
        self.view = self.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem()
        self.heat_item = pg.ImageItem()
        self.contour_item = pg.PlotCurveItem(pen=pg.mkPen("#00e5ff", width=2), connect="finite")
        for item in (self.image_item, self.heat_item, self.contour_item):
            self.view.addItem(item)
        self.heat_item.setZValue(1)
        self.contour_item.setZValue(2)
        self.show_overlay = True
        self._opacity = 0.5
        self._lut = heat_lut_rgba(self._opacity)
        self._shape: tuple[int, int] | None = None

    @property
    def opacity(self) -> float:
        return self._opacity

    @opacity.setter
    def opacity(self, value: float) -> None:
        self._opacity = float(value)
        self._lut = heat_lut_rgba(self._opacity)

    def show_frame(self, image: np.ndarray, anomaly_map: np.ndarray | None, mask: np.ndarray | None,
                   pixel_threshold: float) -> None:
        high = 65535 if image.dtype == np.uint16 else 255
        self.image_item.setImage(image, autoLevels=False, levels=(0, high))
        if self.show_overlay and anomaly_map is not None:
            self.heat_item.setImage(heat_index(anomaly_map, pixel_threshold), autoLevels=False, levels=(0, 255),
                                    lut=self._lut)
            self.heat_item.setVisible(True)
        else:
            self.heat_item.setVisible(False)
        if self.show_overlay and mask is not None and mask.any():
            x, y = contour_xy(mask)
            self.contour_item.setData(x, y)
            self.contour_item.setVisible(True)
        else:
            self.contour_item.setVisible(False)
        shape = image.shape[:2]
        if shape != self._shape:  # fit the view once per new image size; the user's zoom is kept otherwise
            self._shape = shape
            self.view.autoRange(padding=0.0)

    def reset_zoom(self) -> None:
        self.view.autoRange(padding=0.0)


class VerdictBanner(QWidget):
    """Large verdict with the score and the thresholds underneath."""

    def __init__(self) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel("—")
        self.label.setObjectName("banner")
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setMinimumHeight(96)
        self.detail = QLabel("no result yet\n")
        self.detail.setObjectName("stat")
        self.detail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.label)
        layout.addWidget(self.detail)
        set_property(self.label, "verdict", "NONE")

    def show_result(self, verdict: str, score: float, ok: float, ng: float) -> None:
        self.label.setText(verdict)
        set_property(self.label, "verdict", verdict)
        self.detail.setText(f"score {score:.3f}\nOK below {ok:.3f}  ·  NG from {ng:.3f}")

    def clear(self, text: str = "—") -> None:
        self.label.setText(text)
        self.detail.setText("no result\n")
        set_property(self.label, "verdict", "NONE")


class VerdictStrip(QWidget):
    """The last STRIP_LENGTH verdicts, newest on the left, painted in one pass (no per-chip widgets, so a
    new verdict costs one repaint, not a restyle of every chip)."""

    CHIP_W, CHIP_H, GAP = 36, 22, 3

    def __init__(self) -> None:
        super().__init__()
        self.history: deque[str] = deque(maxlen=STRIP_LENGTH)
        self.setFixedHeight(self.CHIP_H + 2)
        self.setMinimumWidth(8 * (self.CHIP_W + self.GAP))
        # explicit QPen/QBrush objects: implicit QColor -> QBrush conversions in paint code hit a reference
        # counting bug in PySide6 6.12 ("none_dealloc") after thousands of calls
        self._brushes = {k: QBrush(QColor(v)) for k, v in VERDICT_COLOURS.items()}
        self._no_pen = QPen(Qt.PenStyle.NoPen)
        self._text_pen = QPen(QColor("white"))
        self._align = Qt.AlignmentFlag.AlignCenter

    def push(self, verdict: str) -> None:
        self.history.appendleft(verdict)
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        font = painter.font()
        font.setBold(True)
        painter.setFont(font)
        x = 0
        for verdict in self.history:
            if x + self.CHIP_W > self.width():
                break
            rect = QRectF(x, 1, self.CHIP_W, self.CHIP_H)
            painter.setPen(self._no_pen)
            painter.setBrush(self._brushes.get(verdict, self._brushes["NONE"]))
            painter.drawRoundedRect(rect, 3.0, 3.0)
            painter.setPen(self._text_pen)
            painter.drawText(rect, self._align, "R" if verdict == "REVIEW" else verdict)
            x += self.CHIP_W + self.GAP
        painter.end()


class LiveView(QWidget):
    """The Live screen. ``frames_shown`` counts redraws (for the benchmark)."""

    frame_shown = Signal(object)  # LiveFrame, after it was drawn (the Charts screen listens)

    def __init__(self, context) -> None:
        super().__init__()
        self.context = context
        self.line = context.line
        self.frames_shown = 0
        self._last_seq: int | None = None
        self._last_state = "stopped"

        self.image_view = ImageOverlayView()
        self.image_view.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.banner = VerdictBanner()
        self.strip = VerdictStrip()

        self.start_button = QPushButton("Start line")
        self.start_button.setObjectName("primary")
        self.start_button.setProperty("class", "big")
        self.stop_button = QPushButton("Stop line")
        self.stop_button.setObjectName("danger")
        self.start_button.clicked.connect(lambda: self.line.start())
        self.stop_button.clicked.connect(lambda: self.line.stop())

        self.overlay_box = QCheckBox("Defect overlay")
        self.overlay_box.setChecked(True)
        self.overlay_box.toggled.connect(self._overlay_toggled)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(50)
        self.opacity_slider.setMaximumWidth(160)
        self.opacity_slider.valueChanged.connect(self._opacity_changed)
        fit = QPushButton("Fit image")
        fit.clicked.connect(self.image_view.reset_zoom)

        self.state_label = QLabel("stopped")
        self.state_label.setObjectName("state")
        self.model_label = QLabel("model: —")
        self.stat_labels: dict[str, QLabel] = {}
        stats_grid = QGridLayout()
        for row, (key, title) in enumerate((("fps", "Frames/s"), ("latency", "Latency p50 / p99"),
                                            ("frames", "Frames in / inferred"), ("drops", "Dropped"),
                                            ("counts", "OK / NG / REVIEW"))):
            name = QLabel(title)
            name.setObjectName("hint")
            value = QLabel("—")
            value.setObjectName("stat")
            stats_grid.addWidget(name, row, 0)
            stats_grid.addWidget(value, row, 1)
            self.stat_labels[key] = value

        side = QVBoxLayout()
        side.addWidget(self.banner)
        side.addSpacing(8)
        camera_row = QHBoxLayout()
        camera_title = QLabel("Camera:")
        camera_title.setObjectName("hint")
        camera_row.addWidget(camera_title)
        camera_row.addWidget(self.state_label, 1)
        side.addLayout(camera_row)
        side.addWidget(self.model_label)
        side.addLayout(stats_grid)
        side.addStretch(1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        side.addLayout(buttons)
        side_widget = QWidget()
        side_widget.setLayout(side)
        side_widget.setFixedWidth(340)

        controls = QHBoxLayout()
        controls.addWidget(self.overlay_box)
        opacity_label = QLabel("Opacity")
        opacity_label.setObjectName("hint")
        controls.addWidget(opacity_label)
        controls.addWidget(self.opacity_slider)
        controls.addWidget(fit)
        controls.addStretch(1)
        controls.addWidget(QLabel("Last verdicts (newest left):"))

        left = QVBoxLayout()
        left.addWidget(self.image_view, 1)
        left.addLayout(controls)
        left.addWidget(self.strip)

        layout = QHBoxLayout(self)
        layout.addLayout(left, 1)
        layout.addWidget(side_widget)

        self.line.running_changed.connect(self._update_buttons)
        self.line.busy_changed.connect(lambda _busy: self._update_buttons())
        self.line.model_loaded.connect(lambda name: self.model_label.setText(f"model: {name}"))
        context.user_changed.connect(lambda _user: self._update_buttons())
        self._update_buttons()

        self.frame_timer = QTimer(self)
        self.frame_timer.setInterval(33)
        self.frame_timer.timeout.connect(self.poll_frame)
        self.frame_timer.start()
        self.stats_timer = QTimer(self)
        self.stats_timer.setInterval(500)
        self.stats_timer.timeout.connect(self.poll_stats)
        self.stats_timer.start()

    def _update_buttons(self, *_args) -> None:
        may = self.context.may("start_stop")
        self.start_button.setEnabled(may and not self.line.running and not self.line.busy)
        self.stop_button.setEnabled(may and self.line.running and not self.line.busy)
        if not self.line.running:
            self.banner.clear("STOPPED" if not self.line.busy else "…")
            self._last_seq = None
            self._last_state = "stopped"
            self._set_state("stopped", "starting…" if self.line.busy else "")

    def _overlay_toggled(self, on: bool) -> None:
        self.image_view.show_overlay = on
        self._last_seq = None  # redraw the current frame

    def _opacity_changed(self, value: int) -> None:
        self.image_view.opacity = value / 100.0
        self._last_seq = None

    def poll_frame(self) -> bool:
        """Draw the newest result if there is one; True when something was drawn."""
        frame = self.line.latest()
        if frame is None or frame.sequence == self._last_seq:
            return False
        self.show_frame(frame)
        return True

    def show_frame(self, frame: LiveFrame) -> None:
        new = frame.sequence != self._last_seq
        self._last_seq = frame.sequence
        self.image_view.show_frame(frame.image, frame.anomaly_map, frame.mask, frame.pixel)
        self.banner.show_result(frame.verdict, frame.score, frame.ok, frame.ng)
        if new:
            self.strip.push(frame.verdict)
            self.frames_shown += 1
            self.frame_shown.emit(frame)

    def poll_stats(self) -> None:
        stats = self.line.stats()
        if not stats:
            return
        self.show_stats(stats)

    def show_stats(self, stats: dict) -> None:
        get = stats.get
        self.stat_labels["fps"].setText(f"{get('fps', 0.0):.1f}")
        self.stat_labels["latency"].setText(f"{get('latency_p50_ms', 0.0):.0f} / {get('latency_p99_ms', 0.0):.0f} ms")
        self.stat_labels["frames"].setText(f"{get('frames_in', 0)} / {get('inferred', 0)}")
        self.stat_labels["drops"].setText(str(get("dropped", 0)))
        counts = get("verdicts", {}) or {}
        self.stat_labels["counts"].setText(f"{counts.get('OK', 0)} / {counts.get('NG', 0)} / {counts.get('REVIEW', 0)}")
        state = str(get("source_state", "streaming"))
        reason = str(get("source_reason", "") or "")
        self._set_state(state, reason)
        if state != self._last_state:  # say camera trouble once, in plain words, where the operator looks
            if state == "reconnecting":
                self.context.report(f"Camera lost ({reason or 'no frames'}); reconnecting by itself…")
            elif state == "error":
                self.context.report(f"Camera error: {reason or 'unknown'}. Check the camera and its cable, "
                                    "then stop and start the line.")
            elif state == "streaming" and self._last_state == "reconnecting":
                self.context.tell("Camera reconnected; the line is running again.")
            self._last_state = state

    def _set_state(self, state: str, reason: str) -> None:
        self.state_label.setText(state + (f": {reason}" if reason else ""))
        self.state_label.setWordWrap(True)
        set_property(self.state_label, "state", state)

