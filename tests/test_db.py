"""Job lifecycle in the database: claims, guarded writes, reaping, one active detector (SQLite and PostgreSQL)."""
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.jobs import claim_job, end_job, finish_job, heartbeat, reap_stale, record_epoch
from db.models import Detector, EpochMetric, JobStatus, TrainJob, utcnow
from db.session import session_scope, upgrade_database

RECORD = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_ap": 0.3, "lr": 0.1, "seconds": 1.0, "images_per_s": 10.0}


def _result(path="/x/detector.pt"):
    m = {"ap": 0.4, "ap11": 0.41, "auc": 0.8, "accuracy": 0.9, "baseline_accuracy": 0.85, "positives": 5, "images": 50}
    return {"checkpoint": path, "sha256": "0" * 64, "threshold": 0.3, "metrics": m, "val_metrics": m, "best_epoch": 1, "skipped_images": []}


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
        token = claim_job(s, db, "host-a")
    with session_scope() as s:
        assert claim_job(s, db, "host-b") is None
        job = s.get(TrainJob, db)
        assert job.status == JobStatus.running and job.attempts == 1 and job.worker_host == "host-a"
    with session_scope() as s:
        assert heartbeat(s, db, token) == "ok"
        assert heartbeat(s, db, "stolen") == "lost"


def test_epoch_records_are_idempotent(db):
    with session_scope() as s:
        token = claim_job(s, db, "h")
    for _ in range(2):
        with session_scope() as s:
            assert record_epoch(s, db, token, RECORD)
    with session_scope() as s:
        assert len(s.scalars(select(EpochMetric)).all()) == 1
        assert s.get(TrainJob, db).epochs_done == 1


def test_lost_claim_cannot_write(db):
    with session_scope() as s:
        claim_job(s, db, "h")
    with session_scope() as s:
        assert not record_epoch(s, db, "other-token", RECORD)
        assert finish_job(s, db, "other-token", _result()) is None


def test_reap_requeues_then_fails_after_max_attempts(db):
    for attempt in range(1, 4):
        with session_scope() as s:
            assert claim_job(s, db, f"h{attempt}")
        with session_scope() as s:
            requeued, failed = reap_stale(s, timedelta(seconds=30), now=utcnow() + timedelta(minutes=5))
        if attempt < 3:
            assert requeued == [db] and failed == []
        else:
            assert failed == [db]
    with session_scope() as s:
        job = s.get(TrainJob, db)
        assert job.status == JobStatus.failed and "gave up after 3 attempts" in job.error


def test_fresh_heartbeat_is_not_reaped(db):
    with session_scope() as s:
        claim_job(s, db, "h")
    with session_scope() as s:
        assert reap_stale(s, timedelta(seconds=30)) == ([], [])


def test_cancelled_job_is_not_claimed(db):
    with session_scope() as s:
        s.get(TrainJob, db).cancel_requested = True
    with session_scope() as s:
        assert claim_job(s, db, "h") is None


def test_one_active_detector_per_class(db):
    with session_scope() as s:
        token = claim_job(s, db, "h")
    with session_scope() as s:
        finish_job(s, db, token, _result())
    with pytest.raises(IntegrityError):
        with session_scope() as s:
            s.add(Detector(voc_class="car", checkpoint_path="/y", sha256="1" * 64, threshold=0.5, ap=0.1, metrics={}, active=True))
    with session_scope() as s:
        job = s.get(TrainJob, db)
        assert job.status == JobStatus.succeeded and end_job(s, db, token, JobStatus.failed) is False
