"""Training jobs: create, record each epoch, finish (the detector is recorded by ``registry.py``), retry."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from vocfleet.model import ConfigError
from vocfleet.model.config import START_CLASS, TrainConfig, check_start_fits
from vocfleet.model.events import EpochRecord

from .claims import clock, owned
from .models import Detector, EpochMetric, JobStatus, TrainJob, utcnow
from .registry import record_detector
from .states import Labels

if TYPE_CHECKING:
    from vocfleet.model.engine import FitResult


def create_jobs(
    s: Session,
    configs: Sequence[TrainConfig],
    max_attempts: int = 3,
    promote: str = "if-better",
    labels: Labels | None = None,
    start_job_id: int | None = None,
) -> list[TrainJob]:
    """Add one queued training job per config; ids are set on return.

    The VOC roots are stored with links resolved, as the submitting host sees them, whoever calls this.
    ``labels``: the name, tags and note every job of this submit carries.
    ``start_job_id``: the shared start every job begins from (a start job of this database, queued,
    running or done): each config gets its key as ``start``, and no job is claimed before it succeeds.

    Raises:
        ConfigError: the start is not a start job, has ended without a result, or was trained so that
            a job's evaluation pictures would be in its training.
    """

    def real(path: str) -> str:
        return os.path.realpath(os.path.expanduser(path))

    configs = [c.with_(voc_root=real(c.voc_root), more_roots=tuple(real(r) for r in c.more_roots)) for c in configs]
    if start_job_id is not None:
        start = usable_start(s, start_job_id)
        configs = [c.with_(start=start.key) for c in configs]
        for c in configs:
            check_start_fits(start.train_config, c, start_job_id)
    lab = labels or Labels()
    jobs = [
        TrainJob(
            voc_class=c.voc_class,
            config=c.to_dict(),
            max_attempts=max_attempts,
            promote=promote,
            name=lab.name,
            tags=lab.tags or None,
            note=lab.note,
            start_job_id=start_job_id,
        )
        for c in configs
    ]
    s.add_all(jobs)
    s.flush()
    return jobs


def usable_start(s: Session, job_id: int) -> TrainJob:
    """The start job ``job_id``, if class jobs may begin from it: queued, running or succeeded.

    Raises:
        ConfigError: no such job, not a start, or failed or cancelled (one line with what to do).
    """
    job = s.get(TrainJob, job_id)
    if job is None or job.voc_class != START_CLASS:
        raise ConfigError(f"--start {job_id}: no start job {job_id} (a start is queued with --start new; 'vocfleet status --class all' lists them)")
    if job.status in (JobStatus.failed, JobStatus.cancelled):
        raise ConfigError(f"--start {job_id}: that start is {job.status.value}; 'vocfleet retry {job_id}' first, or --start new")
    return job


def finish_start(s: Session, job_id: int, token: str, location: str, sha256: str, val_map: float) -> list[int] | None:
    """Mark a start job succeeded with its ``start.pt`` (a store location and its sha256).

    Returns:
        The queued class jobs that waited for it (now ready; the caller sends them to the broker),
        or None when this worker no longer holds the job.
    """
    job = owned(s, TrainJob, job_id, token)
    if job is None:
        return None
    job.start_file, job.start_sha256, job.latest_val_ap = location, sha256, val_map
    job.status, job.finished_at, job.error = JobStatus.succeeded, utcnow(), None
    return waiting_for(s, job_id)


def ready_ids(s: Session, ids: list[int]) -> list[int]:
    """Those of ``ids`` that are queued and wait for nothing: what may go to the broker now."""
    q = select(TrainJob.id).where(TrainJob.id.in_(ids), TrainJob.status == JobStatus.queued, TrainJob.ready())
    return list(s.scalars(q.order_by(TrainJob.id)))


def waiting_for(s: Session, start_job_id: int) -> list[int]:
    """The queued class jobs of one start, by id."""
    q = select(TrainJob.id).where(TrainJob.start_job_id == start_job_id, TrainJob.status == JobStatus.queued)
    return list(s.scalars(q.order_by(TrainJob.id)))


@dataclass(frozen=True)
class Waiting:
    """Queued class jobs whose start has not succeeded: the start and where it stands."""

    start_job_id: int
    start_status: JobStatus
    job_ids: tuple[int, ...]


def waiting_jobs(s: Session) -> list[Waiting]:
    """Every start that queued class jobs wait for and has not succeeded, with those jobs."""
    start = aliased(TrainJob)
    q = (
        select(TrainJob.start_job_id, start.status, TrainJob.id)
        .join(start, start.id == TrainJob.start_job_id)
        .where(TrainJob.status == JobStatus.queued, start.status != JobStatus.succeeded)
        .order_by(TrainJob.start_job_id, TrainJob.id)
    )
    out: dict[int, Waiting] = {}
    for start_id, status, job_id in s.execute(q):
        w = out.get(start_id, Waiting(start_id, status, ()))
        out[start_id] = Waiting(start_id, status, (*w.job_ids, job_id))
    return list(out.values())


class QueuedJob(NamedTuple):
    id: int
    voc_class: str


def next_queued(s: Session) -> QueuedJob | None:
    """The oldest queued training job that nobody asked to cancel and that waits for nothing (its id and class), or None."""
    q = select(TrainJob.id, TrainJob.voc_class).where(TrainJob.status == JobStatus.queued, TrainJob.cancel_requested.is_(False), TrainJob.ready())
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


def retry_job(s: Session, job_id: int) -> JobStatus | None:
    """Queue a failed or cancelled job again with fresh attempts (it resumes from its ``last.pt``).

    Returns:
        ``JobStatus.queued`` once done; the status that kept it from being retried; None if there is no such job.
    """
    job = s.get(TrainJob, job_id, with_for_update=True)
    if job is None:
        return None
    if job.status not in (JobStatus.failed, JobStatus.cancelled):
        return job.status
    job.status, job.claim_token, job.cancel_requested, job.error, job.finished_at, job.attempts = JobStatus.queued, None, False, None, None, 0
    return JobStatus.queued
