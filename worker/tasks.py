"""Celery tasks: thin wrappers that hand an id to the runner (``runner.py``) on the fleet's workers."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from vocfleet.db.models import ScoreRun, ScoreShard, TrainJob
from vocfleet.db.session import session_scope

from .celery_app import app
from .dispatch import enqueue
from .runner import Outcome, run_train_job
from .scoring import run_score_run, run_score_shard


class WorkFailed(Exception):
    """A job, run or shard ended failed; raised after its row says why, so Celery (and Flower) show FAILURE."""


def _retry_transient(task, run, table, row_id: int, **kwargs) -> str:
    """Run a task body; a lost database connection is retried with backoff (the row resumes), anything else is final.

    A row that ended failed ends the task in FAILURE with the row's reason (never retried: the
    reason is in the row, and a bad input fails the same way again).
    """
    try:
        outcome = run(row_id, host=task.request.hostname, **kwargs)
    except OperationalError as exc:
        raise task.retry(exc=exc, countdown=min(2**task.request.retries * 5, 120)) from exc
    if outcome == Outcome.failed:
        with session_scope() as s:
            error = (s.get(table, row_id).error or "no reason recorded").splitlines()[0]
        raise WorkFailed(f"{table.__tablename__} {row_id} failed: {error}")
    return outcome.value


def _send_shards(ids: list[int]) -> None:
    enqueue(ScoreShard, ids)


@app.task(name="vocfleet.score_folder", bind=True, max_retries=5)
def score_folder(self, run_id: int) -> str:
    """Celery entry point for scoring runs (``score`` queue): scan into shards and send each to the fleet."""
    return _retry_transient(self, run_score_run, ScoreRun, run_id, dispatch=_send_shards)


@app.task(name="vocfleet.score_shard", bind=True, max_retries=5)
def score_shard(self, shard_id: int) -> str:
    """Celery entry point for one shard of a scoring run (``score`` queue); any score worker takes any shard."""
    return _retry_transient(self, run_score_shard, ScoreShard, shard_id)


@app.task(name="vocfleet.train_detector", bind=True, max_retries=5)
def train_detector(self, job_id: int) -> str:
    """Celery entry point for training jobs (``train`` queue)."""
    return _retry_transient(self, run_train_job, TrainJob, job_id)


__all__ = ["Outcome", "WorkFailed", "score_folder", "score_shard", "train_detector"]
