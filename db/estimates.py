"""How long the queue takes: epoch times and training rates from the latest recorded epochs, on the bare driver like ``listing.py``.

Figures are kept per shape: (network, image size), so a ``tiny`` smoke run never speaks for ResNet-50.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .listing import fetch_rows, json_value, timestamp
from .states import UNFINISHED

RECENT_EPOCHS = 2000  # the estimates read only the latest epochs: bounded time, and today's machines
Shape = tuple[str, int]  # (arch, image size)


def shape(config: dict[str, Any]) -> Shape:
    """A job's (network, image size) from its stored config (jobs from before ``arch`` were ResNet-50)."""
    return str(config.get("arch", "resnet50")), int(config.get("image_size", 0))


def _recent_epochs(conn: Any) -> list[dict[str, Any]]:
    """The latest RECENT_EPOCHS epoch rows in (job, epoch) order, each with its job's ``shape``.

    Each job's JSON config is parsed once, not once per epoch.
    """
    sql = (
        "SELECT r.job_id, r.epoch, r.seconds, r.images_per_s, r.created_at, j.config FROM "
        f"(SELECT job_id, epoch, seconds, images_per_s, created_at FROM epoch_metrics ORDER BY job_id DESC, epoch DESC LIMIT {RECENT_EPOCHS}) r "
        "JOIN train_jobs j ON j.id = r.job_id ORDER BY r.job_id, r.epoch"
    )
    shapes: dict[int, Shape] = {}
    rows = []
    for r in fetch_rows(conn, sql):
        if r["job_id"] not in shapes:
            shapes[r["job_id"]] = shape(json_value(r["config"]))
        r["shape"] = shapes[r["job_id"]]
        rows.append(r)
    return rows


def _median_by_shape(pairs: Iterable[tuple[Shape, float]]) -> dict[Shape, tuple[float, int]]:
    """Median and count of the values of each shape."""
    by_shape: dict[Shape, list[float]] = {}
    for key, value in pairs:
        by_shape.setdefault(key, []).append(value)
    return {key: (sorted(v)[len(v) // 2], len(v)) for key, v in by_shape.items()}


def epoch_seconds(conn: Any) -> dict[Shape, float]:
    """Median wall time of one epoch per shape, from the latest epochs recorded.

    The time between a job's consecutive epochs (training, validation and checkpoint); a job with a
    single epoch counts its training time alone.
    """

    def walls() -> Iterator[tuple[Shape, float]]:
        previous: dict[str, Any] | None = None
        for r in _recent_epochs(conn):
            consecutive = previous is not None and previous["job_id"] == r["job_id"] and previous["epoch"] == r["epoch"] - 1
            wall = (timestamp(r["created_at"]) - timestamp(previous["created_at"])).total_seconds() if consecutive else None
            yield r["shape"], wall if wall and wall > 0 else float(r["seconds"])
            previous = r

    return {key: median for key, (median, _) in _median_by_shape(walls()).items()}


# A job's end after its last epoch (the evaluation split and the threshold: forward passes only,
# plots, the checkpoint's upload) costs about this many of its epochs.
FINISH_EPOCHS = 0.5


def queue_left(conn: Any) -> tuple[int, float | None]:
    """Unfinished training jobs, and about how many seconds their remaining epochs and their final evaluation take.

    Each remaining epoch costs the median recorded epoch of its job's shape, and each job's end
    FINISH_EPOCHS of one (so a job past its last epoch, still evaluating, is not "0 s left");
    None when a job's shape has no recorded epoch yet.
    """
    per_epoch = epoch_seconds(conn)
    unfinished = ", ".join(f"'{st}'" for st in UNFINISHED)
    left = [(json_value(r["config"]), r["epochs_done"]) for r in fetch_rows(conn, f"SELECT config, epochs_done FROM train_jobs WHERE status IN ({unfinished})")]
    if not {shape(cfg) for cfg, _ in left} <= set(per_epoch):
        return len(left), None
    return len(left), sum((max(int(cfg.get("epochs", 0)) - done, 0) + FINISH_EPOCHS) * per_epoch[shape(cfg)] for cfg, done in left)


def training_rates(conn: Any) -> dict[Shape, tuple[float, int]]:
    """Median training images per second per shape, and how many of the latest epochs it comes from."""
    return _median_by_shape((r["shape"], float(r["images_per_s"])) for r in _recent_epochs(conn))
