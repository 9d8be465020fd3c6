"""A fleet worker says who it is: its row in ``workers`` (host, queues, version, device), a heartbeat, and when it stops.

Runs in the Celery main process (the one that forks the task child), from ``worker_ready`` to
``worker_shutdown``; the database being away for a while only skips beats.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from sqlalchemy.exc import SQLAlchemyError

from vocfleet.db.session import session_scope
from vocfleet.db.settings import get_settings
from vocfleet.db.workers import register_worker, worker_heartbeat, worker_stopped

log = logging.getLogger(__name__)


class Presence:
    def __init__(self, name: str, queues: str):
        from vocfleet import __version__

        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.name, self.queues, self.version = name, queues, __version__
        self.device = f"cuda (CUDA_VISIBLE_DEVICES={gpu})" if gpu else "cpu"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vocfleet-presence", daemon=True)

    def _write(self, action, *args) -> bool:
        try:
            with session_scope() as s:
                return action(s, self.name, *args) is not False
        except SQLAlchemyError as exc:  # the database away: the next beat tries again
            log.warning("worker %s: could not write its heartbeat (%s)", self.name, exc.__class__.__name__)
            return True

    def _register(self) -> None:
        self._write(register_worker, socket.gethostname(), self.queues, self.version, self.device, os.getpid())

    def start(self) -> None:
        self._register()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(get_settings().heartbeat_seconds):
            if not self._write(worker_heartbeat):  # its row was removed: say it again
                self._register()

    def stop(self) -> None:
        self._stop.set()
        self._write(worker_stopped)


_presence: Presence | None = None


def worker_started(name: str, queues: list[str]) -> None:
    global _presence
    _presence = Presence(name, ",".join(sorted(queues)))
    _presence.start()


def worker_stopping() -> None:
    if _presence is not None:
        _presence.stop()
