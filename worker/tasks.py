"""Celery tasks: thin wrappers that hand an id to the runner (``runner.py``) on the fleet's workers."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from .celery_app import app
from .runner import Outcome, run_score_run, run_train_job


def _retry_transient(task, run, row_id: int) -> str:
    """Run a task body; a lost database connection is retried with backoff (the row resumes), anything else is final."""
    try:
        return run(row_id, host=task.request.hostname).value
    except OperationalError as exc:
        raise task.retry(exc=exc, countdown=min(2**task.request.retries * 5, 120)) from exc


@app.task(name="vocfleet.score_folder", bind=True, max_retries=5)
def score_folder(self, run_id: int) -> str:
    """Celery entry point for scoring runs (``score`` queue)."""
    return _retry_transient(self, run_score_run, run_id)


@app.task(name="vocfleet.train_detector", bind=True, max_retries=5)
def train_detector(self, job_id: int) -> str:
    """Celery entry point for training jobs (``train`` queue)."""
    return _retry_transient(self, run_train_job, job_id)


__all__ = ["Outcome", "score_folder", "train_detector"]
