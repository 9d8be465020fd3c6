"""The Celery application (configuration from ``vocfleet.worker.celeryconfig``)."""

import os
import signal

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

app = Celery("vocfleet", include=["vocfleet.worker.tasks"])
app.config_from_object("vocfleet.worker.celeryconfig")


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    # A forked child must not reuse the parent's pooled database connections.
    from vocfleet.db.session import dispose_engines

    dispose_engines()
    # Told by the main process that the worker is shutting down: hand back what it holds, soon.
    from .drain import DRAIN

    signal.signal(signal.SIGUSR2, lambda _signum, _frame: DRAIN.set())
    # The task process serves the metrics: it is the one that trains and scores (one per worker).
    from .metrics import serve

    serve()


_controller = None


@worker_init.connect
def _keep_controller(sender=None, **_kwargs) -> None:
    global _controller
    _controller = sender


@worker_shutting_down.connect
def _drain(how=None, **_kwargs) -> None:
    """Warm shutdown (SIGTERM, 'docker compose stop'): the task child hands back its job or shard at the
    next batch or chunk and sends it to the broker again, so another worker takes it at once."""
    pool = getattr(getattr(_controller, "pool", None), "_pool", None)
    for proc in getattr(pool, "_pool", None) or []:
        try:
            os.kill(proc.pid, signal.SIGUSR2)
        except (ProcessLookupError, AttributeError):
            pass


@worker_ready.connect
def _present(sender=None, **_kwargs) -> None:
    # The main process, once its queues are bound: 'vocfleet workers' lists it from now on.
    from .presence import worker_started

    queues = [q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])] or ["train", "score"]
    worker_started(getattr(sender, "hostname", None) or "celery", queues)


@worker_shutdown.connect
def _gone(**_kwargs) -> None:
    from .presence import worker_stopping

    worker_stopping()
