"""Creating the SQLAlchemy engine: SQLite (WAL, foreign keys, busy timeout on every connection) or any URL.

SQLite transactions are begun by us rather than by the sqlite3 module, so that a write transaction can
start with ``BEGIN IMMEDIATE`` (takes the write lock up front: no deferred lock upgrade that fails
without waiting) while reads keep a plain ``BEGIN`` and never block the writer under WAL.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

IMMEDIATE = "station_immediate"  # execution option: begin this transaction with BEGIN IMMEDIATE (SQLite)


def default_url(data_dir: str | Path) -> str:
    """The default database: ``<data_dir>/station.db``."""
    return f"sqlite:///{Path(data_dir).resolve() / 'station.db'}"


def make_engine(url: str, *, busy_timeout_ms: int = 2000) -> Engine:
    """An engine for ``url``; for SQLite, every connection gets WAL, foreign keys and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread off: the pool hands a connection to one thread at a time, any thread may use StationDB.
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000.0})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module doc)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: consistent after any crash
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        immediate = connection.get_execution_options().get(IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
