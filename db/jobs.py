"""Job lifecycle in the database: claim, heartbeat, per-epoch records, finish, reap.

Every write that a worker makes is guarded by the job's ``claim_token``: a worker whose claim was
taken away (reaped after a stale heartbeat, or a second delivery) can no longer change the job.
"""

from __future__ import annotations

import os
import uuid
import zlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from .models import Claimable, Detector, EpochMetric, JobStatus, ScoreRun, TrainJob, utcnow
from .states import as_utc

if TYPE_CHECKING:
    from vocfleet.model.engine import FitResult

Work = type[Claimable]


def claim_job(s: Session, job_id: int, host: str, table: Work = TrainJob) -> str | None:
    """Atomically move a queued job to running; returns the new claim token, or None if not claimable.

    Args:
        s: session (the caller commits).
        job_id: the job.
        host: worker host name, recorded on the row.
        table: the table of work (:class:`TrainJob` or :class:`ScoreRun`).
    Returns:
        The claim token for later guarded writes, or None (already running elsewhere, finished,
        cancelled).
    """
    token = uuid.uuid4().hex
    now = utcnow()
    res = s.execute(
        update(table)
        .where(table.id == job_id, table.status == JobStatus.queued, table.cancel_requested.is_(False))
        .values(
            status=JobStatus.running,
            claim_token=token,
            worker_host=host,
            heartbeat_at=now,
            attempts=table.attempts + 1,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        return None
    s.execute(update(table).where(table.id == job_id, table.started_at.is_(None)).values(started_at=now))
    return token


def heartbeat(s: Session, job_id: int, token: str, table: Work = TrainJob) -> str:
    """Refresh the heartbeat; returns ``ok``, ``cancel`` (cancel requested) or ``lost`` (claim gone)."""
    res = s.execute(update(table).where(table.id == job_id, table.claim_token == token, table.status == JobStatus.running).values(heartbeat_at=utcnow()))
    if res.rowcount != 1:
        return "lost"
    cancel = s.scalar(select(table.cancel_requested).where(table.id == job_id))
    return "cancel" if cancel else "ok"


def owned(s: Session, job_id: int, token: str, table: Work = TrainJob):
    """The row, locked, if ``token`` still holds its claim; else None."""
    job = s.get(table, job_id, with_for_update=True)
    if job is None or job.claim_token != token or job.status != JobStatus.running:
        return None
    return job


def record_epoch(s: Session, job_id: int, token: str, record: dict[str, Any]) -> bool:
    """Store one finished epoch (idempotent: an epoch already stored is overwritten, never duplicated)."""
    job = owned(s, job_id, token)
    if job is None:
        return False
    fields = {k: float(record[k]) for k in ("train_loss", "val_loss", "val_ap", "lr", "seconds", "images_per_s")}
    row = s.scalar(select(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch == record["epoch"]))
    if row is None:
        s.add(EpochMetric(job_id=job_id, epoch=int(record["epoch"]), **fields))
    else:
        for k, v in fields.items():
            setattr(row, k, v)
    job.epochs_done = int(record["epoch"])
    job.latest_val_ap = fields["val_ap"]
    job.heartbeat_at = utcnow()
    return True


PROMOTE = ("if-better", "always", "never")


def finish_job(s: Session, job_id: int, token: str, result: FitResult) -> Detector | None:
    """Mark the job succeeded and record its detector; whether it becomes active is the job's ``promote`` policy.

    ``if-better`` (the default): active only if its AP is at least the active detector's, when
    both were measured on the same evaluation split of the same VOC root; on different splits the
    APs do not compare, and the new one becomes active. ``always`` / ``never``: as they say. The
    decision and both APs are stored in the detector's ``metrics["promotion"]``.
    """
    job = owned(s, job_id, token)
    if job is None:
        return None
    existing = s.scalar(select(Detector).where(Detector.job_id == job_id))
    if existing is not None:  # a re-delivered job that already finished: keep the first result
        detector = existing
    else:
        metrics = dict(result.metrics)
        metrics.update(val=result.val_metrics, best_epoch=result.best_epoch, skipped_images=result.skipped_images, plots=result.plots)
        lock_class(s, job.voc_class)
        current = s.scalar(select(Detector).where(Detector.voc_class == job.voc_class, Detector.active.is_(True)).with_for_update())
        promote, decision = _promotion(s, job, metrics, current)
        metrics["promotion"] = decision
        if promote and current is not None:
            current.active = False
            s.flush()  # one active detector per class, enforced by a unique index
        detector = Detector(
            voc_class=job.voc_class,
            job_id=job_id,
            checkpoint_path=result.checkpoint,
            sha256=result.sha256,
            threshold=float(result.threshold),
            ap=float(result.metrics["ap"]),
            metrics=metrics,
            active=promote,
        )
        s.add(detector)
        s.flush()
    job.status = JobStatus.succeeded
    job.finished_at = utcnow()
    job.error = None
    return detector


def _promotion(s: Session, job: TrainJob, metrics: dict[str, Any], current: Detector | None) -> tuple[bool, dict[str, Any]]:
    policy = job.promote or "if-better"
    decision: dict[str, Any] = {"policy": policy, "ap": metrics["ap"], "active_id": None, "active_ap": None}
    if current is None:
        return policy != "never", decision | {"decision": "first detector of its class" if policy != "never" else "kept inactive (--promote never)"}
    decision.update(active_id=current.id, active_ap=current.ap)
    if policy != "if-better":
        return policy == "always", decision | {"decision": f"--promote {policy}"}
    if not _same_evaluation(s, current, job, metrics):
        return True, decision | {"decision": "promoted: the active detector was evaluated on other pictures or labels, the APs do not compare"}
    if metrics["ap"] >= current.ap:
        return True, decision | {"decision": "promoted: AP at least the active detector's"}
    return False, decision | {"decision": f"kept detector {current.id} active: its AP {current.ap:.3f} is higher"}


def lock_class(s: Session, voc_class: str) -> None:
    """Hold the class's detector lock until the transaction ends, so one active detector per class holds under concurrency.

    Two transactions that both find no active detector would otherwise both insert one (row
    locks cannot lock a row that does not exist). PostgreSQL: a transaction-scoped advisory lock
    keyed by the class. SQLite serialises writers itself.
    """
    if s.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"vocfleet.detectors.{voc_class}".encode()) - 2**31  # a signed 32-bit key
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _same_evaluation(s: Session, current: Detector, job: TrainJob, metrics: dict[str, Any]) -> bool:
    """Were both detectors judged on the same pictures with the same labels? By the data fingerprint, never by a path.

    A detector from before fingerprints (0.5.0) is compared by its evaluation split and the real
    path of its VOC root, links resolved.
    """
    ours, theirs = metrics.get("eval_fingerprint"), current.metrics.get("eval_fingerprint")
    if ours and theirs:
        return ours == theirs
    current_job = s.get(TrainJob, current.job_id) if current.job_id else None
    if current_job is None or current.metrics.get("split") != metrics.get("split"):
        return False
    roots = [j.config.get("voc_root") for j in (current_job, job)]
    return None not in roots and os.path.realpath(roots[0]) == os.path.realpath(roots[1])


def activate_detector(s: Session, detector_id: int, reason: str | None = None) -> tuple[Detector, Detector | None] | None:
    """Make a detector its class's active one (the one before it is returned too); None if there is no such detector.

    The change is recorded in both detectors' history (``metrics["events"]``): when, which
    detector replaced which, and ``reason``.
    """
    detector = s.get(Detector, detector_id)
    if detector is None:
        return None
    lock_class(s, detector.voc_class)
    s.refresh(detector, with_for_update=True)
    before = s.scalar(select(Detector).where(Detector.voc_class == detector.voc_class, Detector.active.is_(True)).with_for_update())
    if before is detector:
        return detector, None
    at = utcnow().isoformat(timespec="seconds")
    if before is not None:
        before.active = False
        _add_event(before, {"at": at, "event": "deactivated", "by": detector.id, "reason": reason})
        s.flush()
    detector.active = True
    _add_event(detector, {"at": at, "event": "activated", "replaced": before.id if before is not None else None, "reason": reason})
    return detector, before


def _add_event(detector: Detector, event: dict[str, Any]) -> None:
    """Append to a detector's history (a new dict: the JSON column is not tracked for in-place changes)."""
    detector.metrics = {**detector.metrics, "events": [*detector.metrics.get("events", []), event]}


def end_job(s: Session, job_id: int, token: str, status: JobStatus, error: str | None = None, table: Work = TrainJob) -> bool:
    """Mark an owned job failed or cancelled (with the reason), or queued again (released)."""
    job = owned(s, job_id, token, table)
    if job is None:
        return False
    job.status = status
    job.error = error
    job.claim_token = None
    if status.finished:
        job.finished_at = utcnow()
    return True


def is_stale(row: Claimable, stale_after: timedelta, now: datetime | None = None) -> bool:
    """A running row whose heartbeat is older than ``stale_after`` (its worker is presumed dead)."""
    beat = as_utc(row.heartbeat_at)
    return row.status == JobStatus.running and (beat is None or beat < (now or utcnow()) - stale_after)


def reap_stale(s: Session, stale_after: timedelta, now: datetime | None = None, table: Work = TrainJob) -> tuple[list[int], list[int]]:
    """Put running jobs whose heartbeat is older than ``stale_after`` back in the queue.

    Jobs that used up their attempts fail with the reason instead.

    Returns:
        (requeued job ids, failed job ids).
    """
    now = now or utcnow()
    # Claimed rows only: a scanned scoring run stays running, unclaimed, while its shards run.
    claimed_stale = (table.status == JobStatus.running, table.claim_token.is_not(None), table.heartbeat_at < now - stale_after)
    stale = s.scalars(select(table).where(*claimed_stale).with_for_update(skip_locked=True)).all()
    requeued, failed = [], []
    for job in stale:
        job.claim_token = None
        if job.cancel_requested:
            job.status, job.finished_at, job.error = JobStatus.cancelled, now, "cancelled (worker gone)"
        elif job.attempts >= job.max_attempts:
            job.status, job.finished_at = JobStatus.failed, now
            job.error = f"worker {job.worker_host} stopped heartbeating; gave up after {job.attempts} attempts"
            failed.append(job.id)
        else:
            job.status = JobStatus.queued
            job.error = f"requeued: worker {job.worker_host} stopped heartbeating (attempt {job.attempts})"
            requeued.append(job.id)
    return requeued, failed


def create_jobs(s: Session, configs: list[dict[str, Any]], max_attempts: int = 3, promote: str = "if-better") -> list[TrainJob]:
    """Add one queued training job per config (``TrainConfig.to_dict()``); ids are set on return.

    The VOC root is stored with links resolved, as the submitting host sees it, whoever calls this.
    """
    configs = [{**c, "voc_root": os.path.realpath(os.path.expanduser(c["voc_root"]))} if c.get("voc_root") else c for c in configs]
    jobs = [TrainJob(voc_class=c["voc_class"], config=c, max_attempts=max_attempts, promote=promote) for c in configs]
    s.add_all(jobs)
    s.flush()
    return jobs


def next_queued(s: Session) -> int | None:
    """The oldest queued training job that nobody asked to cancel, or None."""
    return s.scalar(select(TrainJob.id).where(TrainJob.status == JobStatus.queued, TrainJob.cancel_requested.is_(False)).order_by(TrainJob.id).limit(1))


def cancel_work(s: Session, table: Work, ids: list[int] | None) -> tuple[list[int], list[int]]:
    """Cancel rows (``None``: every unfinished one): queued ones at once, running ones at their next heartbeat.

    Returns:
        (cancelled now, cancel requested from the running worker).
    """
    q = select(table).where(table.status.in_([JobStatus.queued, JobStatus.running]))
    if ids is not None:
        q = q.where(table.id.in_(ids))
    now, asked = [], []
    for row in s.scalars(q.with_for_update()):
        row.cancel_requested = True
        if row.status == JobStatus.queued:
            row.status, row.finished_at, row.error = JobStatus.cancelled, utcnow(), "cancelled by user before it started"
            now.append(row.id)
        else:
            asked.append(row.id)
    if table is ScoreRun and (now or asked):
        from .runs import cancel_shards, finish_run_if_done

        cancel_shards(s, now + asked)
        for run_id in asked:  # a scanned run whose shards just ended as cancelled ends now
            finish_run_if_done(s, run_id)
    return now, asked


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
