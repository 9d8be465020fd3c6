"""Celery configuration, loaded by name from ``vocfleet.worker.celery_app``."""

from kombu import Queue

from vocfleet.db.settings import get_settings

_settings = get_settings()

broker_url = _settings.broker_url or "memory://"
broker_connection_retry_on_startup = True
# Redis redelivers an unacknowledged message after this long; long jobs are protected from a
# second run by the database claim, not by this number.
broker_transport_options = {"visibility_timeout": int(_settings.visibility_timeout)}
# A broker restart must not kill the job in hand: it keeps running and reports to the database.
worker_cancel_long_running_tasks_on_connection_loss = False
task_publish_retry_policy = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}
task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
task_ignore_result = True  # results live in our tables
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# A fresh child per 200 tasks guards against leaks; each new child reloads (and on a GPU recompiles)
# the detectors, so a score worker must not restart every few shards.
worker_max_tasks_per_child = 200
task_queues = (Queue("train"), Queue("score"))
task_default_queue = "train"
task_routes = {
    "vocfleet.train_detector": {"queue": "train"},
    "vocfleet.score_folder": {"queue": "score"},
    "vocfleet.score_shard": {"queue": "score"},
}
task_soft_time_limit = 24 * 3600
task_time_limit = 24 * 3600 + 600
worker_hijack_root_logger = False
