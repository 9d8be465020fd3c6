"""The scheduler's Prometheus metrics: the fleet as the database and the broker see it, read at each scrape."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vocfleet.db.settings import get_settings
from vocfleet.worker.dispatch import broker_queue_length
from vocfleet.worker.executor import executor
from vocfleet.worker.metrics import serve


class FleetCollector(Collector):
    """The fleet as the database and the broker see it, read at each scrape (the scheduler's metrics)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from vocfleet.db.models import ScoreRun, ScoreShard, TrainJob
        from vocfleet.db.session import session_scope
        from vocfleet.db.states import JobStatus
        from vocfleet.db.workers import worker_records

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
            live = worker_records(s, timedelta(seconds=settings.stale_seconds))
        for queue in ("train", "score"):
            workers.add_metric([queue], sum(queue in r.queues for r in live))
        yield from families.values()
        yield workers
        depth = GaugeMetricFamily("vocfleet_queue_messages", "Messages waiting in the broker, by queue", labels=["queue"])
        for queue in ("train", "score") if executor(settings).fleet else ():
            if (n := broker_queue_length(queue)) is not None:  # None: the broker cannot be asked now
                depth.add_metric([queue], n)
        yield depth


def serve_fleet() -> int | None:
    """The scheduler's metrics: the fleet collector, then :func:`serve`."""
    REGISTRY.register(FleetCollector())
    return serve(what="scheduler")
