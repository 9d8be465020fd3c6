"""`status` and `runs` read through the database driver alone: the same rows as the ORM, on both databases."""

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from vocfleet.db.claims import claim_job
from vocfleet.db.listing import read_connection, run_rows, status_rows
from vocfleet.db.models import JobStatus, ScoreRun, TrainJob, utcnow
from vocfleet.db.session import ensure_schema, session_scope
from vocfleet.db.training import create_jobs

DBS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


@pytest.fixture(params=DBS)
def database(request):
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")
    ensure_schema()
    return request.param


def test_rows_match_the_orm(database):
    beat = utcnow() - timedelta(seconds=5)
    with session_scope() as s:
        first, second = create_jobs(s, [{"voc_class": "car", "epochs": 5}, {"voc_class": "dog", "epochs": 3}])
        assert claim_job(s, TrainJob, first.id, "gpu-7")
        first.epochs_done, first.latest_val_ap, first.heartbeat_at = 2, 0.41, beat
        second.status, second.error = JobStatus.failed, "CUDA out of memory\nTraceback ..."
        s.add(ScoreRun(folders=["/photos/a", "/photos/b"], classes=["car", "dog"], detector_ids=[1, 2], total_files=10, scored_images=7, error_files=1))
    with read_connection() as conn:
        jobs, runs = status_rows(conn), run_rows(conn)
    assert [(j["job"], j["class"], j["status"], j["epoch"], j["epochs_done"], j["epochs"]) for j in jobs] == [
        (first.id, "car", "running", "2/5", 2, 5),
        (second.id, "dog", "failed", "0/3", 0, 3),
    ]
    assert jobs[0]["val_ap"] == pytest.approx(0.41) and jobs[0]["worker"] == "gpu-7" and jobs[0]["attempts"] == 1
    assert abs(jobs[0]["heartbeat"] - beat) < timedelta(milliseconds=1) and jobs[0]["heartbeat"].utcoffset() == timedelta(0)
    assert jobs[1]["error"] == "CUDA out of memory" and jobs[1]["heartbeat"] is None
    [run] = runs
    assert {k: run[k] for k in ("status", "folders", "classes", "files", "scored", "errors", "finished", "error")} == {
        "status": "queued",
        "folders": "/photos/a /photos/b",
        "classes": "car,dog",
        "files": 10,
        "scored": 7,
        "errors": 1,
        "finished": None,
        "error": None,
    }
    assert run["created"].utcoffset() == timedelta(0)
    with session_scope() as s:  # and what the ORM reads back is the same
        assert s.get(TrainJob, first.id).total_epochs == jobs[0]["epochs"]


PROBE = """
import json, sys
from vocfleet.scheduler.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="vocfleet")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "sqlalchemy": "sqlalchemy" in sys.modules}))
"""


def probe(*args):
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return out.stdout, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", ["status", "runs"])
def test_listings_do_not_import_sqlalchemy(database, command):
    with session_scope() as s:
        create_jobs(s, [{"voc_class": "car", "epochs": 2}])
    out, got = probe(command, "--format", "json")
    assert got == {"code": 0, "sqlalchemy": False}, out


def test_a_new_database_gets_its_schema_first(data_dir):
    """No database file yet: the listing goes through SQLAlchemy, which creates the schema."""
    assert not (data_dir / "vocfleet.db").exists()
    out, got = probe("status")
    assert got == {"code": 0, "sqlalchemy": True} and "no jobs yet" in out
    out, got = probe("status")
    assert got == {"code": 0, "sqlalchemy": False}


def test_an_old_schema_is_upgraded_first(data_dir):
    from alembic import command
    from alembic.config import Config

    from vocfleet.db.session import MIGRATIONS, get_engine, get_settings
    from vocfleet.db.states import SCHEMA_HEAD

    get_engine()  # makes the data folder
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection_url"] = get_settings().database_url
    command.upgrade(cfg, "0006")  # a database from before the promotion policy
    out, got = probe("runs")
    assert got == {"code": 0, "sqlalchemy": True}, out  # the upgrading way
    with read_connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchone()[0] == SCHEMA_HEAD


@pytest.mark.parametrize("command", ["status", "runs"])
def test_a_database_that_does_not_answer_is_one_line(monkeypatch, command):
    monkeypatch.setenv("VOCFLEET_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/test")
    res = subprocess.run([sys.executable, "-m", "vocfleet", command], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and res.stdout == ""
    [line] = res.stderr.splitlines()
    assert line.startswith("vocfleet: error: cannot use the database 'postgresql+psycopg://postgres@127.0.0.1:1/test' (connection")
