"""Talking to the fleet: hand rows to the broker, re-send what it lost, reap dead workers, cancel."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Iterable

from kombu.exceptions import ChannelError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.jobs import reap_stale
from db.models import JobStatus, ScoreRun, TrainJob, utcnow
from db.session import session_scope
from db.settings import get_settings

log = logging.getLogger(__name__)
TASKS = {TrainJob: ("vocfleet.train_detector", "train"), ScoreRun: ("vocfleet.score_folder", "score")}


def enqueue(model, ids: Iterable[int]) -> int:
    """Send rows to their Celery queue and stamp ``enqueued_at``; a no-op without a broker.

    A broker that cannot be reached is logged, not raised: the rows stay queued in the database
    and ``vocfleet scheduler`` sends them once the broker is back.

    Returns:
        How many were sent.
    """
    ids = list(ids)
    if not ids or not get_settings().broker_url:
        return 0
    from worker.celery_app import app

    name, queue = TASKS[model]
    sent = []
    try:
        for row_id in ids:
            app.send_task(name, args=[row_id], queue=queue)
            sent.append(row_id)
    except Exception as exc:  # noqa: BLE001 - kombu raises several types for "broker away"
        log.warning("broker unreachable (%s); %d row(s) stay queued for the scheduler to send", exc, len(ids) - len(sent))
    if sent:
        with session_scope() as s:
            s.execute(update(model).where(model.id.in_(sent)).values(enqueued_at=utcnow()))
    return len(sent)


def broker_queue_length(queue: str) -> int | None:
    """Messages waiting in a broker queue, or None if the broker cannot be asked."""
    from worker.celery_app import app

    try:
        with app.connection_for_write() as conn:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
    except ChannelError as exc:
        if "NOT_FOUND" in str(exc):  # a restarted broker forgot the queue with its messages
            return 0
        log.warning("cannot read the length of queue %r: %s", queue, exc)
        return None
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot read the length of queue %r: %s", queue, exc)
        return None


def tick(stale_after: timedelta, resend_after: timedelta) -> dict[str, list[int]]:
    """One scheduler pass: reap stale rows, then send what is queued but no longer in the broker.

    Re-sending happens only when the broker's queue is empty (workers would otherwise just be
    busy), for rows queued longer than ``resend_after``; a duplicate message is harmless because
    a worker must claim the row before running it.
    """
    out: dict[str, list[int]] = {}
    for model, (_name, queue) in TASKS.items():
        with session_scope() as s:
            requeued, failed = reap_stale(s, stale_after, model=model)
        out[f"{model.__tablename__}_requeued"], out[f"{model.__tablename__}_failed"] = requeued, failed
        enqueue(model, requeued)
        resend: list[int] = []
        if get_settings().broker_url and broker_queue_length(queue) == 0:
            with session_scope() as s:
                resend = list(s.scalars(
                    select(model.id).where(
                        model.status == JobStatus.queued, model.cancel_requested.is_(False),
                        or_(model.enqueued_at.is_(None), model.enqueued_at < utcnow() - resend_after),
                    ).order_by(model.id)
                ))
            enqueue(model, resend)
        out[f"{model.__tablename__}_resent"] = resend
    return out


def cancel(s: Session, model, ids: list[int] | None) -> tuple[list[int], list[int]]:
    """Cancel rows (``None``: every unfinished one): queued ones at once, running ones at their next heartbeat.

    Returns:
        (cancelled now, cancel requested from the running worker).
    """
    q = select(model).where(model.status.in_([JobStatus.queued, JobStatus.running]))
    if ids is not None:
        q = q.where(model.id.in_(ids))
    now, asked = [], []
    for row in s.scalars(q.with_for_update()):
        row.cancel_requested = True
        if row.status == JobStatus.queued:
            row.status, row.finished_at, row.error = JobStatus.cancelled, utcnow(), "cancelled by user before it started"
            now.append(row.id)
        else:
            asked.append(row.id)
    return now, asked
