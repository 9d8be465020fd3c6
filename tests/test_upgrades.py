"""Upgrades are explicit and checked: on a shared database only 'vocfleet db upgrade' migrates, and code refuses a schema it cannot run on."""

import pytest
from sqlalchemy import text

from tests.support import QUICK, migrate_to
from vocfleet.db.session import dispose_engines, get_engine, schema_revision
from vocfleet.db.states import SCHEMA_HEAD

pytestmark = pytest.mark.services


def _newer(url: str, oldest_code: str) -> None:
    """The schema of a newer vocfleet: one revision past ours, saying which code may still run on it."""
    with get_engine(url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": f"{int(SCHEMA_HEAD) + 1:04d}"})
        conn.execute(text("UPDATE schema_compat SET oldest_code = :r"), {"r": oldest_code})
    dispose_engines()


def test_newer_code_refuses_an_older_shared_schema_until_db_upgrade(pg_url, fake_voc, invoke):
    migrate_to(pg_url, "0008")
    for args in (["status"], ["submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 1, *QUICK], ["db", "check"]):
        res = invoke(*args)
        assert res.exit_code == 1, res.output
        assert "has schema 0008 and this vocfleet" in res.output and f"needs {SCHEMA_HEAD}: run 'vocfleet db upgrade'" in res.output
    assert schema_revision(pg_url) == "0008"  # nothing migrated it
    with get_engine(pg_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM train_jobs")).scalar() == 0  # and nothing was written
    res = invoke("db", "upgrade")
    assert res.exit_code == 0 and f"schema 0008 -> {SCHEMA_HEAD}" in res.output
    dispose_engines()
    assert invoke("status").exit_code == 0
    assert invoke("db", "check").output.rstrip().endswith(": ok")
    assert "nothing to do" in invoke("db", "upgrade").output


def test_older_code_refuses_a_newer_schema_it_cannot_run_on(pg_url, invoke, monkeypatch):
    assert invoke("db", "upgrade").exit_code == 0
    _newer(pg_url, oldest_code=f"{int(SCHEMA_HEAD) + 1:04d}")
    monkeypatch.setenv("VOCFLEET_BROKER_URL", "redis://127.0.0.1:6379/0")
    for args in (["status"], ["db", "upgrade"], ["db", "check"], ["worker", "--gpus", "none"]):
        res = invoke(*args)
        assert res.exit_code == 1, (args, res.output)
        assert "newer than this vocfleet" in res.output and "upgrade vocfleet on this host" in res.output, res.output
        assert "Traceback" not in res.output


def test_older_code_runs_on_a_newer_schema_marked_compatible(pg_url, invoke):
    assert invoke("db", "upgrade").exit_code == 0
    _newer(pg_url, oldest_code=SCHEMA_HEAD)  # the newer migration only added what this code ignores
    assert invoke("status").exit_code == 0
    res = invoke("db", "check")
    assert res.exit_code == 0 and res.output.rstrip().endswith(": ok")


def test_a_new_database_gets_its_schema_but_a_worker_never_migrates(pg_url, invoke, monkeypatch):
    monkeypatch.setenv("VOCFLEET_BROKER_URL", "redis://127.0.0.1:6379/0")
    res = invoke("worker", "--gpus", "none")
    assert res.exit_code == 1 and "has no schema yet" in res.output and "run 'vocfleet db upgrade'" in res.output
    assert schema_revision(pg_url) is None
    assert invoke("status").exit_code == 1  # a reading command makes no tables either (this could be any database)
    assert schema_revision(pg_url) is None
    assert invoke("cancel", "--all", "--yes").exit_code == 0  # a command that writes: an empty database gets the schema
    assert schema_revision(pg_url) == SCHEMA_HEAD


def test_the_schema_records_the_oldest_code_that_may_run_on_it(pg_url, invoke):
    from vocfleet.db.session import oldest_compatible

    # 0012 (a job waits for its start) is not marked compatible: 0011's workers would train a waiting job from scratch.
    assert oldest_compatible() == "0012"
    assert invoke("db", "upgrade").exit_code == 0
    with get_engine(pg_url).connect() as conn:
        assert conn.execute(text("SELECT oldest_code FROM schema_compat")).scalars().all() == ["0012"]
