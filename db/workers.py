"""Fleet workers: each says who it is at start, heartbeats while it runs and says when it stops (``vocfleet workers``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .claims import clock
from .models import ScoreRun, ScoreShard, TrainJob, Worker
from .records import WorkerRecord
from .states import JobStatus, as_utc, utcnow


def register_worker(s: Session, name: str, host: str, queues: str, version: str, device: str, pid: int) -> None:
    """Record a worker that has just started (a restarted worker of the same name takes its row over)."""
    now = clock(s)
    row = s.get(Worker, name)
    if row is None:
        row = Worker(name=name)
        s.add(row)
    row.host, row.queues, row.version, row.device, row.pid = host, queues, version, device, pid
    row.started_at = row.heartbeat_at = now
    row.stopped_at = None


def worker_heartbeat(s: Session, name: str) -> bool:
    """Refresh a worker's heartbeat; False if its row is gone (then it registers again)."""
    return s.execute(update(Worker).where(Worker.name == name).values(heartbeat_at=clock(s), stopped_at=None)).rowcount == 1


def worker_stopped(s: Session, name: str) -> None:
    s.execute(update(Worker).where(Worker.name == name).values(stopped_at=clock(s)))


def worker_state(row: Worker, stale_after: timedelta, now: datetime | None = None) -> str:
    """``live``, ``stopped`` (it said so) or ``silent`` (no heartbeat for ``stale_after``: killed, or its host is gone)."""
    if row.stopped_at is not None:
        return "stopped"
    beat = as_utc(row.heartbeat_at)
    return "live" if beat is not None and beat >= (now or utcnow()) - stale_after else "silent"


def worker_records(s: Session, stale_after: timedelta, include_gone: bool = False) -> list[WorkerRecord]:
    """Workers (live ones unless ``include_gone``) with what each holds: the running rows it claimed."""
    now = clock(s)
    holding: dict[str, list[str]] = {}
    for table, label in ((TrainJob, "job"), (ScoreRun, "run"), (ScoreShard, "shard")):
        for row_id, host in s.execute(select(table.id, table.worker_host).where(table.status == JobStatus.running, table.claim_token.is_not(None))):
            holding.setdefault(host, []).append(f"{label} {row_id}")
    records = []
    for w in s.scalars(select(Worker).order_by(Worker.host, Worker.name)):
        state = worker_state(w, stale_after, now)
        if state != "live" and not include_gone:
            continue
        beat = as_utc(w.heartbeat_at)
        age = round((now - beat).total_seconds(), 1) if beat else None
        records.append(WorkerRecord(w.name, w.host, w.queues.split(","), w.version, w.device, state, holding.get(w.name, []), age))
    return records
