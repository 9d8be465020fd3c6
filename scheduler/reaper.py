"""The fleet scheduler's pass: reap dead workers' rows, re-send what the broker lost, end finished runs."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import or_, select

from vocfleet.db.claims import reap_stale
from vocfleet.db.models import JobStatus, utcnow
from vocfleet.db.runs import finish_run_if_done, running_runs
from vocfleet.db.session import session_scope
from vocfleet.worker.dispatch import TASKS, broker_queue_length, enqueue
from vocfleet.worker.executor import executor

log = logging.getLogger(__name__)


def tick(stale_after: timedelta, resend_after: timedelta) -> dict[str, list[int]]:
    """One scheduler pass: reap stale rows, then send what is queued but no longer in the broker.

    Re-sending happens only when the broker's queue is empty (workers would otherwise just be
    busy), for rows queued longer than ``resend_after``; a duplicate message is harmless because
    a worker must claim the row before running it.
    """
    out: dict[str, list[int]] = {}
    for table, (_name, queue) in TASKS.items():
        with session_scope() as s:
            requeued, failed = reap_stale(s, table, stale_after)
        out[f"{table.__tablename__}_requeued"], out[f"{table.__tablename__}_failed"] = requeued, failed
        enqueue(table, requeued)
        resend: list[int] = []
        if executor().fleet and broker_queue_length(queue) == 0:
            with session_scope() as s:
                resend = list(
                    s.scalars(
                        select(table.id)
                        .where(
                            table.status == JobStatus.queued,
                            table.cancel_requested.is_(False),
                            table.ready(),  # a class job waiting for its start is sent when the start ends
                            or_(table.enqueued_at.is_(None), table.enqueued_at < utcnow() - resend_after),
                        )
                        .order_by(table.id)
                    )
                )
            enqueue(table, resend)
        out[f"{table.__tablename__}_resent"] = resend
    # Runs whose last shard ended without ending the run (its worker died at that moment, or the
    # reaper just failed a shard that used up its attempts).
    ended = []
    for run_id in _scanned_running():
        with session_scope() as s:
            if finish_run_if_done(s, run_id) is not None:
                ended.append(run_id)
    out["score_runs_ended"] = ended
    return out


def _scanned_running() -> list[int]:
    with session_scope() as s:
        return running_runs(s)
