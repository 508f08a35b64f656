"""The database under faults and load: a writer killed mid-stream, a locked database, concurrent writers,
and paged queries on 100,000 inspections. Runs on SQLite and on a real PostgreSQL server."""
from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.storage import DatabaseBusyError, InspectionRecord, open_database

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
BATCH = 4

# The child writes batches of BATCH records with distinct images forever and prints one line (the records
# written so far) after each write_inspections call returned, i.e. after each commit.
CHILD = r"""
import sys
from datetime import datetime, timedelta, timezone
import numpy as np
from core.storage import InspectionRecord, open_database
url, data_dir, batch = (sys.argv[1] or None), sys.argv[2], int(sys.argv[3])
db = open_database(url, data_dir)
rng = np.random.default_rng(0)
t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
n = db.count_inspections()  # a restarted writer continues the frame numbers
while True:
    records = []
    for _ in range(batch):
        image = rng.integers(0, 256, size=(96, 128), dtype=np.uint8)
        when = t0 + timedelta(milliseconds=n)
        records.append(InspectionRecord(when, "cam-1", n, n, when, None, 0.9, "NG", 0.3, 0.7, 0.5, 1.0,
                                        128, 96, image=image, mask=image > 200))
        n += 1
    db.write_inspections(records)
    print(n, flush=True)
"""


def _record(i: int) -> InspectionRecord:
    when = T0 + timedelta(seconds=i)
    return InspectionRecord(when, "cam-1", i, None, when, None, 0.1, "OK", 0.3, 0.7, 0.5, 2.0, 32, 24)


def test_writer_killed_mid_stream_leaves_consistent_database(db_url, data_dir, backend):
    committed = 0
    for cycle, target in enumerate((6, 14)):  # kill twice; the second child appends to what the first left
        child = subprocess.Popen([sys.executable, "-c", CHILD, db_url or "", str(data_dir), str(BATCH)],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reported = committed  # the child's last printed total: rows known to be committed
        try:
            deadline = time.monotonic() + 60
            while reported < target * BATCH and time.monotonic() < deadline:
                line = child.stdout.readline()
                if not line:
                    pytest.fail(f"writer child died: {child.stderr.read()[-2000:]}")
                reported = int(line)
            time.sleep(0.013 * (cycle + 1))  # land somewhere inside the next batch
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(timeout=10)
            # Under load the child may be several commits ahead of what was read so far: take every line
            # it printed before it died.
            for line in child.stdout.read().split():
                reported = int(line)
            child.stdout.close()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL

        db = open_database(db_url, data_dir)
        try:
            rows = db.count_inspections()
            report = db.check_integrity(verify_hashes=True)
            seqs = sorted(v.frame_seq for v in db.list_inspections(limit=10_000))
        finally:
            db.close()
        assert report.ok, report
        assert report.database == "ok" and report.inspections == rows
        # Whole batches only; at most the batch being written at the kill may have committed unreported.
        assert rows % BATCH == 0 and reported <= rows <= reported + BATCH
        committed = rows
        assert len(set(seqs)) == rows
    # Every file under its final name matches the hash in that name (temp-then-rename: no torn files);
    # a kill during a file write leaves at most an unreferenced .tmp-* file.
    for path in (data_dir / "images").rglob("*.png"):
        if path.name.startswith(".tmp-"):
            continue
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    db = open_database(db_url, data_dir)
    try:
        db.images.remove_stale_temp_files(min_age_s=0)
        assert not list((data_dir / "images").rglob(".tmp-*"))
        assert db.check_integrity(verify_hashes=True).ok
    finally:
        db.close()


def _hold_lock(url_or_path: str, backend: str, seconds: float, started: threading.Event) -> None:
    if backend == "sqlite":
        connection = sqlite3.connect(url_or_path, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO station_info (key, value) VALUES ('lock-test', 'x')")
        started.set()
        time.sleep(seconds)
        connection.execute("COMMIT")
        connection.close()
        return
    engine = create_engine(url_or_path)
    with engine.begin() as connection:
        connection.execute(text("LOCK TABLE inspections IN EXCLUSIVE MODE"))
        started.set()
        time.sleep(seconds)
    engine.dispose()


def test_locked_database_retried_without_losing_rows(db_url, data_dir, backend):
    # A short SQLite busy timeout, so that our own retry-with-backoff does the waiting.
    db = open_database(db_url, data_dir, busy_timeout_ms=50)
    try:
        db.write_inspections([_record(0)])
        target = str(data_dir / "station.db") if backend == "sqlite" else db_url
        started = threading.Event()
        holder = threading.Thread(target=_hold_lock, args=(target, backend, 1.0, started))
        holder.start()
        assert started.wait(10)
        begun = time.monotonic()
        ids = db.write_inspections([_record(i) for i in range(1, 21)])
        waited = time.monotonic() - begun
        holder.join()
        assert len(ids) == 20 and db.count_inspections() == 21
        assert waited > 0.5  # it really had to wait for the lock
        if backend == "sqlite":
            assert db.lock_retries > 0
    finally:
        db.close()


def test_lock_held_past_retry_window_raises_and_writes_nothing(data_dir):
    db = open_database(None, data_dir, busy_timeout_ms=20, lock_retry_s=0.3)
    try:
        started = threading.Event()
        holder = threading.Thread(target=_hold_lock, args=(str(data_dir / "station.db"), "sqlite", 1.2, started))
        holder.start()
        assert started.wait(10)
        with pytest.raises(DatabaseBusyError, match="nothing was written"):
            db.write_inspections([_record(i) for i in range(5)])
        holder.join()
        assert db.count_inspections() == 0
        assert len(db.write_inspections([_record(i) for i in range(5)])) == 5
    finally:
        db.close()


def test_concurrent_writers_and_taggers(db):
    """Pipeline-like writer threads and a tagging thread at once: every row and tag arrives."""
    user = db.create_user("olga", "olga-pass", "operator")
    seed_ids = db.write_inspections([_record(i) for i in range(10)])
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for b in range(15):
                db.write_inspections([_record(offset + b * 5 + i) for i in range(5)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def tagger() -> None:
        try:
            for n, rid in enumerate(seed_ids * 3):
                db.tag(rid, "OK" if (n // len(seed_ids)) % 2 else "NG", user)  # NG, OK, NG
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(1000 * k,)) for k in range(1, 4)] + \
        [threading.Thread(target=tagger)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert db.count_inspections() == 10 + 3 * 75
    assert db.count_inspections(tagged=True) == 10
    for rid in seed_ids:
        history = db.label_history(rid)
        assert len(history) == 3 and sum(h.is_current for h in history) == 1


def _bulk_fill(db, n: int) -> None:
    """n inspections inserted server-side (fast): one per second, 90 % OK / 7 % NG / 3 % REVIEW, 1 in 50 tagged."""
    if db.backend == "sqlite":
        series = ("WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < :n) ",
                  "datetime('2026-03-01 08:00:00', '+' || i || ' seconds')")
    else:
        series = ("WITH s(i) AS (SELECT generate_series(0, :n - 1)) ",
                  "TIMESTAMP '2026-03-01 08:00:00' + i * INTERVAL '1 second'")
    verdict = "CASE WHEN i % 100 < 3 THEN 'REVIEW' WHEN i % 100 < 10 THEN 'NG' ELSE 'OK' END"
    statement = (series[0] + "INSERT INTO inspections (time, camera_id, frame_seq, host_timestamp, score, verdict, "
                 "ok_threshold, ng_threshold, pixel_threshold, latency_ms, width, height, label) "
                 f"SELECT {series[1]}, 'cam-1', i, {series[1]}, 0.5, {verdict}, 0.3, 0.7, 0.5, 5.0, 400, 400, "
                 "CASE WHEN i % 50 = 0 THEN 'OK' ELSE NULL END FROM s")
    if db.backend == "sqlite":  # sqlite puts the CTE after INSERT ... ; PostgreSQL accepts it in front
        statement = statement.replace(series[0] + "INSERT INTO inspections (", "INSERT INTO inspections (", 1)
        statement = statement.replace(" SELECT ", " " + series[0] + "SELECT ", 1)
    with db.engine.begin() as connection:
        connection.execute(text(statement), {"n": n})
        if db.backend == "postgresql":
            connection.execute(text("ANALYZE inspections"))


def test_paged_queries_fast_on_100k_inspections(db):
    _bulk_fill(db, 100_000)
    assert db.count_inspections() == 100_000
    queries = [dict(), dict(verdict="NG"), dict(review_first=True), dict(review_first=True, offset=50_000),
               dict(tagged=True), dict(tagged=False, verdict="REVIEW"), dict(offset=99_900),
               dict(since=T0 + timedelta(hours=10), until=T0 + timedelta(hours=11))]
    timings = {}
    for query in queries:
        begun = time.perf_counter()
        page = db.list_inspections(limit=100, **query)
        filters = {k: v for k, v in query.items() if k not in ("review_first", "offset")}
        total = db.count_inspections(**filters)
        timings[str(query)] = time.perf_counter() - begun
        assert len(page) == 100 and total >= 100
        assert [v.time for v in page] == sorted((v.time for v in page), reverse=True) or query.get("review_first")
    first = db.list_inspections(review_first=True, limit=100)
    assert all(v.verdict == "REVIEW" for v in first)
    assert db.count_inspections(verdict="REVIEW") == 3000 and db.count_inspections(tagged=True) == 2000
    print({k: f"{v * 1000:.1f} ms" for k, v in timings.items()})
    # A page plus its count: a handful of ms through the indexes; generous bound for a loaded 2-core machine.
    assert max(timings.values()) < 1.0, timings
