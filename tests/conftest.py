"""Shared fixtures: the database under test, on SQLite and on a real PostgreSQL server.

- ``pg_server`` (session): a throwaway PostgreSQL server (tests/pg_server.py), or the one named by
  INSPECTOR_TEST_PG_URL; tests that need it skip with the reason when no server can be started.
- ``db_url`` (parametrised "sqlite" / "postgresql"): a fresh, empty database URL per test
  (None for SQLite: the default file inside the test's data directory).
- ``db``: a StationDB opened on ``db_url`` with the data directory ``tmp_path / "data"``.
- ``sqlite_db``: the same on SQLite only, for tests that need one backend.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/pg_server.py, whatever pytest's import mode

from pg_server import PostgresServer, PostgresUnavailable  # noqa: E402

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, request) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def db(db_url: str | None, data_dir: Path):
    from core.storage import open_database

    database = open_database(db_url, data_dir)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def sqlite_db(data_dir: Path):
    from core.storage import open_database

    database = open_database(None, data_dir)
    try:
        yield database
    finally:
        database.close()
