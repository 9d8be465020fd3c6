"""Training jobs: create, record each epoch, finish (the detector is recorded by ``registry.py``), retry."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from vocfleet.model.events import EpochRecord

from .claims import clock, owned
from .models import Detector, EpochMetric, JobStatus, TrainJob, utcnow
from .registry import record_detector
from .states import Labels

if TYPE_CHECKING:
    from vocfleet.model.engine import FitResult


def create_jobs(s: Session, configs: list[dict[str, Any]], max_attempts: int = 3, promote: str = "if-better", labels: Labels | None = None) -> list[TrainJob]:
    """Add one queued training job per config (``TrainConfig.to_dict()``); ids are set on return.

    The VOC root is stored with links resolved, as the submitting host sees it, whoever calls this.
    ``labels``: the name, tags and note every job of this submit carries.
    """
    configs = [{**c, "voc_root": os.path.realpath(os.path.expanduser(c["voc_root"]))} if c.get("voc_root") else c for c in configs]
    lab = labels or Labels()
    jobs = [
        TrainJob(voc_class=c["voc_class"], config=c, max_attempts=max_attempts, promote=promote, name=lab.name, tags=lab.tags or None, note=lab.note)
        for c in configs
    ]
    s.add_all(jobs)
    s.flush()
    return jobs


class QueuedJob(NamedTuple):
    id: int
    voc_class: str


def next_queued(s: Session) -> QueuedJob | None:
    """The oldest queued training job that nobody asked to cancel (its id and class), or None."""
    q = select(TrainJob.id, TrainJob.voc_class).where(TrainJob.status == JobStatus.queued, TrainJob.cancel_requested.is_(False))
    row = s.execute(q.order_by(TrainJob.id).limit(1)).first()
    return QueuedJob(*row) if row is not None else None


def record_epoch(s: Session, job_id: int, token: str, record: EpochRecord) -> bool:
    """Store one finished epoch (idempotent: an epoch already stored is overwritten, never duplicated)."""
    job = owned(s, TrainJob, job_id, token)
    if job is None:
        return False
    fields = {k: getattr(record, k) for k in EpochRecord.metric_names()}
    row = s.scalar(select(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch == record.epoch))
    if row is None:
        s.add(EpochMetric(job_id=job_id, epoch=record.epoch, **fields))
    else:
        for k, v in fields.items():
            setattr(row, k, v)
    job.epochs_done = record.epoch
    job.latest_val_ap = record.val_ap
    job.heartbeat_at = clock(s)
    return True


def record_resumed(s: Session, job_id: int, token: str, history: tuple[EpochRecord, ...]) -> bool:
    """On resume, store the epochs of ``last.pt`` that no row holds yet (a worker killed after its push, before its row).

    Epochs already stored are left as they are: resuming rewrites nothing.
    """
    if owned(s, TrainJob, job_id, token) is None:
        return False
    stored = set(s.scalars(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id)))
    for record in history:
        if record.epoch not in stored:
            record_epoch(s, job_id, token, record)
    return True


def finish_job(s: Session, job_id: int, token: str, result: FitResult) -> Detector | None:
    """Mark the job succeeded and record its detector (:func:`registry.record_detector` decides whether it becomes active)."""
    job = owned(s, TrainJob, job_id, token)
    if job is None:
        return None
    existing = s.scalar(select(Detector).where(Detector.job_id == job_id))
    # A re-delivered job that already finished keeps its first result.
    detector = existing if existing is not None else record_detector(s, job, result)
    job.status = JobStatus.succeeded
    job.finished_at = utcnow()
    job.error = None
    return detector


def retry_job(s: Session, job_id: int) -> str:
    """Queue a failed or cancelled job again with fresh attempts (it resumes from its ``last.pt``).

    Returns:
        ``queued``, ``missing``, or the status that kept it from being retried.
    """
    job = s.get(TrainJob, job_id, with_for_update=True)
    if job is None:
        return "missing"
    if job.status not in (JobStatus.failed, JobStatus.cancelled):
        return job.status.value
    job.status, job.claim_token, job.cancel_requested, job.error, job.finished_at, job.attempts = JobStatus.queued, None, False, None, None, 0
    return "queued"
