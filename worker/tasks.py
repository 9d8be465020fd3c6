"""Tasks: take an id, load the row, call ``model``, write the results. Same code for Celery and the local executor."""
from __future__ import annotations

import logging
import socket
import threading
import traceback
from datetime import timedelta

from sqlalchemy.exc import OperationalError

from db.jobs import claim_job, end_job, finish_job, heartbeat, record_epoch
from db.models import JobStatus, TrainJob
from db.session import session_scope
from db.settings import get_settings
from model import ConfigError
from model.config import TrainConfig
from model.engine import Stopped, fit
from worker.celery_app import app

log = logging.getLogger(__name__)


class Heartbeat:
    """Background thread that keeps the job's heartbeat fresh and notices cancel or a lost claim."""

    def __init__(self, job_id: int, token: str, interval: float):
        self.job_id, self.token, self.interval = job_id, token, interval
        self.state = "ok"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with session_scope() as s:
                    self.state = heartbeat(s, self.job_id, self.token)
            except OperationalError as exc:  # database briefly away: try again next beat
                log.warning("heartbeat for job %d failed: %s", self.job_id, exc)
            if self.state != "ok":
                return

    def should_stop(self) -> bool:
        return self.state != "ok"

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_train_job(job_id: int, progress=None) -> str:
    """Run one training job to its end state; safe to call again for the same id (at-least-once delivery).

    Args:
        job_id: the ``train_jobs`` row.
        progress: optional extra callback receiving ``fit``'s progress events (the CLI's bar).
    Returns:
        The job's status afterwards, or ``skipped`` when another worker holds it.
    """
    settings = get_settings()
    with session_scope() as s:
        job = s.get(TrainJob, job_id)
        if job is None:
            log.warning("train job %d does not exist; nothing to do", job_id)
            return "missing"
        if job.status != JobStatus.queued:
            log.info("train job %d is %s; not running it again", job_id, job.status.value)
            return job.status.value if job.status.finished else "skipped"
        token = claim_job(s, job_id, socket.gethostname())
        config = dict(job.config)
    if token is None:
        return "skipped"

    out_dir = settings.artifact_root / "jobs" / str(job_id)

    def on_progress(event: dict) -> None:
        if event["event"] == "epoch":
            with session_scope() as s:
                record_epoch(s, job_id, token, event)
        if progress:
            progress(event)

    with Heartbeat(job_id, token, settings.heartbeat_seconds) as hb:
        try:
            cfg = TrainConfig.from_dict(config)
            result = fit(cfg, out_dir=out_dir, cache_dir=settings.cache_dir, progress=on_progress, should_stop=hb.should_stop)
        except Stopped:
            if hb.state == "cancel":
                with session_scope() as s:
                    end_job(s, job_id, token, JobStatus.cancelled, "cancelled by user")
                return "cancelled"
            log.warning("job %d: claim lost (reaped or re-delivered); leaving it to its new owner", job_id)
            return "skipped"
        except (ConfigError, FloatingPointError) as exc:  # bad input: fail once, never retry
            with session_scope() as s:
                end_job(s, job_id, token, JobStatus.failed, str(exc))
            return "failed"
        except (KeyboardInterrupt, OperationalError):
            # Interrupted, or the database went away: hand the job back so it resumes from its checkpoint.
            try:
                with session_scope() as s:
                    end_job(s, job_id, token, JobStatus.queued, "interrupted; will resume from the last checkpoint")
            except OperationalError:
                pass  # the reaper requeues it once the heartbeat goes stale
            raise
        except Exception as exc:  # noqa: BLE001 - any crash is recorded with its reason
            log.exception("job %d failed", job_id)
            with session_scope() as s:
                end_job(s, job_id, token, JobStatus.failed, f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc(limit=3)}")
            return "failed"
    with session_scope() as s:
        return "succeeded" if finish_job(s, job_id, token, result) is not None else "skipped"


@app.task(name="vocfleet.train_detector", bind=True, max_retries=5)
def train_detector(self, job_id: int) -> str:
    """Celery entry point: retries transient database errors with backoff."""
    try:
        return run_train_job(job_id)
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries * 5, 120))
