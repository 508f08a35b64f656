"""Review screen: a paged table of inspections, the image with its overlay, tagging by keyboard and buttons.

The table model loads one page (PAGE rows) at a time in a worker when the view first asks for a row of
that page, and keeps at most MAX_PAGES pages; rowCount comes from one COUNT query. So a table of
100,000 inspections opens as fast as one of 100. Keys: G = good (OK), N = defect (NG), arrows move;
after a tag the selection moves to the next row. A mask can be painted on NG images (mixed supervision).
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Callable, TypeVar

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QItemSelectionModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QKeySequence, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QHBoxLayout, QHeaderView, QLabel,
                               QPushButton, QSpinBox, QSplitter, QTableView, QVBoxLayout, QWidget)

from inspector import workers
from inspector.live_view import ImageOverlayView
from inspector.styles import colour

log = logging.getLogger(__name__)

PAGE = 200
MAX_PAGES = 40
COLUMNS = ("ID", "Time (UTC)", "Camera", "Score", "Verdict", "Tag", "Tagged by")
_DISPLAY = int(Qt.ItemDataRole.DisplayRole)  # ints: Qt hands roles to data() as ints, and int == int is cheap
_FOREGROUND = int(Qt.ItemDataRole.ForegroundRole)
_ALIGNMENT = int(Qt.ItemDataRole.TextAlignmentRole)
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
_BRUSHES = {name: QBrush(colour(name)) for name in ("OK", "NG", "REVIEW")}

T = TypeVar("T")


class TagOrder:
    """Keeps tag requests for an image in the order the operator made them.

    An operator can tag the same image twice before the first write lands (N, then G at once; or a bulk tag of a
    selection, then a single tag of one of its rows). The writes run in a thread pool in any order, so each
    request takes a number: only the newest request for an image is written (an older one that comes late is
    dropped) and shown.
    """

    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._newest: dict[int, int] = {}   # inspection id -> number of its newest request

    def claim(self, ids: list[int]) -> int:
        """A new request for ``ids``: its number, which makes it the newest for each of them."""
        number = next(self._numbers)
        with self._lock:
            for inspection_id in ids:
                self._newest[inspection_id] = number
        return number

    def write_newest(self, ids: list[int], number: int, write: Callable[[list[int]], T]) -> tuple[list[int], T | None]:
        """Call ``write(current)`` with the ids whose newest request is still ``number`` (none: no call), under
        the lock so that no newer request's write can land in between; returns (those ids, what write returned
        or None when it was not called)."""
        with self._lock:
            current = [i for i in ids if self._newest.get(i) == number]
            return current, (write(current) if current else None)

    def settle(self, ids: list[int], number: int) -> set[int]:
        """The ids whose newest request is ``number`` (to be shown), forgotten now: a late older request finds
        no entry and is dropped too."""
        with self._lock:
            newest = {i for i in ids if self._newest.get(i) == number}
            for inspection_id in newest:
                del self._newest[inspection_id]
            return newest


TAG_ORDER = TagOrder()
TIME_RANGES = {"All time": None, "Last hour": timedelta(hours=1), "Last 24 hours": timedelta(days=1),
               "Last 7 days": timedelta(days=7)}


class InspectionTableModel(QAbstractTableModel):
    """Lazy, paged view of ``db.list_inspections(**filters)``. Rows not loaded yet show '…'."""

    count_changed = Signal(int)
    page_loaded = Signal(int)
    load_failed = Signal(str)

    def __init__(self, db) -> None:
        super().__init__()
        self.db = db
        self.filters: dict = {}
        self._count = 0
        self._pages: OrderedDict[int, list] = OrderedDict()
        self._pending: set[int] = set()
        self._generation = 0

    # -- Qt model interface -----------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 (Qt name)
        return 0 if parent.isValid() else self._count

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role: int = 0):
        # Called for ~7 roles of every visible cell on each repaint (roles arrive as plain ints): return at
        # once for roles we do not serve, and serve the rest from strings formatted in the worker thread.
        if role == _DISPLAY:
            row = index.row()
            rows = self._pages.get(row // PAGE)
            if rows is None or row % PAGE >= len(rows):
                self._entry(row)  # requests the page
                return "…"
            return rows[row % PAGE][1][index.column()]
        if role == _FOREGROUND:
            column = index.column()
            if column != 4 and column != 5:
                return None
            entry = self._entry(index.row())
            if entry is None:
                return None
            value = entry[0].verdict if column == 4 else entry[0].label
            return _BRUSHES.get(value) if value else None
        if role == _ALIGNMENT and index.column() in (0, 3):
            return _RIGHT
        return None

    def _entry(self, row: int):
        """(view, display strings) of ``row`` if its page is loaded; otherwise None and the page is requested."""
        rows = self._pages.get(row // PAGE)
        if rows is None:
            if 0 <= row < self._count:
                self._request(row // PAGE)
            return None
        offset = row % PAGE
        return rows[offset] if offset < len(rows) else None

    # -- paging ----------------------------------------------------------------------------------
    def set_filters(self, filters: dict) -> None:
        """Drop every loaded page and count again with ``filters`` (keys of db.list_inspections)."""
        self.beginResetModel()
        self.filters = dict(filters)
        self._generation += 1
        self._pages.clear()
        self._pending.clear()
        self._count = 0
        self.endResetModel()
        generation, db, count_filters = self._generation, self.db, _count_filters(self.filters)
        workers.submit(lambda: db.count_inspections(**count_filters),
                       lambda n: self._count_loaded(generation, n), self.load_failed.emit, "review-count")

    def _count_loaded(self, generation: int, count: int) -> None:
        if generation != self._generation:
            return
        if count:
            self.beginInsertRows(QModelIndex(), 0, count - 1)
            self._count = count
            self.endInsertRows()
        self.count_changed.emit(count)

    def view_at(self, row: int):
        """The InspectionView of ``row`` if its page is loaded (else None, and the page is requested)."""
        if not 0 <= row < self._count:
            return None
        entry = self._entry(row)
        if entry is not None:
            self._pages.move_to_end(row // PAGE)  # recently used pages stay cached
        return None if entry is None else entry[0]

    def _request(self, page: int) -> None:
        if page in self._pending:
            return
        self._pending.add(page)
        generation, db, filters = self._generation, self.db, dict(self.filters)
        workers.submit(lambda: [(v, display_strings(v)) for v in
                                db.list_inspections(**filters, offset=page * PAGE, limit=PAGE)],
                       lambda rows: self._page_arrived(generation, page, rows),
                       lambda message: self._page_failed(generation, page, message), f"review-page-{page}")

    def _page_arrived(self, generation: int, page: int, rows: list) -> None:
        if generation != self._generation:
            return
        self._pending.discard(page)
        self._pages[page] = rows
        while len(self._pages) > MAX_PAGES:
            self._pages.popitem(last=False)
        first = page * PAGE
        last = min(self._count, first + PAGE) - 1
        if last >= first:
            self.dataChanged.emit(self.index(first, 0), self.index(last, len(COLUMNS) - 1))
        self.page_loaded.emit(page)

    def _page_failed(self, generation: int, page: int, message: str) -> None:
        if generation == self._generation:
            self._pending.discard(page)
            self.load_failed.emit(message)

    def replace_view(self, row: int, view) -> None:
        """Put a fresh InspectionView (after a tag) into its loaded page."""
        rows = self._pages.get(row // PAGE)
        if rows is not None and row % PAGE < len(rows) and rows[row % PAGE][0].id == view.id:
            rows[row % PAGE] = (view, display_strings(view))
            self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))

    def loaded_rows(self) -> int:  # noqa: D102
        return sum(len(rows) for rows in self._pages.values())


def display_strings(view) -> tuple[str, ...]:
    """The table's text for one inspection, one string per column (formatted in the worker thread)."""
    return (str(view.id), view.time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), view.camera_id,
            f"{view.score:.3f}", view.verdict, view.label or "", view.label_user or "")


def _count_filters(filters: dict) -> dict:
    return {k: v for k, v in filters.items() if k not in ("review_first",)}


class MaskBrushView(ImageOverlayView):
    """The overlay view plus a paintable mask layer (left-drag paints when the brush is on)."""

    def __init__(self) -> None:
        super().__init__()
        self.mask_item = pg.ImageItem()
        self.mask_item.setZValue(3)
        self.mask_item.setLookupTable(np.array([[0, 0, 0, 0], [255, 60, 200, 150]], np.uint8))
        self.view.addItem(self.mask_item)
        self.brush_on = False
        self.radius = 4

    def reset_mask(self, shape: tuple[int, int] | None) -> None:
        if shape is None:
            self.mask_item.clear()
            return
        self.mask_item.setImage(np.zeros(shape, np.float32), autoLevels=False, levels=(0, 1))
        self.set_brush(self.brush_on, self.radius)

    def set_brush(self, on: bool, radius: int) -> None:
        self.brush_on, self.radius = on, radius
        if on:
            size = 2 * radius + 1
            yy, xx = np.mgrid[:size, :size]
            disk = ((yy - radius) ** 2 + (xx - radius) ** 2 <= radius ** 2).astype(np.float32)
            self.mask_item.setDrawKernel(disk, mask=disk, center=(radius, radius), mode="set")
        else:
            self.mask_item.setDrawKernel(None)
        self.view.setMouseEnabled(x=not on, y=not on)

    def painted_mask(self) -> np.ndarray | None:
        image = self.mask_item.image
        if image is None or not (image > 0.5).any():
            return None
        return image > 0.5


class ReviewView(QWidget):
    """The Review screen."""

    tagged = Signal(int, str)  # inspection id, label (after the database stored it)

    def __init__(self, context) -> None:
        super().__init__()
        self.context = context
        self.model = InspectionTableModel(context.db)
        self.image_loads = workers.Latest()
        self.current = None  # InspectionView shown on the right

        title = QLabel("Review")
        title.setObjectName("pageTitle")
        self.verdict_box = QComboBox()
        self.verdict_box.addItems(["All verdicts", "OK", "NG", "REVIEW"])
        self.tag_box = QComboBox()
        self.tag_box.addItems(["Tagged and untagged", "Untagged", "Tagged"])
        self.time_box = QComboBox()
        self.time_box.addItems(list(TIME_RANGES))
        self.model_box = QComboBox()
        self.model_box.addItem("All models", None)
        self.review_first = QCheckBox("REVIEW queue first")
        self.review_first.setChecked(True)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        for box in (self.verdict_box, self.tag_box, self.time_box, self.model_box):
            box.currentIndexChanged.connect(self.refresh)
        self.review_first.toggled.connect(self.refresh)
        filters = QHBoxLayout()
        filters.addWidget(title)
        filters.addSpacing(16)
        for widget in (self.verdict_box, self.tag_box, self.time_box, self.model_box, self.review_first, refresh):
            filters.addWidget(widget)
        filters.addStretch(1)

        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)  # no per-row sizing
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        for column, width in enumerate((70, 150, 90, 60, 70, 50)):
            self.table.setColumnWidth(column, width)
        self.table.selectionModel().currentRowChanged.connect(self._row_changed)
        self.count_label = QLabel("")
        self.count_label.setObjectName("hint")
        self.model.count_changed.connect(lambda n: self.count_label.setText(f"{n:,} inspections"))
        self.model.load_failed.connect(lambda m: context.report(f"The inspections could not be read: {m}"))
        self.model.page_loaded.connect(self._page_loaded)

        self.image_view = MaskBrushView()
        self.image_view.setMinimumSize(320, 320)
        self.info = QLabel("Select an inspection")
        self.info.setWordWrap(True)
        self.good_button = QPushButton("Good  (G)")
        self.good_button.setObjectName("primary")
        self.bad_button = QPushButton("Defect  (N)")
        self.bad_button.setObjectName("danger")
        self.good_button.clicked.connect(lambda: self.tag_current("OK"))
        self.bad_button.clicked.connect(lambda: self.tag_current("NG"))
        self.bulk_ok = QPushButton("Tag selected OK")
        self.bulk_ng = QPushButton("Tag selected NG")
        self.bulk_ok.clicked.connect(lambda: self.tag_selected("OK"))
        self.bulk_ng.clicked.connect(lambda: self.tag_selected("NG"))
        self.brush_box = QCheckBox("Paint defect mask")
        self.brush_size = QSpinBox()
        self.brush_size.setRange(1, 40)
        self.brush_size.setValue(4)
        self.brush_size.setPrefix("brush ")
        self.brush_box.toggled.connect(self._brush_changed)
        self.brush_size.valueChanged.connect(self._brush_changed)
        clear_mask = QPushButton("Clear mask")
        clear_mask.clicked.connect(lambda: self.image_view.reset_mask(self._shape()))
        self.save_mask = QPushButton("Save NG with mask")
        self.save_mask.clicked.connect(self.save_painted_mask)

        right = QVBoxLayout()
        right.addWidget(self.image_view, 1)
        right.addWidget(self.info)
        row1 = QHBoxLayout()
        row1.addWidget(self.good_button)
        row1.addWidget(self.bad_button)
        right.addLayout(row1)
        row2 = QHBoxLayout()
        row2.addWidget(self.bulk_ok)
        row2.addWidget(self.bulk_ng)
        right.addLayout(row2)
        row3 = QHBoxLayout()
        row3.addWidget(self.brush_box)
        row3.addWidget(self.brush_size)
        row3.addWidget(clear_mask)
        row3.addWidget(self.save_mask)
        right.addLayout(row3)
        hint = QLabel("Keys: G good, N defect, ↑/↓ move; Shift/Ctrl+click selects several for bulk tagging.")
        hint.setObjectName("hint")
        hint.setWordWrap(True)
        right.addWidget(hint)

        left_widget = QWidget()
        left = QVBoxLayout(left_widget)
        left.setContentsMargins(0, 0, 0, 0)
        left.addWidget(self.table, 1)
        left.addWidget(self.count_label)
        right_widget = QWidget()
        right_widget.setLayout(right)
        splitter = QSplitter()
        splitter.addWidget(left_widget)
        splitter.addWidget(right_widget)
        splitter.setSizes([560, 480])

        layout = QVBoxLayout(self)
        layout.addLayout(filters)
        layout.addWidget(splitter, 1)

        for key, label in (("G", "OK"), ("N", "NG")):
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda label=label: self.tag_current(label))
        context.user_changed.connect(lambda _u: self._update_rights())
        context.models_changed.connect(self.reload_models)
        self._update_rights()
        self._loaded_once = False

    # -- filters -----------------------------------------------------------------------------------
    def filters(self) -> dict:
        filters: dict = {}
        verdict = self.verdict_box.currentText()
        if verdict in ("OK", "NG", "REVIEW"):
            filters["verdict"] = verdict
        tagged = self.tag_box.currentIndex()
        if tagged:
            filters["tagged"] = tagged == 2
        span = TIME_RANGES[self.time_box.currentText()]
        if span is not None:
            filters["since"] = datetime.now(timezone.utc) - span
        model_id = self.model_box.currentData()
        if model_id is not None:
            filters["model_id"] = model_id
        filters["review_first"] = self.review_first.isChecked()
        return filters

    def refresh(self) -> None:
        self.current = None
        self.model.set_filters(self.filters())

    def reload_models(self) -> None:
        db = self.context.db
        workers.submit(db.list_models, self._models_arrived, None, "review-models")

    def _models_arrived(self, models) -> None:
        keep = self.model_box.currentData()
        self.model_box.blockSignals(True)
        self.model_box.clear()
        self.model_box.addItem("All models", None)
        for model in models:
            self.model_box.addItem(f"#{model.id} {model.name}", model.id)
        index = self.model_box.findData(keep)
        self.model_box.setCurrentIndex(max(0, index))
        self.model_box.blockSignals(False)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._loaded_once:
            self._loaded_once = True
            self.reload_models()
            self.refresh()
        self.table.setFocus()

    def _update_rights(self) -> None:
        may = self.context.may("tag")
        for button in (self.good_button, self.bad_button, self.bulk_ok, self.bulk_ng, self.save_mask, self.brush_box):
            button.setEnabled(may)

    # -- selection and image -------------------------------------------------------------------------
    def _page_loaded(self, _page: int) -> None:
        if self.current is None and self.table.currentIndex().isValid():
            self._row_changed(self.table.currentIndex(), QModelIndex())
        elif self.model.rowCount() and not self.table.currentIndex().isValid():
            self.select_row(0)

    def select_row(self, row: int) -> None:
        index = self.model.index(row, 0)
        self.table.selectionModel().setCurrentIndex(
            index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
        self.table.scrollTo(index)

    def _row_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        view = self.model.view_at(current.row()) if current.isValid() else None
        self.current = view
        if view is None:
            return
        self._show_info(view)
        db = self.context.db
        if not view.has_image:
            self.image_view.image_item.clear()
            self.image_view.heat_item.setVisible(False)
            self.image_view.contour_item.setVisible(False)
            self.image_view.reset_mask(None)
            self.info.setText(self.info.text() + "\nNo image kept for this inspection (OK images are sampled).")
            return

        def load():
            image = db.load_image(view.id)
            mask = db.load_label_mask(view.id)
            drawn = mask is not None
            if mask is None:
                mask = db.load_mask(view.id)
            return view, image, mask, drawn

        self.image_loads.submit(load, self._image_arrived,
                                lambda m: self.info.setText(f"The image could not be loaded: {m}"), "review-image")

    def _image_arrived(self, loaded) -> None:
        view, image, mask, drawn = loaded
        if self.current is None or self.current.id != view.id:
            return
        self.image_view.show_frame(image, None, mask, view.pixel_threshold)
        self.image_view.reset_mask(image.shape[:2])

    def _show_info(self, view) -> None:
        tag = f"tagged {view.label} by {view.label_user}" if view.label else "not tagged"
        self.info.setText(f"Inspection {view.id}  ·  {view.verdict}  score {view.score:.3f}  ·  {tag}")

    def _shape(self):
        return None if self.current is None else (self.current.height, self.current.width)

    def _brush_changed(self, *_args) -> None:
        self.image_view.set_brush(self.brush_box.isChecked(), self.brush_size.value())

    # -- tagging -----------------------------------------------------------------------------------
    def tag_current(self, label: str, mask: np.ndarray | None = None) -> None:
        if not self.context.require("tag"):
            return
        index = self.table.currentIndex()
        view = self.model.view_at(index.row()) if index.isValid() else None
        if view is None:
            return
        row, db, user = index.row(), self.context.db, self.context.user
        number = TAG_ORDER.claim([view.id])

        def work():
            written, _ = TAG_ORDER.write_newest([view.id], number, lambda _ids: db.tag(view.id, label, user, mask=mask))
            return db.get_inspection(view.id) if written else None

        def stored(fresh) -> None:
            if TAG_ORDER.settle([view.id], number) and fresh is not None:
                self._tag_stored(row, fresh)

        workers.submit(work, stored, lambda m: self.context.report(f"The tag was not stored: {m}"), "tag")
        if row + 1 < self.model.rowCount():
            self.select_row(row + 1)

    def _tag_stored(self, row: int, fresh) -> None:
        self.model.replace_view(row, fresh)
        self.tagged.emit(fresh.id, fresh.label or "")
        self.context.tags_changed.emit()

    def tag_selected(self, label: str) -> None:
        if not self.context.require("tag"):
            return
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        views = [(row, self.model.view_at(row)) for row in rows]
        views = [(row, view) for row, view in views if view is not None]
        if not views:
            return
        db, user = self.context.db, self.context.user
        ids = [view.id for _, view in views]
        number = TAG_ORDER.claim(ids)

        def work():
            _, changed = TAG_ORDER.write_newest(ids, number, lambda current: db.tag_many(current, label, user))
            return changed or 0, [(row, db.get_inspection(view.id)) for row, view in views]

        def done(result) -> None:
            changed, fresh = result
            newest = TAG_ORDER.settle(ids, number)
            for row, view in fresh:
                if view.id in newest:
                    self.model.replace_view(row, view)
            self.context.tell(f"{changed} inspection(s) tagged {label}.")
            self.context.tags_changed.emit()

        workers.submit(work, done, lambda m: self.context.report(f"The tags were not stored: {m}"), "tag-many")

    def save_painted_mask(self) -> None:
        mask = self.image_view.painted_mask()
        if mask is None:
            self.context.report("Paint the defect on the image first (tick 'Paint defect mask', then drag).")
            return
        self.tag_current("NG", mask=mask)
