"""The station database on SQLite and a real PostgreSQL server: schema, round trips, paging, tags, users,
roles, audit, model versions, training runs and the export of tagged images as a dataset."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, text

from core.data.dataset import open_dataset
from core.data.images import read_image, read_mask
from core.storage import (ROLE_PERMISSIONS, InspectionRecord, NotFoundError, PermissionDenied, StorageError, User,
                          allowed, open_database, require)
from core.storage.export import split_ids

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


def noise(seed: int, shape=(24, 32), dtype=np.uint8) -> np.ndarray:
    high = 65535 if dtype == np.uint16 else 255
    return np.random.default_rng(seed).integers(0, high, size=shape, endpoint=True).astype(dtype)


def record(i: int, *, verdict: str = "OK", image: np.ndarray | None = None, mask: np.ndarray | None = None,
           model_id: int | None = None, score: float | None = None, seconds: float | None = None) -> InspectionRecord:
    shape = image.shape[:2] if image is not None else (24, 32)
    when = T0 + timedelta(seconds=i if seconds is None else seconds)
    return InspectionRecord(time=when, camera_id="cam-1", frame_seq=i, camera_timestamp_ns=1_000_000 * i,
                            host_timestamp=when + timedelta(milliseconds=3), model_id=model_id,
                            score=score if score is not None else {"OK": 0.1, "REVIEW": 0.5, "NG": 0.9}[verdict],
                            verdict=verdict, ok_threshold=0.3, ng_threshold=0.7, pixel_threshold=0.55,
                            latency_ms=12.5, width=shape[1], height=shape[0], image=image, mask=mask)


@pytest.fixture
def admin(db) -> User:
    return db.create_user("admin", "admin-pass", "admin")


@pytest.fixture
def operator(db) -> User:
    return db.create_user("olga", "olga-pass", "operator")


@pytest.fixture
def engineer(db) -> User:
    return db.create_user("erik", "erik-pass", "engineer")


def test_schema_created(db, backend):
    inspector = inspect(db.engine)
    assert {"inspections", "labels", "model_versions", "training_runs", "users", "audit_log"} \
        <= set(inspector.get_table_names())
    indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes("inspections")}
    assert {("time",), ("verdict", "time"), ("model_id", "time"), ("label", "time")} <= indexed
    assert db.backend == backend
    if backend == "sqlite":
        assert Path(db.engine.url.database) == (db.data_dir / "station.db").resolve()
        with db.engine.connect() as connection:  # the pragmas hold on every pooled connection
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 2000


def test_reopen_keeps_data_and_refuses_newer_schema(db_url, data_dir, backend):
    db = open_database(db_url, data_dir)
    db.write_inspections([record(1)])
    db.close()
    db = open_database(db_url, data_dir)
    assert db.count_inspections() == 1
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE station_info SET value = '99' WHERE key = 'schema_version'"))
    db.close()
    with pytest.raises(StorageError, match="schema version 99"):
        open_database(db_url, data_dir)


def test_write_read_round_trip(db):
    grey8 = noise(1)
    rgb8 = noise(2, (24, 32, 3))
    grey16 = noise(3, dtype=np.uint16)
    mask = noise(4) > 200
    records = [record(0, verdict="NG", image=grey8, mask=mask), record(1, verdict="REVIEW", image=rgb8),
               record(2, verdict="OK", image=grey16), record(3, verdict="OK")]
    ids = db.write_inspections(records)
    assert len(ids) == 4 and ids == sorted(ids)
    for rid, rec in zip(ids, records):
        view = db.get_inspection(rid)
        assert view.time == rec.time and view.time.tzinfo is not None
        assert view.host_timestamp == rec.host_timestamp
        assert (view.camera_id, view.frame_seq, view.camera_timestamp_ns) == ("cam-1", rec.frame_seq,
                                                                               rec.camera_timestamp_ns)
        assert (view.score, view.verdict, view.latency_ms) == (rec.score, rec.verdict, 12.5)
        assert (view.ok_threshold, view.ng_threshold, view.pixel_threshold) == (0.3, 0.7, 0.55)
        assert (view.width, view.height, view.label) == (32, 24, None)
    for rid, image in zip(ids, (grey8, rgb8, grey16)):
        loaded = db.load_image(rid)
        assert loaded.dtype == image.dtype and np.array_equal(loaded, image)
        view = db.get_inspection(rid)
        stored = db.data_dir / view.image_path
        assert stored.is_file() and view.image_path.startswith("images/")
        digest = hashlib.sha256(stored.read_bytes()).hexdigest()
        assert digest == view.image_sha256 and stored.name == f"{digest}.png"
        assert stored.parent.name == digest[2:4] and stored.parent.parent.name == digest[:2]
    assert np.array_equal(db.load_mask(ids[0]), mask)
    assert db.load_mask(ids[1]) is None
    with pytest.raises(StorageError, match="no stored image"):
        db.load_image(ids[3])
    with pytest.raises(NotFoundError):
        db.get_inspection(10_000)
    assert db.write_inspections([]) == []


def test_corrupted_image_file_detected(db):
    (rid,) = db.write_inspections([record(0, image=noise(5))])
    path = db.data_dir / db.get_inspection(rid).image_path
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(StorageError, match="sha256"):
        db.load_image(rid)
    report = db.check_integrity(verify_hashes=True)
    assert not report.ok and report.corrupt_files == [rid]


def test_identical_images_stored_once(db):
    image = noise(7)
    ids = db.write_inspections([record(i, image=image.copy()) for i in range(3)])
    ids += db.write_inspections([record(3, image=image.copy()), record(4, image=noise(8))])
    paths = {db.get_inspection(i).image_path for i in ids}
    assert len(paths) == 2
    assert len(list((db.data_dir / "images").rglob("*.png"))) == 2
    assert not list((db.data_dir / "images").rglob(".tmp-*"))


def test_invalid_records_refused_before_anything_is_written(db):
    good = record(0, image=noise(9))
    naive = record(1)
    naive.time = naive.time.replace(tzinfo=None)
    wrong_size = record(2, image=noise(10))
    wrong_size.width = 99
    bad_mask = record(3, mask=np.ones((24, 32), dtype=np.uint8))
    for bad, message in ((naive, "timezone-aware"), (wrong_size, "32x24 but the record says 99x24"),
                         (bad_mask, "bool"), (record(4, verdict="MAYBE", score=0.5), "verdict")):
        with pytest.raises(ValueError, match=message):
            db.write_inspections([good, bad])
    assert db.count_inspections() == 0
    assert not (db.data_dir / "images").exists()
    # The foreign key to model_versions is enforced on both backends; the whole batch is refused.
    with pytest.raises(StorageError, match="refused"):
        db.write_inspections([record(5), record(6, model_id=12345)])
    assert db.count_inspections() == 0


def _populate(db, engineer) -> tuple[list[int], int]:
    """300 inspections one second apart: every 10th REVIEW, every 7th NG (unless REVIEW), two models."""
    model_a = db.register_model("/models/a", {"family": "baseline"}, user=engineer)
    model_b = db.register_model("/models/b", {"family": "baseline"}, user=engineer)
    records = []
    for i in range(300):
        verdict = "REVIEW" if i % 10 == 0 else "NG" if i % 7 == 0 else "OK"
        records.append(record(i, verdict=verdict, model_id=model_a if i < 150 else model_b))
    return db.write_inspections(records), model_a


def test_paging_filters_and_review_first(db, engineer, operator):
    ids, model_a = _populate(db, engineer)
    newest_first = list(reversed(ids))
    pages = [db.list_inspections(offset=o, limit=70) for o in range(0, 300, 70)]
    assert [v.id for page in pages for v in page] == newest_first
    assert db.count_inspections() == 300

    ng = db.list_inspections(verdict="NG", limit=1000)
    assert [v.id for v in ng] == [ids[i] for i in reversed(range(300)) if i % 10 and i % 7 == 0]
    assert db.count_inspections(verdict="NG") == len(ng)
    assert db.count_inspections(verdict=["NG", "REVIEW"]) == len(ng) + 30
    assert db.verdict_counts() == {"OK": 300 - 30 - len(ng), "NG": len(ng), "REVIEW": 30}

    window = db.list_inspections(since=T0 + timedelta(seconds=100), until=T0 + timedelta(seconds=110), limit=50)
    assert [v.frame_seq for v in window] == list(range(109, 99, -1))
    assert db.count_inspections(since=T0 + timedelta(seconds=100), until=T0 + timedelta(seconds=110)) == 10
    assert db.count_inspections(model_id=model_a) == 150
    assert {v.model_id for v in db.list_inspections(model_id=model_a, limit=200)} == {model_a}

    db.tag_many(ids[:5], "NG", operator)
    assert db.count_inspections(tagged=True) == 5 and db.count_inspections(tagged=False) == 295
    assert [v.id for v in db.list_inspections(tagged=True)] == list(reversed(ids[:5]))
    assert db.count_inspections(label="NG", verdict="REVIEW") == 1  # frame 0

    # The REVIEW queue comes first, newest first, then the rest; pages join without gaps or repeats.
    expected = [ids[i] for i in reversed(range(300)) if i % 10 == 0] + \
               [ids[i] for i in reversed(range(300)) if i % 10]
    paged = [v.id for o in range(0, 300, 25) for v in db.list_inspections(review_first=True, offset=o, limit=25)]
    assert paged == expected
    untagged_first = db.list_inspections(review_first=True, tagged=False, limit=30)
    assert [v.frame_seq for v in untagged_first] == list(range(290, -1, -10))[:29] + [299]
    with pytest.raises(ValueError):
        db.list_inspections(limit=0)
    with pytest.raises(ValueError, match="verdict"):
        db.count_inspections(verdict="BAD")


def test_tag_and_retag_are_audited_with_history(db, operator):
    image = noise(11)
    (rid,) = db.write_inspections([record(0, verdict="REVIEW", image=image)])
    drawn = np.zeros(image.shape, dtype=bool)
    drawn[4:9, 5:12] = True
    db.tag(rid, "NG", operator, mask=drawn)
    view = db.get_inspection(rid)
    assert (view.label, view.label_user) == ("NG", "olga") and view.label_time is not None
    assert np.array_equal(db.load_label_mask(rid), drawn)

    db.tag(rid, "NG", operator)  # the same tag again: nothing changes, nothing audited
    db.tag(rid, "OK", operator)
    view = db.get_inspection(rid)
    assert view.label == "OK" and view.label_mask_path is None and db.load_label_mask(rid) is None
    history = db.label_history(rid)
    assert [(h.label, h.is_current) for h in history] == [("NG", False), ("OK", True)]
    assert history[0].mask_path is not None

    entries = [e for e in db.list_audit() if e.action in ("tag", "retag")]
    assert [(e.action, e.user_name, e.detail["old"], e.detail["new"]) for e in entries] == \
        [("retag", "olga", "NG", "OK"), ("tag", "olga", None, "NG")]
    assert all(e.detail["inspection_id"] == rid for e in entries)

    with pytest.raises(ValueError, match="mask"):
        db.tag(rid, "NG", operator, mask=np.zeros((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="label"):
        db.tag(rid, "BAD", operator)
    with pytest.raises(NotFoundError):
        db.tag(99_999, "OK", operator)
    assert db.get_inspection(rid).label == "OK"


def test_tag_many_in_one_transaction(db, operator):
    ids = db.write_inspections([record(i) for i in range(6)])
    db.tag(ids[0], "NG", operator)
    assert db.tag_many(ids[:4], "OK", operator) == 4
    assert db.tag_many(ids[:4], "OK", operator) == 0
    assert [db.get_inspection(i).label for i in ids] == ["OK"] * 4 + [None, None]
    entry = next(e for e in db.list_audit() if e.action == "tag_many")
    assert entry.detail["old"][str(ids[0])] == "NG" and sorted(entry.detail["ids"]) == ids[:4]
    with pytest.raises(NotFoundError):  # one unknown id: nothing of the call is applied
        db.tag_many([ids[4], 99_999], "NG", operator)
    assert db.get_inspection(ids[4]).label is None
    assert [(s, l) for s, l in db.tagged_scores()] == [(0.1, "OK")] * 4


def test_roles_and_permissions(db, operator, engineer, admin):
    assert ROLE_PERMISSIONS["operator"] == {"tag", "start_stop"}
    assert {"retrain", "calibrate", "promote", "settings"} <= ROLE_PERMISSIONS["engineer"]
    assert "manage_users" not in ROLE_PERMISSIONS["engineer"] and "manage_users" in ROLE_PERMISSIONS["admin"]
    for action in ("retrain", "promote", "calibrate", "settings", "manage_users"):
        with pytest.raises(PermissionDenied):
            require(operator, action)
    require(operator, "tag")
    require(engineer, "promote")
    assert not allowed(None, "tag")

    model = db.register_model("/models/m", {"family": "baseline"})
    with pytest.raises(PermissionDenied):
        db.create_training_run("supersimplenet", "weak", "/data/export", operator)
    with pytest.raises(PermissionDenied):
        db.activate_model(model, operator)
    with pytest.raises(PermissionDenied):
        db.create_user("mallory", "pass1234", "admin", by=engineer)
    # A forged User object does not help: the role stored in the database decides.
    forged = User(id=operator.id, name=operator.name, role="admin", active=True)
    with pytest.raises(PermissionDenied):
        db.activate_model(model, forged)
    assert db.active_model() is None and db.list_training_runs() == []

    db.update_user(operator.id, by=admin, active=False)
    (rid,) = db.write_inspections([record(0)])
    with pytest.raises(PermissionDenied):
        db.tag(rid, "OK", operator)
    assert db.authenticate("olga", "olga-pass") is None
    with pytest.raises(StorageError, match="no active admin"):
        db.update_user(admin.id, by=admin, role="engineer")
    changed = db.update_user(engineer.id, by=admin, role="admin")
    assert changed.role == "admin"
    assert any(e.action == "update_user" and e.detail["changes"]["role"] == ["engineer", "admin"]
               for e in db.list_audit())


def test_passwords_hashed_and_checked(db, backend):
    alice = db.create_user("alice", "correct horse", "operator")
    db.create_user("bob", "correct horse", "engineer")
    with pytest.raises(StorageError, match="already exists"):
        db.create_user("alice", "whatever1", "operator")
    with pytest.raises(ValueError):
        db.create_user("carol", "x", "operator")
    with pytest.raises(ValueError, match="role"):
        db.create_user("carol", "long enough", "boss")
    with db.engine.connect() as connection:
        hashes = dict(connection.execute(text("SELECT name, password_hash FROM users")).all())
    assert all("correct horse" not in h for h in hashes.values())
    assert hashes["alice"] != hashes["bob"]  # per-user salt
    assert hashes["alice"].startswith("scrypt$")
    assert db.authenticate("alice", "correct horse") == alice
    assert db.authenticate("alice", "wrong horse") is None
    assert db.authenticate("nobody", "correct horse") is None
    assert [u.name for u in db.list_users()] == ["alice", "bob"]
    actions = [(e.action, e.detail.get("name")) for e in db.list_audit(limit=3)]
    assert actions == [("login_failed", "nobody"), ("login_failed", "alice"), ("login", "alice")]
    db.update_user(alice.id, by=db.create_user("root", "root-pass", "admin"), password="new secret")
    assert db.authenticate("alice", "correct horse") is None
    assert db.authenticate("alice", "new secret") == alice


def test_model_activation_and_rollback(db, engineer, tmp_path):
    meta = {"family": "supersimplenet", "thresholds": {"ok": 0.3, "ng": 0.7, "pixel": 0.5},
            "evaluation": {"image_auroc": 0.97}}
    first = db.register_model(tmp_path / "m1", meta, user=engineer)
    second = db.register_model(tmp_path / "m2", {**meta, "name": "retrained"}, user=engineer)
    assert db.register_model(tmp_path / "m1", meta) == first  # same package: same row
    assert sum(e.action == "register_model" for e in db.list_audit()) == 2  # unchanged: not audited again
    assert db.active_model() is None
    with pytest.raises(StorageError, match="no previously active"):
        db.rollback_model(engineer)

    db.activate_model(first, engineer)
    db.activate_model(second, engineer)
    active = db.active_model()
    assert active.id == second and active.name == "retrained" and active.meta["evaluation"]["image_auroc"] == 0.97
    assert active.package_path == str((tmp_path / "m2").resolve())
    assert [m.is_active for m in db.list_models()] == [True, False]  # newest first; the previous is kept

    assert db.rollback_model(engineer) == first
    assert db.active_model().id == first
    assert sum(m.is_active for m in db.list_models()) == 1
    actions = [(e.action, e.detail.get("model_id"), e.detail.get("previous")) for e in db.list_audit(limit=3)]
    assert actions == [("rollback_model", first, second), ("activate_model", second, first),
                       ("activate_model", first, None)]

    recalibrated = {**meta, "thresholds": {"ok": 0.2, "ng": 0.6, "pixel": 0.5}}
    db.update_model_meta(first, recalibrated, engineer)
    assert db.get_model(first).meta["thresholds"]["ng"] == 0.6
    with pytest.raises(ValueError, match="family"):
        db.register_model(tmp_path / "m3", {"name": "x"})
    with pytest.raises(NotFoundError):
        db.activate_model(12345, engineer)


def test_training_run_updates(db, engineer):
    run = db.create_training_run("supersimplenet", "weak", "/data/export-1", engineer)
    view = db.get_training_run(run)
    assert (view.status, view.progress, view.user_name, view.started) == ("queued", 0.0, "erik", None)
    db.update_training_run(run, status="running", stage="features", progress=0.25, log_append="epoch 1\n")
    db.update_training_run(run, progress=0.5, log_append="epoch 2\n")
    view = db.get_training_run(run)
    assert (view.status, view.stage, view.progress) == ("running", "features", 0.5)
    assert view.log == "epoch 1\nepoch 2\n" and view.started is not None and view.finished is None
    with pytest.raises(ValueError, match="0..1"):
        db.update_training_run(run, progress=1.5)
    with pytest.raises(ValueError, match="status"):
        db.update_training_run(run, status="exploded")
    db.update_training_run(run, status="succeeded", progress=1.0, result_path="/models/new")
    view = db.get_training_run(run)
    assert view.finished_ok and view.result_path == "/models/new" and view.finished >= view.started
    with pytest.raises(ValueError, match="already succeeded"):
        db.update_training_run(run, status="running")
    with pytest.raises(NotFoundError):
        db.update_training_run(run + 100, progress=0.1)
    assert [r.id for r in db.list_training_runs()] == [run]
    assert any(e.action == "start_training" and e.detail["run_id"] == run for e in db.list_audit())


def test_export_tagged_opens_as_dataset(db, operator, tmp_path):
    images = [noise(100 + i, (40, 48)) for i in range(16)]
    verdicts = ["OK"] * 9 + ["NG"] * 7
    ids = db.write_inspections([record(i, verdict=v, image=img) for i, (v, img) in enumerate(zip(verdicts, images))])
    ids_no_image = db.write_inspections([record(50), record(51)])
    masks = {}
    for rid in ids[:8]:
        db.tag(rid, "OK", operator)
    db.tag(ids[8], "NG", operator)          # an OK verdict the operator says is defective
    for n, rid in enumerate(ids[9:]):
        if n < 3:
            masks[rid] = np.zeros((40, 48), dtype=bool)
            masks[rid][5 + n:15 + n, 10:20] = True
            db.tag(rid, "NG", operator, mask=masks[rid])
        else:
            db.tag(rid, "NG", operator)
    db.tag(ids[15], "OK", operator)         # re-tagged: the latest tag counts
    db.tag_many(ids_no_image, "OK", operator)

    out = tmp_path / "export"
    counts = db.export_tagged(out, test_fraction=0.25, seed=3)
    assert counts["skipped_no_image"] == 2 and counts["masks"] == 3
    good, defect = 9, 7
    assert counts["train_good"] + counts["test_good"] == good
    assert counts["train_defect"] + counts["test_defect"] == defect
    assert counts["test_good"] == round(good * 0.25) and counts["test_defect"] == round(defect * 0.25)

    dataset = open_dataset(out)
    assert dataset.layout == "station"
    assert dataset.counts("train") == {"good": counts["train_good"], "defect": counts["train_defect"],
                                       "segmented": sum(1 for s in dataset.train if s.is_segmented)}
    assert dataset.counts("test")["good"] == counts["test_good"]
    assert sum(s.is_segmented for s in dataset.train + dataset.test) == 3
    manifest = json.loads((out / "export.json").read_text())
    by_file = {item["image"]: item for item in manifest["items"]}
    for sample in dataset.train + dataset.test:
        item = by_file[sample.image_path.relative_to(out).as_posix()]
        rid = item["inspection_id"]
        assert sample.label == (1 if item["label"] == "NG" else 0)
        assert np.array_equal(read_image(sample.image_path), images[ids.index(rid)])
        if sample.mask_path is not None:
            assert np.array_equal(read_mask(sample.mask_path), masks[rid])
    retagged = next(item for item in manifest["items"] if item["inspection_id"] == ids[15])
    assert retagged["label"] == "OK" and retagged["image"].endswith(f"/good/ok_{ids[15]:08d}.png")

    again = db.export_tagged(tmp_path / "export2", test_fraction=0.25, seed=3)
    assert again == counts
    listing = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert listing == sorted(p.relative_to(tmp_path / "export2").as_posix() for p in (tmp_path / "export2").rglob("*.png"))
    with pytest.raises(StorageError, match="not empty"):
        db.export_tagged(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no staging left behind


def test_split_is_deterministic_and_keeps_both_sides():
    ids = list(range(1, 21))
    train, test = split_ids(ids, 0.2, seed=0)
    assert len(test) == 4 and sorted(train + test) == ids
    assert split_ids(ids, 0.2, seed=0) == (train, test)
    assert split_ids(ids, 0.2, seed=1) != (train, test)
    assert split_ids([5, 6], 0.1, seed=0)[1] != []   # at least one test image when a class has two
    assert split_ids([5, 6], 0.9, seed=0)[0] != []   # never all of them
    assert split_ids([5], 0.5, seed=0) == ([5], [])


def test_export_with_nothing_tagged_says_so(db, tmp_path):
    db.write_inspections([record(0, image=noise(1))])
    with pytest.raises(StorageError, match="nothing to export"):
        db.export_tagged(tmp_path / "out")


def test_audit_entries(db, engineer):
    db.audit(engineer, "settings", {"exposure_us": [1000, 2000]})
    db.audit(None, "station_start", {})
    entries = db.list_audit(limit=2)
    assert [(e.action, e.user_name) for e in entries] == [("station_start", None), ("settings", "erik")]
    assert entries[1].detail == {"exposure_us": [1000, 2000]}
    assert db.list_audit(offset=1, limit=1)[0].action == "settings"
    with pytest.raises(ValueError, match="JSON"):
        db.audit(engineer, "settings", {"bad": object()})


def test_bad_database_urls_and_files_give_clear_errors(tmp_path):
    with pytest.raises(StorageError, match="not a database URL"):
        open_database("station.db", tmp_path)
    with pytest.raises(StorageError, match="unsupported database URL"):
        open_database("nosuchdb://host/x", tmp_path)
    with pytest.raises(StorageError, match="cannot open the database") as refused:
        open_database("postgresql+psycopg2://station:s3cret@127.0.0.1:1/station", tmp_path)
    assert "s3cret" not in str(refused.value)  # the password is never echoed
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "station.db").write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StorageError, match="not a database"):
        open_database(None, broken)
