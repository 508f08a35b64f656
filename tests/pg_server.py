"""A throwaway PostgreSQL server for the tests, from Debian's postgresql package (or an existing one).

``PostgresServer.start()`` finds initdb/pg_ctl under /usr/lib/postgresql/*/bin, initialises a cluster
in a temporary folder, starts it on a free localhost port (unix socket in the same folder, fsync off:
the data is thrown away) and ``stop()`` removes it all. As root the binaries run as the ``postgres``
user through ``runuser`` (PostgreSQL refuses to run as root).

Set INSPECTOR_TEST_PG_URL (e.g. postgresql+psycopg2://user:pw@host/db) to use an existing server
instead; each test then gets its own schema when the account may CREATE SCHEMA.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

ENV_URL = "INSPECTOR_TEST_PG_URL"
NOT_FOUND = "PostgreSQL server binaries not found (apt-get install postgresql)"


class PostgresUnavailable(RuntimeError):
    """No server can be started here; the message says why (tests skip with it)."""


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl, or None."""
    candidates = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bin_dir = Path(initdb).parent
        if (bin_dir / "pg_ctl").is_file():
            try:
                version = float(bin_dir.parent.name)
            except ValueError:
                version = 0.0
            candidates.append((version, bin_dir))
    return max(candidates)[1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server. base_url points at its maintenance database ``postgres``."""

    base_url: str
    root: Path | None = None  # temp folder of a server we started (None for INSPECTOR_TEST_PG_URL)
    _bin_dir: Path | None = None
    _run_as: list[str] | None = None

    @classmethod
    def start(cls) -> "PostgresServer":
        """Start a fresh server, or wrap the one named by INSPECTOR_TEST_PG_URL; PostgresUnavailable if neither."""
        if os.environ.get(ENV_URL):
            return cls(base_url=os.environ[ENV_URL])
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresUnavailable(NOT_FOUND)
        run_as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise PostgresUnavailable("running as root and runuser is missing: cannot start PostgreSQL as 'postgres'")
            try:
                import pwd
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server") from exc
            run_as = [runuser, "-u", "postgres", "--"]
        # Not under pytest's tmp_path: that is mode 0700 and root-owned, the postgres user could not enter it.
        root = Path(tempfile.mkdtemp(prefix="inspector-pg-"))
        server = cls(base_url="", root=root, _bin_dir=bin_dir, _run_as=run_as)
        try:
            if run_as:
                shutil.chown(root, user="postgres")
            server._init_and_start()
        except BaseException:
            server.stop()
            raise
        return server

    def _call(self, *args: str, timeout: float = 60) -> None:
        command = [*(self._run_as or []), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(args[:2])} failed ({result.returncode}): "
                                      f"{(result.stderr or result.stdout).strip()[-800:]}")

    def _init_and_start(self) -> None:
        assert self.root is not None and self._bin_dir is not None
        data = self.root / "data"
        self._call(str(self._bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--locale=C", "--no-sync")
        for attempt in range(3):
            port = _free_port()
            options = (f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            try:
                self._call(str(self._bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"),
                           "-o", options, "-w", "-t", "60", "start", timeout=90)
            except PostgresUnavailable:
                if attempt == 2:
                    log = self.root / "server.log"
                    raise PostgresUnavailable("PostgreSQL did not start: " +
                                              (log.read_text()[-800:] if log.is_file() else "no log"))
                continue
            self.base_url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
            return

    def create_database(self) -> str:
        """A fresh, empty place for one test's tables; returns its URL.

        It is a new schema on the server's database, selected through the connection's search_path
        (creating a schema takes milliseconds, a database most of a second). Falls back to the base
        database itself (cleared afterwards) when the account may not create schemas.
        """
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = create_engine(self.base_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE SCHEMA "{name}"'))  # name is generated above, not input
        except Exception:  # noqa: BLE001 - no CREATE SCHEMA right: reuse the given database
            return self.base_url
        finally:
            engine.dispose()
        url = make_url(self.base_url).update_query_dict({"options": f"-csearch_path={name}"})
        return url.render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        """Remove what create_database made (the base database is emptied of station tables instead)."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        options = make_url(url).query.get("options", "")
        name = options.removeprefix("-csearch_path=") if isinstance(options, str) else ""
        if not name.startswith("t_"):
            from core.storage.schema import Base
            engine = create_engine(url)
            try:
                Base.metadata.drop_all(engine)
            finally:
                engine.dispose()
            return
        engine = create_engine(self.base_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Stop a server we started and delete its folder (no-op for INSPECTOR_TEST_PG_URL)."""
        if self.root is None:
            return
        data = self.root / "data"
        if self._bin_dir is not None and (data / "postmaster.pid").exists():
            try:
                self._call(str(self._bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
