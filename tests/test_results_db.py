"""The results database: schema versions and migrations, transactional and concurrent writes,
deduplication, and kills at each write point. Runs on SQLite, and on PostgreSQL where one is given."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

sa = pytest.importorskip("sqlalchemy")

from cifarbench.errors import UsageError  # noqa: E402
from cifarbench.results import db, store  # noqa: E402
from cifarbench.results.ingest import from_bench, read_file  # noqa: E402

from results_data import bench_doc, machine, throughput_row, write  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKER = HERE / "results_worker.py"


def _doc(created="2026-12-01T10:00:00+00:00"):
    return bench_doc([throughput_row("torch", [0.5, 0.4, 0.45]), throughput_row("numpy", [2.0, 2.5, 2.2])], created)


def _columns(engine, table="results"):
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}


# ----- schema versions: one test per version --------------------------------------------------
def test_version_1_data_survives_migration_to_current(db_url):
    engine = db.connect(db_url, migrate=False)
    assert db.upgrade(engine, target=1) == 1
    assert "source" not in _columns(engine)
    fp = machine()
    with engine.begin() as conn:  # a row as version 1 stored it
        conn.execute(sa.text("INSERT INTO machines VALUES (:f, '2026-01-01T00:00:00Z', :fp)"),
                     {"f": fp["fingerprint_id"], "fp": json.dumps(fp)})
        conn.execute(sa.text(
            "INSERT INTO results (content_hash, kind, created, model, backend, images_per_s, fingerprint_id, data) "
            "VALUES ('h1', 'throughput', '2026-01-02T03:04:05Z', 'cnn', 'torch', 123.5, :f, '{}')"),
            {"f": fp["fingerprint_id"]})
    assert db.upgrade(engine) == db.SCHEMA_VERSION == 2
    rows = store.query(engine)
    assert len(rows) == 1 and rows[0]["images_per_s"] == 123.5 and rows[0]["model"] == "cnn"
    assert rows[0]["source"] == "unknown" and rows[0]["recorded"] == "2026-01-02T03:04:05Z"
    assert "ix_results_case" in {i["name"] for i in sa.inspect(engine).get_indexes("results")}
    engine.dispose()


def test_version_2_is_current_and_records(db_url):
    engine = db.connect(db_url)
    with engine.connect() as conn:
        assert db.version(conn) == 2
    assert {"source", "recorded", "content_hash"} <= _columns(engine)
    stored = store.record(engine, from_bench(_doc(), "test"))
    assert [s.new for s in stored] == [True, True]
    rows = store.query(engine)
    assert [r["backend"] for r in rows] == ["torch", "numpy"] and rows[0]["source"] == "test"
    assert rows[0]["images_per_s"] == pytest.approx(statistics.median([64 / 0.5, 64 / 0.4, 64 / 0.45]))
    assert rows[1]["images_per_s_min"] == pytest.approx(64 / 2.5) and rows[1]["images_per_s_max"] == pytest.approx(32)
    assert db.upgrade(engine) == 2  # idempotent
    engine.dispose()


def test_newer_schema_is_refused(db_url):
    engine = db.connect(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE cifarbench_schema SET version = 99"))
    with pytest.raises(UsageError, match="schema version 99"):
        db.connect(db_url)
    engine.dispose()


def test_content_hash_deduplicates(db_url, tmp_path):
    engine = db.connect(db_url)
    path = write(tmp_path / "bench.json", _doc())
    first = store.record(engine, read_file(path))
    again = store.record(engine, read_file(path))
    assert [s.new for s in first] == [True, True] and [s.new for s in again] == [False, False]
    assert [s.id for s in again] == [s.id for s in first] and store.count(engine) == 2
    other = store.record(engine, from_bench(_doc("2026-12-02T10:00:00+00:00"), "x"))  # another run: new rows
    assert all(s.new for s in other) and store.count(engine) == 4
    engine.dispose()


# ----- kills at each write point -----------------------------------------------------------
def _run_worker(url, tmp_path, fault="", count=1):
    template = write(tmp_path / "template.json", _doc())
    go = tmp_path / "go"
    go.touch()
    return subprocess.run([sys.executable, str(WORKER), url, "0", str(count), str(template), str(go), fault],
                          capture_output=True, text=True, timeout=300, cwd=HERE)


def test_killed_inside_a_record_leaves_nothing_half_written(db_url, tmp_path):
    db.connect(db_url).dispose()
    res = _run_worker(db_url, tmp_path, "after_first_row")
    assert res.returncode == 9, res.stderr
    engine = db.connect(db_url)
    assert store.count(engine) == 0  # neither the first row nor its machine was committed
    assert store.machine_fingerprints(engine) == {}
    stored = store.record(engine, from_bench(_doc(), "retry"))
    assert [s.new for s in stored] == [True, True] and store.count(engine) == 2
    engine.dispose()


KILL_MIGRATION = """
import os, sys
from cifarbench.results import db
real = db._set_version
def dying(conn, v):
    if v == int(sys.argv[2]):
        os._exit(9)  # the migration's DDL ran; its version bump and commit never happen
    real(conn, v)
db._set_version = dying
db.connect(sys.argv[1])
"""


@pytest.mark.parametrize("killed_at", [1, 2])
def test_killed_migration_keeps_the_old_version(db_url, killed_at):
    if killed_at == 2:
        engine = db.connect(db_url, migrate=False)
        db.upgrade(engine, target=1)
        engine.dispose()
    res = subprocess.run([sys.executable, "-c", KILL_MIGRATION, db_url, str(killed_at)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 9, res.stderr
    engine = db.connect(db_url, migrate=False)
    with engine.connect() as conn:
        assert db.version(conn) == killed_at - 1
    if killed_at == 2:
        assert "source" not in _columns(engine)  # the ALTER TABLEs were rolled back with it
    assert db.upgrade(engine) == db.SCHEMA_VERSION
    store.record(engine, from_bench(_doc(), "after"))
    assert store.count(engine) == 2
    engine.dispose()


# ----- concurrent writers ------------------------------------------------------------------
WRITERS, PER_WRITER = 6, 15


def test_concurrent_writers_lose_nothing(db_url, tmp_path):
    """WRITERS processes each record PER_WRITER two-row files of their own plus one file all of them
    record: every distinct row is stored exactly once, the shared one once for all."""
    db.connect(db_url).dispose()
    template = write(tmp_path / "template.json", _doc())
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(WORKER), db_url, str(w), str(PER_WRITER), str(template), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)
             for w in range(WRITERS)]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready{w}").exists() for w in range(WRITERS)):  # all imported and connected
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    t0 = time.perf_counter()
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    wall = time.perf_counter() - t0
    engine = db.connect(db_url)
    rows = store.query(engine)
    own = [i for o in outs for i in o["ids"]]
    assert len(own) == len(set(own)) == WRITERS * PER_WRITER * 2
    shared_new = [o["shared"] for o in outs if all(new for _, new in o["shared"])]
    assert len(shared_new) == 1  # one writer stored the shared file; the others found it stored
    assert {tuple(i for i, _ in o["shared"]) for o in outs} == {tuple(i for i, _ in shared_new[0])}
    assert len(rows) == WRITERS * PER_WRITER * 2 + 2 == len({r["content_hash"] for r in rows})
    assert set(own) | {i for i, _ in shared_new[0]} == {r["id"] for r in rows}
    assert len(store.machine_fingerprints(engine)) == 1
    writes = WRITERS * (PER_WRITER + 1)
    print(f"\n{engine.dialect.name}: {WRITERS} writers x {PER_WRITER + 1} transactions = {writes} transactions, "
          f"{len(rows)} rows stored, 0 lost, in {wall:.2f} s wall ({writes / wall:.1f} transactions/s); "
          f"per writer {min(o['elapsed_s'] for o in outs):.2f}-{max(o['elapsed_s'] for o in outs):.2f} s")
    engine.dispose()


# ----- URLs --------------------------------------------------------------------------------
def test_url_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(db.ENV_VAR, str(tmp_path / "env.db"))
    assert db.resolve_url() == f"sqlite:///{tmp_path / 'env.db'}"
    assert db.resolve_url("postgresql+psycopg://u:secret@h/db").startswith("postgresql")
    assert "secret" not in db.shown_url("postgresql+psycopg://u:secret@h/db")
    monkeypatch.delenv(db.ENV_VAR)
    assert db.resolve_url().endswith("/results.db") and "cifarbench" in db.resolve_url()
    with pytest.raises(UsageError, match="no driver for nosuch"):
        db.connect("nosuch+x://")
