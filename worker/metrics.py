"""Prometheus metrics of a worker and of the scheduler (prometheus_client's conventions: units in the
names, counters ending in ``_total``, one label set per series).

A worker serves what its task process did (epochs, seconds per epoch, pictures scored, files that
could not be, seconds per scoring chunk, heartbeats); the scheduler serves the database's view of
the fleet and the broker's queue depths (``vocfleet.scheduler.fleet_metrics``). Both listen
on ``VOCFLEET_METRICS_PORT`` at ``VOCFLEET_METRICS_BIND`` (127.0.0.1 unless set); unset, nothing
listens and the counters cost nothing but an addition.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from vocfleet.db.settings import Settings, get_settings

log = logging.getLogger(__name__)

EPOCHS = Counter("vocfleet_epochs_total", "Training epochs finished and recorded", ["voc_class"])
EPOCH_SECONDS = Histogram(
    "vocfleet_epoch_seconds", "Training time of one epoch (its steps)", buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, float("inf"))
)
IMAGES_SCORED = Counter("vocfleet_images_scored_total", "Pictures scored (each by every detector of its run)")
FILES_ERRORED = Counter("vocfleet_files_errored_total", "Files seen while scoring that could not be scored")
CHUNK_SECONDS = Histogram(
    "vocfleet_score_chunk_seconds",
    "Wall time of one scoring chunk: decode, detectors, database write",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, float("inf")),
)
HEARTBEATS = Counter("vocfleet_heartbeats_total", "Heartbeats written for the work this process holds", ["table"])
LAST_HEARTBEAT = Gauge("vocfleet_last_heartbeat_timestamp_seconds", "When this process last wrote a heartbeat (Unix time)")


def serve(settings: Settings | None = None, what: str = "worker") -> int | None:
    """Listen for Prometheus's scrapes if ``VOCFLEET_METRICS_PORT`` is set; the port, or None.

    A port already taken is a warning, not a reason to stop working.
    """
    settings = settings or get_settings()
    if settings.metrics_port is None:
        return None
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_bind)
    except OSError as exc:
        log.warning("%s metrics: cannot listen on %s:%d (%s); serving none", what, settings.metrics_bind, settings.metrics_port, exc.strerror)
        return None
    log.info("%s metrics at http://%s:%d/metrics", what, settings.metrics_bind, settings.metrics_port)
    return settings.metrics_port
