"""Talking to the fleet: hand rows to the broker, re-send what it lost, reap dead workers, cancel."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from kombu.exceptions import ChannelError
from sqlalchemy import or_, select, update

from vocfleet.db.jobs import Work, reap_stale
from vocfleet.db.models import JobStatus, ScoreRun, TrainJob, utcnow
from vocfleet.db.session import session_scope
from vocfleet.db.settings import get_settings

log = logging.getLogger(__name__)
TASKS = {TrainJob: ("vocfleet.train_detector", "train"), ScoreRun: ("vocfleet.score_folder", "score")}


def enqueue(table: Work, ids: Iterable[int]) -> int:
    """Send rows to their Celery queue and stamp ``enqueued_at``; a no-op without a broker.

    A broker that cannot be reached is logged, not raised: the rows stay queued in the database
    and ``vocfleet scheduler`` sends them once the broker is back.

    Returns:
        How many were sent.
    """
    ids = list(ids)
    if not ids or not get_settings().broker_url:
        return 0
    from vocfleet.worker.celery_app import app

    name, queue = TASKS[table]
    sent = []
    try:
        for row_id in ids:
            app.send_task(name, args=[row_id], queue=queue)
            sent.append(row_id)
    except Exception as exc:  # noqa: BLE001 - kombu raises several types for "broker away"
        log.warning("broker unreachable (%s); %d row(s) stay queued for the scheduler to send", exc, len(ids) - len(sent))
    if sent:
        with session_scope() as s:
            s.execute(update(table).where(table.id.in_(sent)).values(enqueued_at=utcnow()))
    return len(sent)


def broker_queue_length(queue: str) -> int | None:
    """Messages waiting in a broker queue, or None if the broker cannot be asked."""
    from vocfleet.worker.celery_app import app

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
    for table, (_name, queue) in TASKS.items():
        with session_scope() as s:
            requeued, failed = reap_stale(s, stale_after, table=table)
        out[f"{table.__tablename__}_requeued"], out[f"{table.__tablename__}_failed"] = requeued, failed
        enqueue(table, requeued)
        resend: list[int] = []
        if get_settings().broker_url and broker_queue_length(queue) == 0:
            with session_scope() as s:
                resend = list(
                    s.scalars(
                        select(table.id)
                        .where(
                            table.status == JobStatus.queued,
                            table.cancel_requested.is_(False),
                            or_(table.enqueued_at.is_(None), table.enqueued_at < utcnow() - resend_after),
                        )
                        .order_by(table.id)
                    )
                )
            enqueue(table, resend)
        out[f"{table.__tablename__}_resent"] = resend
    return out
