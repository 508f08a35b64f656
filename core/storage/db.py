"""StationDB: the one object through which the station reads and writes its database and image store.

Every public method runs in its own short transaction (thread-safe: share one StationDB between
threads). Writes begin with ``BEGIN IMMEDIATE`` on SQLite and are retried with backoff while the
database is locked or busy (or a PostgreSQL serialisation/deadlock/lock-timeout occurs), up to
``lock_retry_s``; after that DatabaseBusyError is raised and nothing of that call was written.
Image files are always written before the rows that point to them, so a crash leaves at worst an
unreferenced file, never a row without its image.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import random
import secrets
import threading
import time as _time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine, and_, func, insert, select, text, true, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.orm import Session

from core.data.images import ImageError
from core.storage import roles
from core.storage.engine import IMMEDIATE, default_url, make_engine
from core.storage.errors import DatabaseBusyError, NotFoundError, StorageError
from core.storage.imagestore import ImageStore, StoredFile
from core.storage.passwords import hash_password, verify_password
from core.storage.schema import (SCHEMA_VERSION, AuditLog, Base, Inspection, Label, ModelVersion, StationInfo,
                                 TrainingRun)
from core.storage.schema import User as UserRow
from core.storage.views import (FINISHED_STATUSES, LABELS, RUN_STATUSES, VERDICTS, AuditEntry, InspectionRecord,
                                InspectionView, LabelView, ModelVersionView, TrainingRunView, User, check_mask,
                                now_utc, utc)

log = logging.getLogger(__name__)
T = TypeVar("T")

_PG_RETRY_CODES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")
_MAX_PAGE = 10_000
_FILE_WORKERS = max(2, min(4, os.cpu_count() or 2))


@functools.cache
def _dummy_hash() -> str:
    """A valid hash of a throw-away password: authenticate() verifies unknown names against it, so that a
    wrong name and a wrong password take the same time. Made on first use (hashing is slow on purpose)."""
    return hash_password(secrets.token_hex(16))


@dataclass(frozen=True)
class IntegrityReport:
    """Result of StationDB.check_integrity. database: 'ok' or the backend's complaint."""

    database: str
    inspections: int
    files_checked: int
    missing_files: list[int] = field(default_factory=list)  # inspection ids whose image/mask file is missing
    corrupt_files: list[int] = field(default_factory=list)  # inspection ids whose image no longer matches its hash

    @property
    def ok(self) -> bool:
        return self.database == "ok" and not self.missing_files and not self.corrupt_files


def open_database(url: str | None = None, data_dir: str | Path = "data", *, busy_timeout_ms: int = 2000,
                  lock_retry_s: float = 60.0, durable_images: bool = True) -> "StationDB":
    """Open (creating if missing) the station database and its image store.

    url: any SQLAlchemy URL; None means SQLite at ``<data_dir>/station.db``.
    data_dir: where the image store (and the default SQLite file) live; created if missing.
    busy_timeout_ms: SQLite's own wait for a lock before our retry loop takes over.
    lock_retry_s: how long a call keeps retrying a locked/busy database before DatabaseBusyError.
    durable_images: fsync each new image file before its row is committed (survives power loss).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    url = url or default_url(data_dir)
    try:
        make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"not a database URL: {url!r} (e.g. sqlite:///path/station.db or "
                           "postgresql+psycopg2://user:password@host/dbname)") from None
    try:
        engine = make_engine(url, busy_timeout_ms=busy_timeout_ms)
    except NoSuchModuleError as exc:
        raise StorageError(f"unsupported database URL {_safe_url(url)}: {exc}") from exc
    except ModuleNotFoundError as exc:
        raise StorageError(f"database URL {_safe_url(url)} needs the driver {exc.name!r}; for PostgreSQL "
                           "install psycopg2-binary (pip install 'inspector-station[postgres]')") from exc
    db = StationDB(engine, data_dir, lock_retry_s=lock_retry_s, durable_images=durable_images)
    try:
        db._create_schema()
    except BaseException:
        engine.dispose()
        raise
    return db


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for an error message
        return "<unparsable URL>"


def _is_retryable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    message = str(exc.orig).lower()
    if any(text_ in message for text_ in _SQLITE_BUSY):
        return True
    return getattr(exc.orig, "pgcode", None) in _PG_RETRY_CODES


class StationDB:
    """The station's database and image store. Create it with ``open_database``."""

    def __init__(self, engine: Engine, data_dir: Path, *, lock_retry_s: float = 60.0,
                 durable_images: bool = True) -> None:
        self._engine = engine
        self.data_dir = Path(data_dir).resolve()  # absolute: a later chdir must not move the image store
        self.images = ImageStore(self.data_dir, durable=durable_images)
        self.lock_retry_s = float(lock_retry_s)
        self.lock_retries = 0  # how many times a call had to wait for a locked/busy database
        self._retry_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # image-file writers, made on first use
        self._pool_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for maintenance tools and tests; application code uses the methods)."""
        return self._engine

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql' (or another SQLAlchemy backend name)."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Release every pooled connection and the file-writing threads. The object must not be used afterwards."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self._engine.dispose()

    def __enter__(self) -> "StationDB":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, work: Callable[[Session], T], *, write: bool) -> T:
        """Run ``work`` in one transaction, committing at the end; retry while the database is locked/busy."""
        delay = 0.02
        deadline = _time.monotonic() + self.lock_retry_s
        while True:
            try:
                with Session(self._engine, expire_on_commit=False) as session:
                    session.connection(execution_options={IMMEDIATE: True} if write else None)
                    result = work(session)
                    session.commit()
                    return result
            except IntegrityError as exc:
                raise StorageError(f"the database refused the change: {exc.orig}") from exc
            except DBAPIError as exc:
                if not _is_retryable(exc):
                    raise StorageError(f"database error on {self.url}: {exc.orig}") from exc
                if _time.monotonic() + delay > deadline:
                    raise DatabaseBusyError(f"database {self.url} stayed locked/busy for {self.lock_retry_s:.0f} s; "
                                            f"nothing was written ({exc.orig})") from exc
                with self._retry_lock:
                    self.lock_retries += 1
                log.debug("database busy (%s); retrying in %.2f s", exc.orig, delay)
                _time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2.0, 1.0)

    def _create_schema(self) -> None:
        for attempt in range(5):  # two processes opening a new database at once may race on CREATE TABLE
            try:
                Base.metadata.create_all(self._engine)
                break
            except DBAPIError as exc:
                message = str(exc.orig).lower()
                racing = "already exists" in message or "duplicate" in message or _is_retryable(exc)
                if attempt == 4 or not racing or exc.connection_invalidated:
                    raise StorageError(f"cannot open the database {self.url}: {exc.orig}".strip()) from exc
                _time.sleep(0.2 * (attempt + 1))

        def work(session: Session) -> None:
            row = session.get(StationInfo, "schema_version")
            if row is None:
                session.add(StationInfo(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(row.value) > SCHEMA_VERSION:
                raise StorageError(f"database {self.url} has schema version {row.value}, newer than this "
                                   f"software understands ({SCHEMA_VERSION}); update the station software")

        try:
            self._run(work, write=True)
        except StorageError:
            # a racing opener inserted the row first: re-check only the version
            self._run(work, write=False)

    def _authorise(self, session: Session, user: User | None, action: str) -> UserRow:
        """The user's database row, when it exists, is active and its stored role permits ``action``."""
        roles.require(user, action)
        row = session.get(UserRow, user.id)
        if row is None or row.name != user.name or not row.active:
            raise roles.PermissionDenied(f"user {user.name!r} is unknown or inactive")
        roles.require(_user_view(row), action)  # the stored role decides, not the object handed in
        return row

    @staticmethod
    def _audit_row(session: Session, user: User | UserRow | None, action: str, detail: dict) -> None:
        session.add(AuditLog(time=now_utc(), user_id=None if user is None else user.id,
                             user_name=None if user is None else user.name, action=action, detail=detail))

    # ------------------------------------------------------------------ inspections
    def write_inspections(self, records: Sequence[InspectionRecord]) -> list[int]:
        """Store ``records`` (images and masks to the image store first, then all rows in ONE transaction).

        Returns the new ids in the order of ``records``. Raises ValueError before writing anything when a
        record is invalid, DatabaseBusyError when the database stayed locked past the retry window.
        """
        records = list(records)
        for index, record in enumerate(records):
            record.validate(index)
        if not records:
            return []
        rows = []
        for record, (image, mask) in zip(records, self._store_files(records)):
            rows.append({
                "time": utc(record.time), "camera_id": record.camera_id, "frame_seq": int(record.frame_seq),
                "camera_timestamp_ns": None if record.camera_timestamp_ns is None else int(record.camera_timestamp_ns),
                "host_timestamp": utc(record.host_timestamp, "host_timestamp"),
                "model_id": None if record.model_id is None else int(record.model_id),
                "score": float(record.score), "verdict": str(getattr(record.verdict, "value", record.verdict)),
                "ok_threshold": float(record.ok_threshold), "ng_threshold": float(record.ng_threshold),
                "pixel_threshold": float(record.pixel_threshold), "latency_ms": float(record.latency_ms),
                "width": int(record.width), "height": int(record.height),
                "image_path": image.relative_path if image else None, "image_sha256": image.sha256 if image else None,
                "mask_path": mask.relative_path if mask else None,
            })

        def work(session: Session) -> list[int]:
            statement = insert(Inspection).returning(Inspection.id, sort_by_parameter_order=True)
            return [int(row[0]) for row in session.execute(statement, rows)]

        return self._run(work, write=True)

    def _store_files(self, records: list[InspectionRecord]) -> list[tuple[StoredFile | None, StoredFile | None]]:
        """(image, mask) stored files per record. PNG encoding, hashing and fsync release the GIL, so a
        batch is spread over a few threads."""
        jobs = [(i, kind, array) for i, r in enumerate(records)
                for kind, array in (("image", r.image), ("mask", r.mask)) if array is not None]
        stored: list[list[StoredFile | None]] = [[None, None] for _ in records]

        def put(job: tuple[int, str, np.ndarray]) -> StoredFile:
            _, kind, array = job
            return self.images.put_image(array) if kind == "image" else self.images.put_mask(array)

        if len(jobs) > 1:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=_FILE_WORKERS, thread_name_prefix="imagestore")
            results = list(self._pool.map(put, jobs))
        else:
            results = [put(job) for job in jobs]
        for (i, kind, _), result in zip(jobs, results):
            stored[i][0 if kind == "image" else 1] = result
        return [(image, mask) for image, mask in stored]

    def _conditions(self, *, verdict: str | Iterable[str] | None = None, since: datetime | None = None,
                    until: datetime | None = None, model_id: int | None = None, tagged: bool | None = None,
                    label: str | None = None, camera_id: str | None = None) -> list:
        conditions = []
        if verdict is not None:
            verdicts = [verdict] if isinstance(verdict, str) else [str(getattr(v, "value", v)) for v in verdict]
            unknown = set(verdicts) - set(VERDICTS)
            if unknown:
                raise ValueError(f"unknown verdict(s) {sorted(unknown)}; expected {VERDICTS}")
            conditions.append(Inspection.verdict == verdicts[0] if len(verdicts) == 1
                              else Inspection.verdict.in_(verdicts))
        if since is not None:
            conditions.append(Inspection.time >= utc(since, "since"))
        if until is not None:
            conditions.append(Inspection.time < utc(until, "until"))
        if model_id is not None:
            conditions.append(Inspection.model_id == int(model_id))
        if tagged is not None:
            conditions.append(Inspection.label.is_not(None) if tagged else Inspection.label.is_(None))
        if label is not None:
            conditions.append(Inspection.label == _check_label(label))
        if camera_id is not None:
            conditions.append(Inspection.camera_id == camera_id)
        return conditions

    def count_inspections(self, **filters: Any) -> int:
        """Number of inspections matching the filters of ``list_inspections`` (verdict, since, until,
        model_id, tagged, label, camera_id)."""
        conditions = self._conditions(**filters)
        return self._run(lambda s: int(s.scalar(select(func.count(Inspection.id)).where(*conditions))),
                         write=False)

    def verdict_counts(self, **filters: Any) -> dict[str, int]:
        """{'OK': n, 'NG': n, 'REVIEW': n} over the inspections matching the filters."""
        conditions = self._conditions(**filters)
        statement = select(Inspection.verdict, func.count(Inspection.id)).where(*conditions) \
            .group_by(Inspection.verdict)
        counts = dict.fromkeys(VERDICTS, 0)
        counts.update({v: int(n) for v, n in self._run(lambda s: s.execute(statement).all(), write=False)})
        return counts

    def list_inspections(self, *, verdict: str | Iterable[str] | None = None, since: datetime | None = None,
                         until: datetime | None = None, model_id: int | None = None, tagged: bool | None = None,
                         label: str | None = None, camera_id: str | None = None, review_first: bool = False,
                         offset: int = 0, limit: int = 100) -> list[InspectionView]:
        """One page of inspections, newest first (REVIEW ones first of all when ``review_first``).

        since: inclusive, until: exclusive (tz-aware). tagged: True only tagged, False only untagged.
        Each query reads one page through the indexes; nothing loads the whole table.
        """
        if offset < 0 or not 0 < limit <= _MAX_PAGE:
            raise ValueError(f"need offset >= 0 and 0 < limit <= {_MAX_PAGE}, got offset={offset} limit={limit}")
        conditions = self._conditions(verdict=verdict, since=since, until=until, model_id=model_id,
                                      tagged=tagged, label=label, camera_id=camera_id)
        order = (Inspection.time.desc(), Inspection.id.desc())

        def page(session: Session, extra: list, start: int, count: int) -> list:
            statement = _view_select().where(*conditions, *extra).order_by(*order).offset(start).limit(count)
            return list(session.execute(statement).all())

        def work(session: Session) -> list:
            if not review_first:
                return page(session, [], offset, limit)
            # REVIEW rows form a queue ahead of the rest: page through the two parts in turn.
            is_review = Inspection.verdict == "REVIEW"
            n_review = int(session.scalar(select(func.count(Inspection.id)).where(*conditions, is_review)))
            rows = page(session, [is_review], offset, limit) if offset < n_review else []
            if len(rows) < limit:
                rows += page(session, [Inspection.verdict != "REVIEW"], max(0, offset - n_review), limit - len(rows))
            return rows

        return [_inspection_view(*row) for row in self._run(work, write=False)]

    def get_inspection(self, inspection_id: int) -> InspectionView:
        """One inspection with its current tag; NotFoundError when there is no such id."""
        def work(session: Session):
            row = session.execute(_view_select().where(Inspection.id == int(inspection_id))).one_or_none()
            if row is None:
                raise NotFoundError(f"no inspection with id {inspection_id}")
            return row

        return _inspection_view(*self._run(work, write=False))

    def load_image(self, inspection_id: int) -> np.ndarray:
        """The inspection's stored image ((H, W) or (H, W, 3), uint8/uint16), checked against its sha256."""
        view = self.get_inspection(inspection_id)
        if view.image_path is None:
            raise StorageError(f"inspection {inspection_id} has no stored image (OK images are sampled)")
        try:
            return self.images.read_image(view.image_path, view.image_sha256)
        except ImageError as exc:
            raise StorageError(f"inspection {inspection_id}: {exc}") from exc

    def load_mask(self, inspection_id: int) -> np.ndarray | None:
        """The predicted defect mask, bool (H, W), or None when none was stored."""
        view = self.get_inspection(inspection_id)
        return None if view.mask_path is None else self.images.read_mask(view.mask_path, (view.height, view.width))

    def load_label_mask(self, inspection_id: int) -> np.ndarray | None:
        """The mask an operator drew with the current tag, bool (H, W), or None."""
        view = self.get_inspection(inspection_id)
        if view.label_mask_path is None:
            return None
        return self.images.read_mask(view.label_mask_path, (view.height, view.width))

    def tagged_scores(self, *, model_id: int | None = None) -> list[tuple[float, str]]:
        """(score, current label) of every tagged inspection (for calibration histograms)."""
        conditions = self._conditions(model_id=model_id, tagged=True)
        statement = select(Inspection.score, Inspection.label).where(*conditions).order_by(Inspection.id)
        return [(float(s), str(l)) for s, l in self._run(lambda s: s.execute(statement).all(), write=False)]

    # ------------------------------------------------------------------ tags
    def tag(self, inspection_id: int, label: str, user: User, mask: np.ndarray | None = None) -> None:
        """Tag an inspection OK or NG (optionally with a drawn bool (H, W) mask). Audited; a changed tag keeps
        the old one in the history and audits old -> new. Re-applying the same label without a mask is a no-op."""
        label = _check_label(label)
        roles.require(user, "tag")
        stored_mask = None
        if mask is not None:
            view = self.get_inspection(inspection_id)
            check_mask(mask, view.height, view.width, f"mask for inspection {inspection_id}")
            stored_mask = self.images.put_mask(mask).relative_path

        def work(session: Session) -> None:
            user_row = self._authorise(session, user, "tag")
            self._tag_one(session, int(inspection_id), label, user_row, stored_mask, audit=True)

        self._run(work, write=True)

    def tag_many(self, ids: Iterable[int], label: str, user: User) -> int:
        """Tag many inspections with one label in one transaction (one audit entry). Returns how many changed."""
        label = _check_label(label)
        roles.require(user, "tag")
        ids = sorted({int(i) for i in ids})

        def work(session: Session) -> int:
            user_row = self._authorise(session, user, "tag")
            changed: dict[str, str | None] = {}
            for inspection_id in ids:
                old = self._tag_one(session, inspection_id, label, user_row, None, audit=False)
                if old != label:
                    changed[str(inspection_id)] = old
            if changed:
                self._audit_row(session, user_row, "tag_many", {"label": label, "ids": [int(i) for i in changed],
                                                                "old": changed})
            return len(changed)

        return self._run(work, write=True) if ids else 0

    def _tag_one(self, session: Session, inspection_id: int, label: str, user_row: UserRow,
                 mask_path: str | None, *, audit: bool) -> str | None:
        """Apply one tag inside a transaction; returns the previous label (None when untagged)."""
        inspection = session.get(Inspection, inspection_id)
        if inspection is None:
            raise NotFoundError(f"no inspection with id {inspection_id}")
        current = session.scalars(select(Label).where(Label.inspection_id == inspection_id,
                                                      Label.is_current == true())).one_or_none()
        old = current.label if current is not None else None
        if old == label and mask_path is None:
            return old
        if current is not None:
            current.is_current = False
            session.flush()  # retire the old tag before the new one takes the "current" slot
        session.add(Label(inspection_id=inspection_id, label=label, mask_path=mask_path, user_id=user_row.id,
                          user_name=user_row.name, time=now_utc(), is_current=True))
        inspection.label = label
        if audit:
            self._audit_row(session, user_row, "tag" if old is None else "retag",
                            {"inspection_id": inspection_id, "old": old, "new": label, "mask": mask_path})
        return old

    def label_history(self, inspection_id: int) -> list[LabelView]:
        """Every tag an inspection received, oldest first."""
        statement = select(Label).where(Label.inspection_id == int(inspection_id)).order_by(Label.id)
        rows = self._run(lambda s: list(s.scalars(statement)), write=False)
        return [LabelView(r.id, r.inspection_id, r.label, r.mask_path, r.user_name, r.time, r.is_current)
                for r in rows]

    # ------------------------------------------------------------------ users
    def create_user(self, name: str, password: str, role: str, *, by: User | None = None) -> User:
        """Create a user with a salted scrypt password hash. ``by`` (needs 'manage_users') may be None only
        for setting up the station (e.g. the first admin). Audited."""
        name = _check_name(name)
        roles.check_role(role)
        if by is not None:
            roles.require(by, "manage_users")
        password_hash = hash_password(password)  # slow on purpose: outside the transaction

        def work(session: Session) -> User:
            actor = self._authorise(session, by, "manage_users") if by is not None else None
            if session.scalar(select(UserRow.id).where(UserRow.name == name)) is not None:
                raise StorageError(f"a user named {name!r} already exists")
            row = UserRow(name=name, password_hash=password_hash, role=role, active=True, created=now_utc())
            session.add(row)
            session.flush()
            self._audit_row(session, actor, "create_user", {"name": name, "role": role})
            return _user_view(row)

        return self._run(work, write=True)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when ``name`` exists, is active and ``password`` matches; otherwise None. Audited."""
        row = self._run(lambda s: s.scalars(select(UserRow).where(UserRow.name == str(name))).one_or_none(),
                        write=False)
        matches = verify_password(str(password), row.password_hash if row is not None else _dummy_hash())
        user = _user_view(row) if row is not None and row.active and matches else None
        self._run(lambda s: self._audit_row(s, user, "login" if user else "login_failed",
                                            {"name": str(name)[:64]}), write=True)
        return user

    def list_users(self) -> list[User]:
        rows = self._run(lambda s: list(s.scalars(select(UserRow).order_by(UserRow.name))), write=False)
        return [_user_view(r) for r in rows]

    def update_user(self, user_id: int, *, by: User, role: str | None = None, active: bool | None = None,
                    password: str | None = None) -> User:
        """Change a user's role, active flag or password (needs 'manage_users'). Keeps at least one active
        admin. Audited (the password itself never is)."""
        roles.require(by, "manage_users")
        if role is not None:
            roles.check_role(role)
        password_hash = hash_password(password) if password is not None else None

        def work(session: Session) -> User:
            actor = self._authorise(session, by, "manage_users")
            row = session.get(UserRow, int(user_id))
            if row is None:
                raise NotFoundError(f"no user with id {user_id}")
            changes: dict[str, Any] = {}
            if role is not None and role != row.role:
                changes["role"] = [row.role, role]
                row.role = role
            if active is not None and bool(active) != row.active:
                changes["active"] = [row.active, bool(active)]
                row.active = bool(active)
            if password_hash is not None:
                changes["password"] = "changed"
                row.password_hash = password_hash
            session.flush()
            admins = session.scalar(select(func.count(UserRow.id)).where(UserRow.role == "admin",
                                                                         UserRow.active == true()))
            if not admins:
                raise StorageError("refused: this change would leave no active admin")
            if changes:
                self._audit_row(session, actor, "update_user", {"name": row.name, "changes": changes})
            return _user_view(row)

        return self._run(work, write=True)

    # ------------------------------------------------------------------ audit
    def audit(self, user: User | None, action: str, detail: dict) -> None:
        """Append an entry to the audit log. detail: a JSON-serialisable dict."""
        if not isinstance(action, str) or not 0 < len(action) <= 64:
            raise ValueError("audit action must be a non-empty string of at most 64 characters")
        detail = _json_dict(detail, "audit detail")
        self._run(lambda s: self._audit_row(s, user, action, detail), write=True)

    def list_audit(self, offset: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries, newest first."""
        if offset < 0 or not 0 < limit <= _MAX_PAGE:
            raise ValueError(f"need offset >= 0 and 0 < limit <= {_MAX_PAGE}")
        statement = select(AuditLog).order_by(AuditLog.time.desc(), AuditLog.id.desc()).offset(offset).limit(limit)
        rows = self._run(lambda s: list(s.scalars(statement)), write=False)
        return [AuditEntry(r.id, r.time, r.user_name, r.action, dict(r.detail or {})) for r in rows]

    def count_audit(self) -> int:
        return self._run(lambda s: int(s.scalar(select(func.count(AuditLog.id)))), write=False)

    # ------------------------------------------------------------------ model versions
    def register_model(self, package_dir: str | Path, meta: dict, *, user: User | None = None) -> int:
        """Record a model package (not activated). meta: its model.json (needs 'family'; 'name' optional).
        Registering the same directory again updates its meta and returns the same id."""
        meta = _json_dict(meta, "model meta")
        family = meta.get("family")
        if not isinstance(family, str) or not family:
            raise ValueError("model meta must name its 'family'")
        path = str(Path(package_dir).resolve())
        name = str(meta.get("name") or Path(path).name)[:256]

        def work(session: Session) -> int:
            row = session.scalars(select(ModelVersion).where(ModelVersion.package_path == path)).one_or_none()
            if row is not None and (row.family, row.name, row.meta) == (family, name, meta):
                return int(row.id)  # unchanged (e.g. every headless run registers its package): nothing to audit
            if row is None:
                row = ModelVersion(package_path=path, family=family, name=name, meta=meta, created=now_utc(),
                                   is_active=False)
                session.add(row)
            else:
                row.family, row.name, row.meta = family, name, meta
            session.flush()
            self._audit_row(session, user, "register_model", {"model_id": row.id, "path": path, "family": family})
            return int(row.id)

        return self._run(work, write=True)

    def update_model_meta(self, model_id: int, meta: dict, user: User) -> None:
        """Replace a model's stored meta (e.g. recalibrated thresholds). Needs 'calibrate'; audited."""
        meta = _json_dict(meta, "model meta")
        roles.require(user, "calibrate")

        def work(session: Session) -> None:
            actor = self._authorise(session, user, "calibrate")
            row = _get(session, ModelVersion, model_id, "model version")
            old_thresholds = (row.meta or {}).get("thresholds")
            row.meta = meta
            self._audit_row(session, actor, "update_model_meta",
                            {"model_id": int(model_id), "old_thresholds": old_thresholds,
                             "new_thresholds": meta.get("thresholds")})

        self._run(work, write=True)

    def activate_model(self, model_id: int, user: User) -> None:
        """Make a model version the active one (needs 'promote'); the previous stays for rollback. Audited."""
        roles.require(user, "promote")

        def work(session: Session) -> None:
            actor = self._authorise(session, user, "promote")
            previous = self._activate(session, int(model_id))
            self._audit_row(session, actor, "activate_model", {"model_id": int(model_id), "previous": previous})

        self._run(work, write=True)

    def rollback_model(self, user: User) -> int:
        """Re-activate the model that was active before the current one (needs 'promote'); returns its id."""
        roles.require(user, "promote")

        def work(session: Session) -> int:
            actor = self._authorise(session, user, "promote")
            target = session.scalars(select(ModelVersion)
                                     .where(ModelVersion.is_active.is_not(True), ModelVersion.activated_at.is_not(None))
                                     .order_by(ModelVersion.activated_at.desc(), ModelVersion.id.desc())
                                     .limit(1)).one_or_none()
            if target is None:
                raise StorageError("no previously active model to roll back to")
            previous = self._activate(session, target.id)
            self._audit_row(session, actor, "rollback_model", {"model_id": target.id, "previous": previous})
            return int(target.id)

        return self._run(work, write=True)

    @staticmethod
    def _activate(session: Session, model_id: int) -> int | None:
        """Switch the active flag to ``model_id``; returns the previously active id."""
        target = _get(session, ModelVersion, model_id, "model version")
        previous = session.scalar(select(ModelVersion.id).where(ModelVersion.is_active == true()))
        if previous == target.id:
            return previous
        # Clear first, in its own statement: the partial unique index allows one active row at any moment.
        session.execute(update(ModelVersion).where(ModelVersion.is_active == true()).values(is_active=False))
        session.execute(update(ModelVersion).where(ModelVersion.id == target.id)
                        .values(is_active=True, activated_at=now_utc()))
        return previous

    def active_model(self) -> ModelVersionView | None:
        statement = select(ModelVersion).where(ModelVersion.is_active == true())
        row = self._run(lambda s: s.scalars(statement).one_or_none(), write=False)
        return None if row is None else _model_view(row)

    def get_model(self, model_id: int) -> ModelVersionView:
        return _model_view(self._run(lambda s: _get(s, ModelVersion, model_id, "model version"), write=False))

    def list_models(self) -> list[ModelVersionView]:
        """All registered model versions, newest first."""
        statement = select(ModelVersion).order_by(ModelVersion.created.desc(), ModelVersion.id.desc())
        return [_model_view(r) for r in self._run(lambda s: list(s.scalars(statement)), write=False)]

    # ------------------------------------------------------------------ training runs
    def create_training_run(self, family: str, supervision: str, dataset_path: str | Path, user: User) -> int:
        """Record a queued retraining job (needs 'retrain'); audited. Returns its id."""
        roles.require(user, "retrain")

        def work(session: Session) -> int:
            actor = self._authorise(session, user, "retrain")
            row = TrainingRun(family=str(family), supervision=str(supervision), dataset_path=str(dataset_path),
                              status="queued", progress=0.0, stage="", log="", user_id=actor.id,
                              user_name=actor.name, created=now_utc())
            session.add(row)
            session.flush()
            self._audit_row(session, actor, "start_training", {"run_id": row.id, "family": family,
                                                               "supervision": supervision,
                                                               "dataset": str(dataset_path)})
            return int(row.id)

        return self._run(work, write=True)

    def update_training_run(self, run_id: int, *, status: str | None = None, progress: float | None = None,
                            stage: str | None = None, log_append: str | None = None,
                            result_path: str | Path | None = None) -> None:
        """Update a run's fields; 'running' stamps started, a finished status stamps finished. The status of a
        finished run cannot change (ValueError). log_append is appended server-side (no read-modify-write)."""
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"unknown training status {status!r}; expected one of {RUN_STATUSES}")
        if progress is not None and not 0.0 <= float(progress) <= 1.0:
            raise ValueError(f"progress must lie in 0..1, got {progress}")

        def work(session: Session) -> None:
            row = _get(session, TrainingRun, run_id, "training run")
            values: dict[str, Any] = {}
            if status is not None and status != row.status:
                if row.status in FINISHED_STATUSES:
                    raise ValueError(f"training run {run_id} already {row.status}; cannot become {status}")
                values["status"] = status
                if status == "running" and row.started is None:
                    values["started"] = now_utc()
                if status in FINISHED_STATUSES:
                    values["finished"] = now_utc()
            if progress is not None:
                values["progress"] = float(progress)
            if stage is not None:
                values["stage"] = str(stage)[:256]
            if log_append:
                values["log"] = TrainingRun.log + str(log_append)
            if result_path is not None:
                values["result_path"] = str(result_path)
            if values:
                session.execute(update(TrainingRun).where(TrainingRun.id == int(run_id)).values(**values))

        self._run(work, write=True)

    def get_training_run(self, run_id: int) -> TrainingRunView:
        return _run_view(self._run(lambda s: _get(s, TrainingRun, run_id, "training run"), write=False))

    def list_training_runs(self, limit: int = 50) -> list[TrainingRunView]:
        """The most recent runs, newest first."""
        statement = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(int(limit))
        return [_run_view(r) for r in self._run(lambda s: list(s.scalars(statement)), write=False)]

    # ------------------------------------------------------------------ export and checks
    def export_tagged(self, out_dir: str | Path, *, test_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
        """Write the tagged inspections as a station-layout dataset; see core.storage.export."""
        from core.storage.export import export_tagged
        return export_tagged(self, out_dir, test_fraction=test_fraction, seed=seed)

    def tagged_for_export(self) -> list[tuple[int, str, str | None, str | None, str | None]]:
        """(id, label, image_path, image_sha256, label_mask_path) of every tagged inspection, by id."""
        statement = (select(Inspection.id, Inspection.label, Inspection.image_path, Inspection.image_sha256,
                            Label.mask_path)
                     .outerjoin(Label, and_(Label.inspection_id == Inspection.id, Label.is_current == true()))
                     .where(Inspection.label.is_not(None)).order_by(Inspection.id))
        return [tuple(r) for r in self._run(lambda s: s.execute(statement).all(), write=False)]

    def check_integrity(self, *, verify_hashes: bool = False) -> IntegrityReport:
        """Check the database (SQLite's integrity_check; PostgreSQL is trusted) and that every referenced
        image/mask file exists (and, with verify_hashes, still matches its sha256). Streams the rows."""
        with self._engine.connect() as connection:
            database = "ok"
            if self.backend == "sqlite":
                answers = [r[0] for r in connection.execute(text("PRAGMA integrity_check"))]
                database = "ok" if answers == ["ok"] else "; ".join(map(str, answers))
            missing: list[int] = []
            corrupt: list[int] = []
            checked = rows = 0
            statement = select(Inspection.id, Inspection.image_path, Inspection.image_sha256, Inspection.mask_path)
            for inspection_id, image_path, sha256, mask_path in connection.execution_options(yield_per=2000) \
                    .execute(statement):
                rows += 1
                for relative in (image_path, mask_path):
                    if relative is None:
                        continue
                    checked += 1
                    if not self.images.path(relative).is_file():
                        missing.append(int(inspection_id))
                if verify_hashes and image_path is not None and int(inspection_id) not in missing:
                    try:
                        self.images.verify(image_path, sha256)
                    except ImageError:
                        corrupt.append(int(inspection_id))
            connection.rollback()
        return IntegrityReport(database, rows, checked, sorted(set(missing)), corrupt)


# ---------------------------------------------------------------------- helpers
def _view_select():
    """Inspection rows with their current tag's user, time and mask."""
    return (select(Inspection, Label.user_name, Label.time, Label.mask_path)
            .outerjoin(Label, and_(Label.inspection_id == Inspection.id, Label.is_current == true())))


def _inspection_view(row: Inspection, label_user: str | None, label_time: datetime | None,
                     label_mask_path: str | None) -> InspectionView:
    return InspectionView(
        id=row.id, time=row.time, camera_id=row.camera_id, frame_seq=row.frame_seq,
        camera_timestamp_ns=row.camera_timestamp_ns, host_timestamp=row.host_timestamp, model_id=row.model_id,
        score=row.score, verdict=row.verdict, ok_threshold=row.ok_threshold, ng_threshold=row.ng_threshold,
        pixel_threshold=row.pixel_threshold, latency_ms=row.latency_ms, width=row.width, height=row.height,
        image_path=row.image_path, image_sha256=row.image_sha256, mask_path=row.mask_path, label=row.label,
        label_user=label_user, label_time=label_time, label_mask_path=label_mask_path)


def _user_view(row: UserRow) -> User:
    return User(id=row.id, name=row.name, role=row.role, active=row.active, created=row.created)


def _model_view(row: ModelVersion) -> ModelVersionView:
    return ModelVersionView(id=row.id, package_path=row.package_path, family=row.family, name=row.name,
                            meta=json.loads(json.dumps(row.meta or {})), created=row.created,
                            is_active=bool(row.is_active), activated_at=row.activated_at)


def _run_view(row: TrainingRun) -> TrainingRunView:
    return TrainingRunView(id=row.id, family=row.family, supervision=row.supervision, dataset_path=row.dataset_path,
                           status=row.status, progress=float(row.progress), stage=row.stage or "", log=row.log or "",
                           result_path=row.result_path, user_name=row.user_name, created=row.created,
                           started=row.started, finished=row.finished)


def _get(session: Session, entity: type[T], key: int, what: str) -> T:
    row = session.get(entity, int(key))
    if row is None:
        raise NotFoundError(f"no {what} with id {key}")
    return row


def _check_label(label: str) -> str:
    label = str(getattr(label, "value", label))
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    return label


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 64 or not name.strip().isprintable():
        raise ValueError("user name must be 1 to 64 printable characters")
    return name.strip()


def _json_dict(value: dict, what: str) -> dict:
    """A deep copy of ``value`` after checking it is a JSON-serialisable dict."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from exc
