"""Prometheus metrics of a worker and of the scheduler (prometheus_client's conventions: units in the
names, counters ending in ``_total``, one label set per series).

A worker serves what its task process did (epochs, seconds per epoch, pictures scored, files that
could not be, seconds per scoring chunk, heartbeats); the scheduler serves the database's view of
the fleet (jobs, runs and shards by state, live workers) and the broker's queue depths. Both listen
on ``VOCFLEET_METRICS_PORT`` at ``VOCFLEET_METRICS_BIND`` (127.0.0.1 unless set); unset, nothing
listens and the counters cost nothing but an addition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


class FleetCollector(Collector):
    """The fleet as the database and the broker see it, read at each scrape (the scheduler's metrics)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from vocfleet.db.models import ScoreRun, ScoreShard, TrainJob
        from vocfleet.db.session import session_scope
        from vocfleet.db.states import JobStatus
        from vocfleet.db.workers import worker_rows

        settings = get_settings()
        families = {
            TrainJob: GaugeMetricFamily("vocfleet_jobs", "Training jobs by state", labels=["state"]),
            ScoreRun: GaugeMetricFamily("vocfleet_score_runs", "Scoring runs by state", labels=["state"]),
            ScoreShard: GaugeMetricFamily("vocfleet_score_shards", "Shards of scoring runs by state", labels=["state"]),
        }
        workers = GaugeMetricFamily("vocfleet_workers_live", "Workers with a fresh heartbeat, by queue", labels=["queue"])
        with session_scope() as s:
            for table, family in families.items():
                counts = dict(s.execute(select(table.status, func.count()).group_by(table.status)).all())
                for state in JobStatus:
                    family.add_metric([state.value], counts.get(state, 0))
            live = worker_rows(s, timedelta(seconds=settings.stale_seconds))
        for queue in ("train", "score"):
            workers.add_metric([queue], sum(queue in r["queues"].split(",") for r in live))
        yield from families.values()
        yield workers
        depth = GaugeMetricFamily("vocfleet_queue_messages", "Messages waiting in the broker, by queue", labels=["queue"])
        for queue, n in _queue_depths(settings).items():
            depth.add_metric([queue], n)
        yield depth


def _queue_depths(settings: Settings) -> dict[str, int]:
    if not settings.broker_url:
        return {}
    from kombu import Connection

    out = {}
    for queue in ("train", "score"):
        try:
            with Connection(settings.broker_url, connect_timeout=3) as conn:
                out[queue] = conn.default_channel.queue_declare(queue=queue, passive=True).message_count
        except Exception as exc:  # noqa: BLE001 - a broker away: no figure, not a failed scrape
            if "NOT_FOUND" in str(exc):  # Redis keeps no empty list; AMQP: never declared. Either way nothing waits
                out[queue] = 0
            else:
                log.warning("depth of queue %s unavailable: %s", queue, exc)
    return out


def serve_fleet() -> int | None:
    """The scheduler's metrics: the fleet collector, then :func:`serve`."""
    REGISTRY.register(FleetCollector())
    return serve(what="scheduler")
