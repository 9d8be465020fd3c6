"""Job lifecycle in the database: claims, guarded writes, reaping, one active detector (SQLite and PostgreSQL)."""

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tests.support import migrate_to
from vocfleet.db.claims import claim_job, end_job, heartbeat, reap_stale
from vocfleet.db.models import Detector, EpochMetric, JobStatus, TrainJob, utcnow
from vocfleet.db.session import session_scope, upgrade_database
from vocfleet.db.training import finish_job, record_epoch
from vocfleet.model.engine import FitResult
from vocfleet.model.events import EpochRecord

RECORD = EpochRecord(epoch=1, train_loss=0.5, val_loss=0.4, val_ap=0.3, lr=0.1, seconds=1.0, images_per_s=10.0)


def _result(path="/x/detector.pt"):
    m = {"ap": 0.4, "ap11": 0.41, "auc": 0.8, "accuracy": 0.9, "baseline_accuracy": 0.85, "positives": 5, "images": 50}
    return FitResult(checkpoint=path, sha256="0" * 64, threshold=0.3, metrics=m, val_metrics=m, best_epoch=1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db(request):
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")
    upgrade_database()
    with session_scope() as s:
        job = TrainJob(voc_class="car", config={"epochs": 2})
        s.add(job)
        s.flush()
        return job.id


def test_claim_is_exclusive(db):
    with session_scope() as s:
        token = claim_job(s, TrainJob, db, "host-a")
    with session_scope() as s:
        assert claim_job(s, TrainJob, db, "host-b") is None
        job = s.get(TrainJob, db)
        assert job.status == JobStatus.running and job.attempts == 1 and job.worker_host == "host-a"
    with session_scope() as s:
        assert heartbeat(s, TrainJob, db, token) == "ok"
        assert heartbeat(s, TrainJob, db, "stolen") == "lost"


def test_epoch_records_are_idempotent(db):
    with session_scope() as s:
        token = claim_job(s, TrainJob, db, "h")
    for _ in range(2):
        with session_scope() as s:
            assert record_epoch(s, db, token, RECORD)
    with session_scope() as s:
        [row] = s.scalars(select(EpochMetric)).all()
        assert EpochRecord.from_dict({c: getattr(row, c) for c in ("epoch", *EpochRecord.metric_names())}) == RECORD
        assert s.get(TrainJob, db).epochs_done == 1


def test_a_resume_records_the_epochs_a_killed_worker_left_out(db):
    from dataclasses import replace

    from vocfleet.db.training import record_resumed

    with session_scope() as s:
        token = claim_job(s, TrainJob, db, "h")
    with session_scope() as s:
        record_epoch(s, db, token, RECORD)  # epoch 1 recorded; epoch 2 pushed to last.pt, then the worker died
    history = (replace(RECORD, train_loss=9.0), replace(RECORD, epoch=2, val_ap=0.6))  # epoch 1 as last.pt has it
    with session_scope() as s:
        assert record_resumed(s, db, token, history)
        assert not record_resumed(s, db, "other-token", history)
    with session_scope() as s:
        rows = s.scalars(select(EpochMetric).order_by(EpochMetric.epoch)).all()
        assert [(r.epoch, r.train_loss, r.val_ap) for r in rows] == [(1, 0.5, 0.3), (2, 0.5, 0.6)]  # epoch 1 left as it was
        assert s.get(TrainJob, db).epochs_done == 2


def test_lost_claim_cannot_write(db):
    with session_scope() as s:
        claim_job(s, TrainJob, db, "h")
    with session_scope() as s:
        assert not record_epoch(s, db, "other-token", RECORD)
        assert finish_job(s, db, "other-token", _result()) is None


def test_reap_requeues_then_fails_after_max_attempts(db):
    for attempt in range(1, 4):
        with session_scope() as s:
            assert claim_job(s, TrainJob, db, f"h{attempt}")
        with session_scope() as s:
            requeued, failed = reap_stale(s, TrainJob, timedelta(seconds=30), now=utcnow() + timedelta(minutes=5))
        if attempt < 3:
            assert requeued == [db] and failed == []
        else:
            assert failed == [db]
    with session_scope() as s:
        job = s.get(TrainJob, db)
        assert job.status == JobStatus.failed and "gave up after 3 attempts" in job.error


def test_fresh_heartbeat_is_not_reaped(db):
    with session_scope() as s:
        claim_job(s, TrainJob, db, "h")
    with session_scope() as s:
        assert reap_stale(s, TrainJob, timedelta(seconds=30)) == ([], [])


def test_cancelled_job_is_not_claimed(db):
    with session_scope() as s:
        s.get(TrainJob, db).cancel_requested = True
    with session_scope() as s:
        assert claim_job(s, TrainJob, db, "h") is None


def test_one_active_detector_per_class(db):
    with session_scope() as s:
        token = claim_job(s, TrainJob, db, "h")
    with session_scope() as s:
        finish_job(s, db, token, _result())
    with pytest.raises(IntegrityError):
        with session_scope() as s:
            s.add(Detector(voc_class="car", checkpoint_path="/y", sha256="1" * 64, threshold=0.5, ap=0.1, metrics={}, active=True))
    with session_scope() as s:
        job = s.get(TrainJob, db)
        assert job.status == JobStatus.succeeded and end_job(s, TrainJob, db, token, JobStatus.failed) is False


def test_schema_head_is_the_newest_migration(db):
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from vocfleet.db.session import MIGRATIONS, SCHEMA_HEAD, ensure_schema, schema_revision

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD == schema_revision()
    ensure_schema()  # current already: a no-op


def test_ensure_schema_creates_a_fresh_database(tmp_path):
    from vocfleet.db.session import SCHEMA_HEAD, ensure_schema, schema_revision

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert schema_revision(url) is None
    ensure_schema(url)
    assert schema_revision(url) == SCHEMA_HEAD


def test_create_jobs_and_next_queued(db):
    from vocfleet.db.training import create_jobs, next_queued
    from vocfleet.model.config import TrainConfig

    with session_scope() as s:
        jobs = create_jobs(s, [TrainConfig(voc_class=c, epochs=1, voc_root="/voc") for c in ("dog", "cat")], max_attempts=5)
        ids = [j.id for j in jobs]
    with session_scope() as s:
        assert [s.get(TrainJob, i).max_attempts for i in ids] == [5, 5]
        assert next_queued(s) == (db, "car")  # the oldest first, with its class
        s.get(TrainJob, db).cancel_requested = True
    with session_scope() as s:
        assert next_queued(s).id == ids[0]


def test_cancel_work_queued_now_running_asked(db):
    from vocfleet.db.claims import cancel_work
    from vocfleet.db.training import create_jobs
    from vocfleet.model.config import TrainConfig

    with session_scope() as s:
        other = create_jobs(s, [TrainConfig(voc_class="dog", voc_root="/voc")])[0].id
    with session_scope() as s:
        claim_job(s, TrainJob, db, "h")
    with session_scope() as s:
        assert cancel_work(s, TrainJob, [db, other, 999]) == ([other], [db])
    with session_scope() as s:
        assert s.get(TrainJob, other).status == JobStatus.cancelled
        assert s.get(TrainJob, db).status == JobStatus.running and s.get(TrainJob, db).cancel_requested
        assert heartbeat(s, TrainJob, db, s.get(TrainJob, db).claim_token) == "cancel"
    with session_scope() as s:
        assert cancel_work(s, TrainJob, None) == ([], [db])  # every unfinished one


def test_reopen_run(db):
    from vocfleet.db.models import ScoreRun
    from vocfleet.db.runs import Reopen, create_run, reopen_run

    with session_scope() as s:
        det = Detector(voc_class="car", checkpoint_path="/x", sha256="0" * 64, threshold=0.5, ap=0.3, metrics={}, active=True)
        s.add(det)
        s.flush()
        run_id = create_run(s, ["/pics"], [det], batch_size=8, max_attempts=1).id
    with session_scope() as s:
        assert reopen_run(s, 12345, timedelta(seconds=60))[0] == Reopen.missing
        assert reopen_run(s, run_id, timedelta(seconds=60))[0] == Reopen.ready  # queued: left as it is
    with session_scope() as s:
        claim_job(s, ScoreRun, run_id, "h")
    with session_scope() as s:
        assert reopen_run(s, run_id, timedelta(seconds=60))[0] == Reopen.running  # fresh heartbeat
    with session_scope() as s:
        state, run = reopen_run(s, run_id, timedelta(seconds=-1))  # its heartbeat is now stale
        assert state == Reopen.ready and run.status == JobStatus.queued and run.claim_token is None
    with session_scope() as s:
        claim_job(s, ScoreRun, run_id, "h2")  # attempts (2) exceed max_attempts (1): reopened anyway
        s.get(ScoreRun, run_id).status = JobStatus.succeeded
    with session_scope() as s:
        assert reopen_run(s, run_id, timedelta(seconds=-1))[0] == Reopen.finished


def test_migrations_match_the_models(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from vocfleet.db.models import Base
    from vocfleet.db.session import get_engine

    with get_engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrating_keeps_rows_that_refer_to_recreated_tables(tmp_path):
    """SQLite migrations recreate tables; with foreign keys on, dropping the old one would cascade."""
    from vocfleet.db.session import get_engine, upgrade_database

    url = f"sqlite:///{tmp_path / 'old.db'}"
    _old_database(url, "0005")
    upgrade_database(url)
    with get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("SELECT key FROM train_jobs").scalar() == "7"  # an old job keeps its folder name
        assert conn.exec_driver_sql("SELECT count(*) FROM epoch_metrics").scalar() == 1
        assert conn.exec_driver_sql("SELECT count(*) FROM detectors").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # back on for everyone else


def _old_database(url: str, revision: str) -> None:
    """A SQLite database at ``revision`` holding a job, an epoch and a detector with an absolute path, as an old vocfleet left it."""
    from vocfleet.db.session import get_engine

    migrate_to(url, revision)
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO train_jobs (id, voc_class, config, epochs_done, status, attempts, max_attempts, created_at, cancel_requested) "
            "VALUES (7, 'car', '{}', 1, 'succeeded', 1, 3, '2026-11-28 00:00:00', 0)"
        )
        conn.exec_driver_sql(
            "INSERT INTO epoch_metrics (job_id, epoch, train_loss, val_loss, val_ap, lr, seconds, images_per_s, created_at) "
            "VALUES (7, 1, 0.5, 0.4, 0.3, 0.1, 1.0, 10.0, '2026-11-28 00:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO detectors (voc_class, job_id, checkpoint_path, sha256, threshold, ap, metrics, active, created_at) VALUES "
            "('car', 7, '/old/place/artifacts/jobs/7/detector.pt', 'ab', 0.5, 0.4, '{\"plots\": {\"pr\": \"/old/place/artifacts/jobs/7/pr.png\"}}', 1, "
            "'2026-11-28 00:00:00')"
        )
    get_engine(url).dispose()


def _upgrade_killed_at(url: str, statement: int) -> int:
    """Run the upgrade in a forked child that SIGKILLs itself before its ``statement``-th SQL statement; the child's wait status."""
    import os
    import signal

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from vocfleet.db.session import dispose_engines, upgrade_database

    dispose_engines()
    pid = os.fork()
    if pid == 0:  # the child: counts statements, dies by SIGKILL at the chosen one, as a power cut would
        try:
            seen = [0]

            def count(*_):
                seen[0] += 1
                if seen[0] == statement:
                    os.kill(os.getpid(), signal.SIGKILL)

            event.listen(Engine, "before_cursor_execute", count)
            upgrade_database(url)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_an_upgrade_killed_at_any_statement_leaves_the_database_as_it_was(tmp_path):
    """SIGKILL before every SQL statement of the upgrade from 0005: the old schema and rows stay whole, and the next upgrade completes.

    Each killed copy, once opened (SQLite rolls back what the killed upgrade left), dumps to the
    same SQL as the database before the upgrade and passes the integrity check: it is that
    database, so the upgrade that completes it is run on the first and the last killed copies.
    """
    import os
    import signal
    import sqlite3
    from contextlib import closing

    from vocfleet.db.session import dispose_engines, schema_revision, upgrade_database
    from vocfleet.db.states import SCHEMA_HEAD

    def dump(path):
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            return list(conn.iterdump())

    base = tmp_path / "base.db"
    _old_database(f"sqlite:///{base}", "0005")
    before = dump(base)
    killed = []
    for statement in range(1, 200):
        db = tmp_path / f"k{statement}.db"
        db.write_bytes(base.read_bytes())
        url = f"sqlite:///{db}"
        status = _upgrade_killed_at(url, statement)
        dispose_engines()
        if not os.WIFSIGNALED(status):  # the upgrade ran to its end before this statement: every step was covered
            assert os.WEXITSTATUS(status) == 0 and schema_revision(url) == SCHEMA_HEAD
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
        assert dump(db) == before, f"killed before statement {statement}"
        killed.append(url)
    assert len(killed) > 20  # every migration from 0005 to the head had statements to kill at
    for url in (killed[0], killed[-1]):
        upgrade_database(url)  # the next command upgrades it whole
        assert schema_revision(url) == SCHEMA_HEAD
        dispose_engines()


def test_detector_locations_become_relative_to_the_store(tmp_path):
    """0008: an absolute path that ends in jobs/<key>/<file> is kept as that, so a moved data folder resolves it."""
    from vocfleet.db.session import get_engine, upgrade_database

    url = f"sqlite:///{tmp_path / 'old.db'}"
    _old_database(url, "0005")
    upgrade_database(url)
    with get_engine(url).connect() as conn:
        path, metrics = conn.exec_driver_sql("SELECT checkpoint_path, metrics FROM detectors").one()
    assert path == "jobs/7/detector.pt" and '"jobs/7/pr.png"' in metrics


def test_epoch_metric_columns_are_the_epoch_record():
    """The epoch record is written once: the table has a column per field, and record_epoch stores every one."""
    from dataclasses import fields

    columns = {c.name for c in EpochMetric.__table__.columns} - {"id", "job_id", "created_at"}
    assert columns == {f.name for f in fields(EpochRecord)}


def test_postgresql_connections_run_without_jit(pg_url):
    """vocfleet's queries are index ranges of at most thousands of rows: JIT compiling them (on by default above a cost) costs more than they do."""
    from sqlalchemy import text

    with session_scope() as s:
        assert s.execute(text("SHOW jit")).scalar() == "off"
