"""Handing rows to the broker: the Celery task and queue of each table of work."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import nullcontext

from sqlalchemy import update

from vocfleet.db.claims import Work
from vocfleet.db.models import ScoreRun, ScoreShard, TrainJob, utcnow
from vocfleet.db.session import session_scope
from vocfleet.db.settings import get_settings
from vocfleet.model import ConfigError

log = logging.getLogger(__name__)
TASKS = {
    TrainJob: ("vocfleet.train_detector", "train"),
    ScoreRun: ("vocfleet.score_folder", "score"),
    ScoreShard: ("vocfleet.score_shard", "score"),
}


def _refused(exc: BaseException) -> bool:
    """The broker answered with an error (Redis: ``DB index is out of range``, bad password) rather than not answering."""
    chain = [exc, exc.__cause__, exc.__context__]
    return any(type(e).__name__ in ("ResponseError", "AuthenticationError", "AuthenticationWrongNumberOfArgsError") for e in chain if e is not None)


def _refusal(url: str | None, exc: BaseException) -> ConfigError:
    return ConfigError(f"VOCFLEET_BROKER_URL={url!r}: the broker refused it ({exc}); fix the URL")


def ask_broker(url: str) -> Exception | None:
    """Connect to the broker once (5 s at most); None if it answered, else what went wrong."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=5)
    except Exception as exc:  # noqa: BLE001 - kombu raises several types for "broker away"
        return exc
    return None


def check_broker() -> None:
    """Before anything is written: a broker that answers with an error (a wrong URL) is one line; one that does not answer is left to the scheduler.

    Raises:
        ConfigError: the broker refused the URL (a Redis database that does not exist, a bad password).
    """
    url = get_settings().broker_url
    if not url:
        return
    exc = ask_broker(url)
    if exc is None:
        return
    if _refused(exc):
        raise _refusal(url, exc) from None
    log.warning("broker unreachable (%s); what is queued stays in the database for the scheduler to send", exc)


def broker_queue_length(queue: str) -> int | None:
    """Messages waiting in a broker queue, or None if the broker cannot be asked."""
    from kombu.exceptions import ChannelError

    from .celery_app import app

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
    from .celery_app import app

    name, queue = TASKS[table]
    url = get_settings().broker_url
    sent = []
    try:
        # The app's pooled connection, unless the settings now name another broker than the one the
        # app was configured with at import (a process that changed its environment).
        with nullcontext() if url == app.conf.broker_url else app.connection_for_write(url) as conn:
            for row_id in ids:
                app.send_task(name, args=[row_id], queue=queue, connection=conn)
                sent.append(row_id)
    except Exception as exc:  # noqa: BLE001 - kombu raises several types for "broker away"
        if _refused(exc):  # it answered, and said no: a wrong URL, not an outage that passes
            raise _refusal(get_settings().broker_url, exc) from None
        log.warning("broker unreachable (%s); %d row(s) stay queued for the scheduler to send", exc, len(ids) - len(sent))
    if sent:
        with session_scope() as s:
            s.execute(update(table).where(table.id.in_(sent)).values(enqueued_at=utcnow()))
    return len(sent)
