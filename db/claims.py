"""Claims: one worker at a time holds a row of work (a training job, a scoring run, a shard).

A claim is a conditional ``UPDATE`` from queued to running with a fresh token; every later write
(heartbeat, progress, the end) is guarded by that token, so a worker whose claim was taken away
(reaped after a stale heartbeat, or a second delivery) can no longer change the row. Generic over
the tables of :class:`~vocfleet.db.models.Claimable` work; what each table does with its rows is in
``training.py`` and ``runs.py``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .models import Claimable, JobStatus, utcnow
from .states import as_utc

Work = type[Claimable]
Row = TypeVar("Row", bound=Claimable)


def clock(s: Session) -> datetime:
    """Now, by the database's clock on a shared database: heartbeats and staleness are compared across
    hosts, so one clock serves them all, and a host whose clock is minutes off neither looks dead
    while it works nor outlives its heartbeat when it dies. The embedded SQLite file has one host."""
    if s.get_bind().dialect.name == "sqlite":
        return utcnow()
    return as_utc(s.scalar(select(func.now())))


def claim_job(s: Session, table: Work, job_id: int, host: str) -> str | None:
    """Atomically move a queued job to running; returns the new claim token, or None if not claimable.

    Args:
        s: session (the caller commits).
        table: the table of work (:class:`TrainJob`, :class:`ScoreRun` or :class:`ScoreShard`).
        job_id: the row.
        host: worker host name, recorded on the row.
    Returns:
        The claim token for later guarded writes, or None (already running elsewhere, finished,
        cancelled, or waiting for the work it depends on: a class job for its start).
    """
    token = uuid.uuid4().hex
    now = clock(s)
    res = s.execute(
        update(table)
        .where(table.id == job_id, table.status == JobStatus.queued, table.cancel_requested.is_(False), table.ready())
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


def heartbeat(s: Session, table: Work, job_id: int, token: str) -> str:
    """Refresh the heartbeat; returns ``ok``, ``cancel`` (cancel requested) or ``lost`` (claim gone)."""
    res = s.execute(update(table).where(table.id == job_id, table.claim_token == token, table.status == JobStatus.running).values(heartbeat_at=clock(s)))
    if res.rowcount != 1:
        return "lost"
    cancel = s.scalar(select(table.cancel_requested).where(table.id == job_id))
    return "cancel" if cancel else "ok"


def owned(s: Session, table: type[Row], row_id: int, token: str) -> Row | None:
    """The row of ``table``, locked, if ``token`` still holds its claim; else None."""
    row = s.get(table, row_id, with_for_update=True)
    if row is None or row.claim_token != token or row.status != JobStatus.running:
        return None
    return row


def end_job(s: Session, table: Work, job_id: int, token: str, status: JobStatus, error: str | None = None) -> bool:
    """Mark an owned job failed or cancelled (with the reason), or queued again (released)."""
    job = owned(s, table, job_id, token)
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


def reap_stale(s: Session, table: Work, stale_after: timedelta, now: datetime | None = None) -> tuple[list[int], list[int]]:
    """Put running jobs whose heartbeat is older than ``stale_after`` back in the queue.

    Jobs that used up their attempts fail with the reason instead.

    Returns:
        (requeued job ids, failed job ids).
    """
    now = now or clock(s)
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


def cancel_work(s: Session, table: Work, ids: list[int] | None) -> tuple[list[int], list[int]]:
    """Cancel rows of ``table`` (``None``: every unfinished one): queued ones at once, running ones at their next heartbeat.

    A cancelled start takes the queued class jobs that wait for it along (they could never run).

    Returns:
        (cancelled now, cancel requested from the running worker).
    """
    q = select(table).where(table.status.in_([JobStatus.queued, JobStatus.running]))
    if ids is not None:
        waiting = getattr(table, "start_job_id", None)
        if waiting is not None:
            ids = [*ids, *s.scalars(select(table.id).where(waiting.in_(ids), table.status == JobStatus.queued))]
        q = q.where(table.id.in_(ids))
    now, asked = [], []
    for row in s.scalars(q.with_for_update()):
        row.cancel_requested = True
        if row.status == JobStatus.queued:
            row.status, row.finished_at, row.error = JobStatus.cancelled, utcnow(), "cancelled by user before it started"
            now.append(row.id)
        else:
            asked.append(row.id)
    return now, asked


@dataclass(frozen=True)
class WorkState:
    """Where one row of work stands, as a command shows it."""

    id: int
    status: JobStatus
    heartbeat_at: datetime | None
    worker_host: str | None
    error: str | None
    voc_class: str | None = None  # training jobs'


def work_states(s: Session, table: Work, ids: list[int] | None = None) -> dict[int, WorkState]:
    """The rows of ``table`` with these ids (``None``: the running ones), by id; an id with no row is absent."""
    label = getattr(table, "voc_class", None)
    q = select(table.id, table.status, table.heartbeat_at, table.worker_host, table.error, *([label] if label is not None else []))
    q = q.where(table.status == JobStatus.running) if ids is None else q.where(table.id.in_(ids))
    return {r[0]: WorkState(r[0], r[1], as_utc(r[2]), *r[3:]) for r in s.execute(q.order_by(table.id))}
