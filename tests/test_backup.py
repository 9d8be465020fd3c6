"""The database: its SQLite file whole when a command exits, `db backup` and `db restore` bringing every row back, readers making no tables."""

import json
import shutil
import sqlite3

import pytest

from vocfleet.db import session as db_session


def rows(db, table="train_jobs"):
    with sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True) as conn:  # as a read-only mount or a plain copy reads it
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_plain_copy_after_a_command_holds_all_its_work(fake_voc, invoke, data_dir, tmp_path):
    db = data_dir / "vocfleet.db"
    for lr in (0.1, 0.01, 0.001):
        assert invoke("submit", "--classes", "car", "--lr", lr, "--voc-root", fake_voc).exit_code == 0
    assert not (data_dir / "vocfleet.db-wal").exists() and not (data_dir / "vocfleet.db-shm").exists()  # the log folded in at exit
    shutil.copy(db, tmp_path / "copy.db")
    assert rows(tmp_path / "copy.db") == 3


def test_backup_then_restore_after_the_file_was_deleted_brings_every_row_back(fake_voc, invoke, data_dir, tmp_path):
    db = data_dir / "vocfleet.db"
    assert invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", fake_voc).exit_code == 0
    res = invoke("db", "backup", tmp_path / "b.db")
    assert res.exit_code == 0 and "2 jobs, 0 detectors, 0 runs" in res.output, res.output
    assert invoke("submit", "--classes", "car", "--lr", 0.1, "--voc-root", fake_voc).exit_code == 0  # work after the backup
    # The database deleted while a command still holds it: its log stays beside the missing file.
    holder = sqlite3.connect(db)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("UPDATE train_jobs SET error = 'x'")
    holder.commit()
    db.unlink()
    assert (data_dir / "vocfleet.db-wal").exists()
    res = invoke("db", "restore", tmp_path / "b.db", "--yes")
    assert res.exit_code == 0 and "2 jobs" in res.output, res.output
    holder.close()
    db_session.dispose_engines()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    listed = json.loads(invoke("status", "--format", "json").output)
    assert sorted(r["class"] for r in listed) == ["car", "dog"]


def test_restore_refuses_what_is_not_a_whole_vocfleet_database(invoke, data_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    res = invoke("db", "restore", tmp_path / "notes.txt", "--yes")
    assert res.exit_code == 1 and "is not a vocfleet database" in res.output, res.output
    sqlite3.connect(tmp_path / "empty.db").execute("CREATE TABLE t (x)")
    res = invoke("db", "restore", tmp_path / "empty.db", "--yes")
    assert res.exit_code == 1 and "is not a vocfleet database" in res.output or "not a whole" in res.output, res.output


def test_postgres_is_backed_up_with_its_own_tool(pg_url, invoke, tmp_path):
    res = invoke("db", "backup", tmp_path / "b.db")
    assert res.exit_code == 2 and "pg_dump" in res.output and not (tmp_path / "b.db").exists(), res.output


READERS = [["status"], ["runs"], ["detectors"], ["results", "--all-runs"], ["workers"], ["detectors", "history", "car"], ["compare", "1", "2"]]


@pytest.mark.parametrize("command", READERS)
def test_a_reading_command_never_makes_tables_in_a_database_that_is_not_vocfleets(pg_url, invoke, command):
    from sqlalchemy import create_engine, inspect

    res = invoke(*command)
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "has no vocfleet tables" in res.output, res.output
    engine = create_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == [] and inspect(engine).get_view_names() == []
    finally:
        engine.dispose()


def test_a_reading_command_on_a_new_embedded_database_answers_empty(invoke):
    res = invoke("status")
    assert res.exit_code == 0, res.output


def test_a_command_exits_promptly_while_another_process_writes_and_the_log_is_folded_later(fake_voc, invoke, data_dir):
    import time

    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc).exit_code == 0
    writer = sqlite3.connect(data_dir / "vocfleet.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    writer.execute("UPDATE train_jobs SET error = 'x'")
    t = time.monotonic()
    assert invoke("status").exit_code == 0
    assert time.monotonic() - t < 10  # not SQLite's 30 s busy wait at exit
    writer.execute("COMMIT")
    writer.close()
    assert invoke("status").exit_code == 0
    assert not (data_dir / "vocfleet.db-wal").exists()
