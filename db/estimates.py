"""How long the queue takes: epoch times and training rates from the latest recorded epochs, on the bare driver like ``listing.py``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .listing import fetch_rows, json_value, timestamp
from .states import UNFINISHED

RECENT_EPOCHS = 2000  # the estimates read only the latest epochs: bounded time, and today's machines


def _recent_epochs(conn: Any) -> list[dict[str, Any]]:
    """The latest RECENT_EPOCHS epoch rows in (job, epoch) order, each with its job's ``size`` (image size).

    Each job's JSON config is parsed once, not once per epoch.
    """
    sql = (
        "SELECT r.job_id, r.epoch, r.seconds, r.images_per_s, r.created_at, j.config FROM "
        f"(SELECT job_id, epoch, seconds, images_per_s, created_at FROM epoch_metrics ORDER BY job_id DESC, epoch DESC LIMIT {RECENT_EPOCHS}) r "
        "JOIN train_jobs j ON j.id = r.job_id ORDER BY r.job_id, r.epoch"
    )
    sizes: dict[int, int] = {}
    rows = []
    for r in fetch_rows(conn, sql):
        if r["job_id"] not in sizes:
            sizes[r["job_id"]] = int(json_value(r["config"]).get("image_size", 0))
        r["size"] = sizes[r["job_id"]]
        rows.append(r)
    return rows


def _median_by_size(pairs: Iterable[tuple[int, float]]) -> dict[int, tuple[float, int]]:
    """Median and count of the values of each image size."""
    by_size: dict[int, list[float]] = {}
    for size, value in pairs:
        by_size.setdefault(size, []).append(value)
    return {size: (sorted(v)[len(v) // 2], len(v)) for size, v in by_size.items()}


def epoch_seconds(conn: Any) -> dict[int, float]:
    """Median wall time of one epoch per image size, from the latest epochs recorded.

    The time between a job's consecutive epochs (training, validation and checkpoint); a job with a
    single epoch counts its training time alone.
    """

    def walls() -> Iterator[tuple[int, float]]:
        previous: dict[str, Any] | None = None
        for r in _recent_epochs(conn):
            consecutive = previous is not None and previous["job_id"] == r["job_id"] and previous["epoch"] == r["epoch"] - 1
            wall = (timestamp(r["created_at"]) - timestamp(previous["created_at"])).total_seconds() if consecutive else None
            yield r["size"], wall if wall and wall > 0 else float(r["seconds"])
            previous = r

    return {size: median for size, (median, _) in _median_by_size(walls()).items()}


def queue_left(conn: Any) -> tuple[int, float | None]:
    """Unfinished training jobs, and about how many seconds their remaining epochs take.

    Each remaining epoch costs the median recorded epoch at its job's image size; None when a job's
    size has no recorded epoch yet.
    """
    per_epoch = epoch_seconds(conn)
    unfinished = ", ".join(f"'{st}'" for st in UNFINISHED)
    left = [(json_value(r["config"]), r["epochs_done"]) for r in fetch_rows(conn, f"SELECT config, epochs_done FROM train_jobs WHERE status IN ({unfinished})")]
    sizes = {int(cfg.get("image_size", 0)) for cfg, _ in left}
    if not sizes <= set(per_epoch):
        return len(left), None
    return len(left), sum(max(int(cfg.get("epochs", 0)) - done, 0) * per_epoch[int(cfg.get("image_size", 0))] for cfg, done in left)


def training_rates(conn: Any) -> dict[int, tuple[float, int]]:
    """Median training images per second per image size, and how many of the latest epochs it comes from."""
    return _median_by_size((r["size"], float(r["images_per_s"])) for r in _recent_epochs(conn))
