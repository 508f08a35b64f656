"""The station database schema (SQLAlchemy 2 typed ORM). Works on SQLite and PostgreSQL.

Times are stored as naive UTC in every backend (``UTCDateTime``) and come back tz-aware UTC, so
ordering and comparison behave the same on both.

Invariant kept by StationDB in one transaction per tag: ``inspections.label`` equals the label of the
inspection's ``labels`` row with ``is_current`` true (denormalised so the review table can filter
tagged/untagged through an index on 100,000+ rows).
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        false, true)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

SCHEMA_VERSION = 1


class UTCDateTime(TypeDecorator):
    """tz-aware datetime in Python <-> naive UTC in the database."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"refusing to store naive datetime {value!r}: give a timezone")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class StationInfo(Base):
    """Key/value facts about the database itself (schema_version)."""

    __tablename__ = "station_info"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package_path: Mapped[str] = mapped_column(String(1024), unique=True)
    family: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256))
    meta: Mapped[dict] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # At most one active model, enforced by the database itself.
        Index("uq_model_versions_one_active", "is_active", unique=True,
              sqlite_where=is_active == true(), postgresql_where=is_active == true()),
    )


class Inspection(Base):
    __tablename__ = "inspections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    camera_id: Mapped[str] = mapped_column(String(128))
    frame_seq: Mapped[int] = mapped_column(BigInteger)
    camera_timestamp_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    host_timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"),
                                                 nullable=True)
    score: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(8))
    ok_threshold: Mapped[float] = mapped_column(Float)
    ng_threshold: Mapped[float] = mapped_column(Float)
    pixel_threshold: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    image_path: Mapped[str | None] = mapped_column(String(256), nullable=True)
    image_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mask_path: Mapped[str | None] = mapped_column(String(256), nullable=True)
    label: Mapped[str | None] = mapped_column(String(8), nullable=True)  # current tag, see module doc

    __table_args__ = (
        Index("ix_inspections_time", "time"),
        Index("ix_inspections_verdict_time", "verdict", "time"),
        Index("ix_inspections_model_time", "model_id", "time"),
        Index("ix_inspections_label_time", "label", "time"),
        Index("ix_inspections_image_sha256", "image_sha256"),
    )


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created: Mapped[datetime] = mapped_column(UTCDateTime)


class Label(Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(8))
    mask_path: Mapped[str | None] = mapped_column(String(256), nullable=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    user_name: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    __table_args__ = (
        Index("ix_labels_inspection", "inspection_id"),
        Index("uq_labels_one_current", "inspection_id", unique=True,
              sqlite_where=is_current == true(), postgresql_where=is_current == true()),
    )


class TrainingRun(Base):
    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    family: Mapped[str] = mapped_column(String(64))
    supervision: Mapped[str] = mapped_column(String(32))
    dataset_path: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(256), default="")
    log: Mapped[str] = mapped_column(Text, default="")
    result_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    user_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    started: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditLog(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    user_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict] = mapped_column(JSON)

    __table_args__ = (Index("ix_audit_log_time", "time"),)
