"""The Celery application (configuration from ``vocfleet.worker.celeryconfig``)."""

from celery import Celery
from celery.signals import worker_process_init

app = Celery("vocfleet", include=["vocfleet.worker.tasks"])
app.config_from_object("vocfleet.worker.celeryconfig")


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    # A forked child must not reuse the parent's pooled database connections.
    from vocfleet.db.session import dispose_engines

    dispose_engines()
