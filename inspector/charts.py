"""Charts screen: score over time with the threshold lines, NG rate and yield per hour, throughput and latency.

Live data arrive from the Live screen's ``frame_shown`` signal and the line statistics into ring buffers;
curves are redrawn at most twice a second and only while the screen is visible, so charts never slow the
live view. Per-hour figures come from the database in a worker every 30 s.
"""
from __future__ import annotations

import time
from collections import deque
from datetime import datetime, timedelta, timezone

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from inspector import workers
from inspector.styles import THRESHOLD_PENS, VERDICT_COLOURS

HISTORY = 3000
HOURS = 12


def _plot(title: str, left: str, bottom: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="#24292f", size="11pt")
    plot.setLabel("left", left, color="#24292f")
    plot.setLabel("bottom", bottom, color="#24292f")
    plot.showGrid(x=True, y=True, alpha=0.25)
    plot.setMenuEnabled(False)
    for axis in ("left", "bottom"):
        plot.getAxis(axis).setTextPen("#24292f")
        plot.getAxis(axis).setPen("#57606a")
    return plot


class ChartsView(QWidget):
    def __init__(self, context, live_view) -> None:
        super().__init__()
        self.context = context
        self.line = context.line
        self.t0 = time.monotonic()
        self.score_t: deque[float] = deque(maxlen=HISTORY)
        self.score_v: deque[float] = deque(maxlen=HISTORY)
        self.verdicts: deque[str] = deque(maxlen=HISTORY)
        self.stat_t: deque[float] = deque(maxlen=HISTORY)
        self.fps: deque[float] = deque(maxlen=HISTORY)
        self.p50: deque[float] = deque(maxlen=HISTORY)
        self.p99: deque[float] = deque(maxlen=HISTORY)
        self.thresholds = (None, None)
        self._dirty = False

        self.score_plot = _plot("Score over time", "score", "seconds")
        self.score_plot.setYRange(0, 1)
        self.score_scatter = pg.ScatterPlotItem(size=5, pen=None)
        self.score_plot.addItem(self.score_scatter)
        self.ok_line = pg.InfiniteLine(angle=0, pen=pg.mkPen(THRESHOLD_PENS["ok"], width=2, style=pg.QtCore.Qt.PenStyle.DashLine),
                                       label="OK below", labelOpts={"color": THRESHOLD_PENS["ok"], "position": 0.04,
                                                                        "fill": (255, 255, 255, 210),
                                                                        "anchors": [(0, 0), (0, 0)]})
        self.ng_line = pg.InfiniteLine(angle=0, pen=pg.mkPen(THRESHOLD_PENS["ng"], width=2, style=pg.QtCore.Qt.PenStyle.DashLine),
                                       label="NG from", labelOpts={"color": THRESHOLD_PENS["ng"], "position": 0.04,
                                                                       "fill": (255, 255, 255, 210),
                                                                       "anchors": [(0, 1), (0, 1)]})
        for line in (self.ok_line, self.ng_line):
            line.setVisible(False)
            self.score_plot.addItem(line)

        self.hour_plot = _plot(f"NG rate and yield per hour (last {HOURS} h)", "%", "hours ago")
        self.hour_plot.setYRange(0, 100)
        self.ng_bars = pg.BarGraphItem(x=[], height=[], width=0.35, brush=VERDICT_COLOURS["NG"])
        self.yield_bars = pg.BarGraphItem(x=[], height=[], width=0.35, brush=VERDICT_COLOURS["OK"])
        self.hour_plot.addItem(self.yield_bars)
        self.hour_plot.addItem(self.ng_bars)
        legend = self.hour_plot.addLegend(offset=(-10, 10), labelTextColor="#24292f")
        legend.addItem(self.yield_bars, "yield (OK %)")
        legend.addItem(self.ng_bars, "NG rate %")

        self.rate_plot = _plot("Throughput", "frames/s", "seconds")
        self.fps_curve = self.rate_plot.plot(pen=pg.mkPen("#1f6feb", width=2))
        self.latency_plot = _plot("Latency", "ms", "seconds")
        self.latency_plot.addLegend(offset=(10, 10), labelTextColor="#24292f")
        self.p50_curve = self.latency_plot.plot(pen=pg.mkPen("#1f6feb", width=2), name="p50")
        self.p99_curve = self.latency_plot.plot(pen=pg.mkPen("#bf8700", width=2), name="p99")

        self.hour_note = QLabel("")
        self.hour_note.setObjectName("hint")
        grid = QGridLayout()
        grid.addWidget(self.score_plot, 0, 0)
        grid.addWidget(self.hour_plot, 0, 1)
        grid.addWidget(self.rate_plot, 1, 0)
        grid.addWidget(self.latency_plot, 1, 1)
        layout = QVBoxLayout(self)
        title = QLabel("Charts")
        title.setObjectName("pageTitle")
        layout.addWidget(title)
        layout.addLayout(grid, 1)
        layout.addWidget(self.hour_note)

        live_view.frame_shown.connect(self.add_frame)
        self.redraw_timer = QTimer(self)
        self.redraw_timer.setInterval(500)
        self.redraw_timer.timeout.connect(self._tick)
        self.redraw_timer.start()
        self.hour_timer = QTimer(self)
        self.hour_timer.setInterval(30_000)
        self.hour_timer.timeout.connect(self.refresh_hours)
        self.hour_timer.start()

    def add_frame(self, frame) -> None:
        self.score_t.append(time.monotonic() - self.t0)
        self.score_v.append(frame.score)
        self.verdicts.append(frame.verdict)
        self.thresholds = (frame.ok, frame.ng)
        self._dirty = True

    def _tick(self) -> None:
        stats = self.line.stats()
        if stats:
            self.stat_t.append(time.monotonic() - self.t0)
            self.fps.append(float(stats.get("fps", 0.0)))
            self.p50.append(float(stats.get("latency_p50_ms", 0.0)))
            self.p99.append(float(stats.get("latency_p99_ms", 0.0)))
            self._dirty = True
        if self._dirty and self.isVisible():
            self.redraw()

    def redraw(self) -> None:
        self._dirty = False
        if self.score_t:
            colours = [VERDICT_COLOURS.get(v, "#6e7781") for v in self.verdicts]
            self.score_scatter.setData(x=np.fromiter(self.score_t, float), y=np.fromiter(self.score_v, float),
                                       brush=[pg.mkBrush(c) for c in colours])
        ok, ng = self.thresholds
        for line, value in ((self.ok_line, ok), (self.ng_line, ng)):
            line.setVisible(value is not None)
            if value is not None:
                line.setValue(value)
        if self.stat_t:
            t = np.fromiter(self.stat_t, float)
            fps = np.fromiter(self.fps, float)
            self.fps_curve.setData(t, fps)
            self.rate_plot.setYRange(0, max(1.0, 1.25 * float(fps.max())), padding=0)
            self.p50_curve.setData(t, np.fromiter(self.p50, float))
            self.p99_curve.setData(t, np.fromiter(self.p99, float))

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.redraw()
        self.refresh_hours()

    def refresh_hours(self) -> None:
        if not self.isVisible():
            return
        db = self.context.db
        workers.submit(lambda: hourly_counts(db, HOURS), self._show_hours,
                       lambda m: self.hour_note.setText(f"Per-hour figures unavailable: {m}"), "hourly-counts")

    def _show_hours(self, rows: list[tuple[int, int, int, int]]) -> None:
        x = np.array([-r[0] for r in rows], float)
        totals, ng, ok = (np.array([r[i] for r in rows], float) for i in (1, 2, 3))
        safe = np.maximum(totals, 1.0)
        ng_rate = np.where(totals > 0, 100.0 * ng / safe, 0.0)
        yield_pct = np.where(totals > 0, 100.0 * ok / safe, 0.0)
        self.ng_bars.setOpts(x=x + 0.2, height=ng_rate)
        self.yield_bars.setOpts(x=x - 0.2, height=yield_pct)
        self.hour_note.setText(f"Per hour, last {HOURS} h: {int(totals.sum())} inspections, {int(ng.sum())} NG. "
                               "Yield counts OK verdicts; REVIEW is neither.")


def hourly_counts(db, hours: int) -> list[tuple[int, int, int]]:
    """[(hours_ago, total, ng, ok)] for each of the last ``hours`` whole hours, newest first (worker thread)."""
    now = datetime.now(timezone.utc)
    rows = []
    for ago in range(hours):
        until = now - timedelta(hours=ago)
        since = until - timedelta(hours=1)
        total = db.count_inspections(since=since, until=until)
        ng = db.count_inspections(verdict="NG", since=since, until=until) if total else 0
        ok = db.count_inspections(verdict="OK", since=since, until=until) if total else 0
        rows.append((ago, total, ng, ok))
    return rows
