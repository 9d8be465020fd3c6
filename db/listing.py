"""What `status` and `runs` show (jobs, runs, the queue's time left), read through the database driver alone.

Importing SQLAlchemy costs 0.4-0.5 s on a 2-core machine, the whole budget of these two commands
(issue 12); sqlite3 or psycopg alone answer in about 0.2 s. A database whose schema is missing or
old, or a URL for another driver, goes through SQLAlchemy (which creates or upgrades the schema)
and its raw connection runs the same SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from .settings import get_settings, read_only_sqlite
from .states import SCHEMA_HEAD, UNFINISHED, as_utc


def _driver_connection(url: str) -> Any | None:
    """A DBAPI connection for ``sqlite:///PATH`` or ``postgresql+psycopg://...``; None for any other URL or a file not there."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    if scheme in ("sqlite", "sqlite+pysqlite"):
        path = rest[1:]  # sqlite:///relative or sqlite:////absolute
        if not path or path == ":memory:" or "?" in path or not Path(path).is_file():
            return None
        import sqlite3

        if (read_only := read_only_sqlite(Path(path))) is not None:
            return sqlite3.connect(read_only, uri=True)
        return sqlite3.connect(path, timeout=30)  # the timeout waits out a job's short write locks
    if scheme == "postgresql+psycopg":
        import psycopg

        return psycopg.connect(f"postgresql://{rest}")
    return None


def _current(conn: Any) -> bool:
    """Whether the database's schema is at SCHEMA_HEAD (False without one)."""
    cur = conn.cursor()
    try:
        cur.execute("SELECT version_num FROM alembic_version")
        row = cur.fetchone()
    except conn.Error:  # no such table yet (PEP 249: each driver's Error is on its connections)
        conn.rollback()
        return False
    return row is not None and row[0] == SCHEMA_HEAD


@contextmanager
def read_connection(url: str | None = None) -> Iterator[Any]:
    """A DBAPI connection to the configured database with its schema current, for read-only SQL."""
    url = url or get_settings().database_url
    conn = _driver_connection(url)
    if conn is not None and not _current(conn):
        conn.close()
        conn = None
    if conn is None:
        from .session import ensure_schema, get_engine

        ensure_schema(url)
        conn = get_engine(url).raw_connection()
    with closing(conn):
        yield conn


def _rows(conn: Any, sql: str) -> Iterator[dict[str, Any]]:
    cur = conn.cursor()
    cur.execute(sql)
    names = [d[0] for d in cur.description]
    for values in cur.fetchall():
        yield dict(zip(names, values, strict=True))


def _time(value: datetime | str | None) -> datetime | None:
    """SQLite stores times as ISO text; PostgreSQL hands back datetimes."""
    return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def _json(value: Any) -> Any:
    """SQLite stores JSON as text; psycopg decodes JSONB itself."""
    return json.loads(value) if isinstance(value, str) else value


def _first_line(text: str | None) -> str | None:
    return text.splitlines()[0] if text else None


def status_rows(conn: Any) -> list[dict[str, Any]]:
    """One row per training job: status, epochs done of total, latest validation AP, worker, first line of the error."""
    sql = "SELECT id, voc_class, status, epochs_done, config, latest_val_ap, attempts, worker_host, heartbeat_at, error FROM train_jobs ORDER BY id"
    rows = []
    for r in _rows(conn, sql):
        epochs = int(_json(r["config"]).get("epochs", 0))  # TrainJob.total_epochs
        rows.append(
            {
                "job": r["id"],
                "class": r["voc_class"],
                "status": r["status"],
                "epoch": f"{r['epochs_done']}/{epochs}",
                "epochs_done": r["epochs_done"],
                "epochs": epochs,
                "val_ap": r["latest_val_ap"],
                "attempts": r["attempts"],
                "worker": r["worker_host"],
                "heartbeat": _time(r["heartbeat_at"]),
                "error": _first_line(r["error"]),
            }
        )
    return rows


def run_rows(conn: Any) -> list[dict[str, Any]]:
    """One row per scoring run with its counts."""
    sql = "SELECT id, status, folders, classes, total_files, scored_images, error_files, created_at, finished_at, error FROM score_runs ORDER BY id"
    return [
        {
            "run": r["id"],
            "status": r["status"],
            "folders": " ".join(_json(r["folders"])),
            "classes": ",".join(_json(r["classes"])),
            "files": r["total_files"],
            "scored": r["scored_images"],
            "errors": r["error_files"],
            "created": _time(r["created_at"]),
            "finished": _time(r["finished_at"]),
            "error": _first_line(r["error"]),
        }
        for r in _rows(conn, sql)
    ]


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
    for r in _rows(conn, sql):
        if r["job_id"] not in sizes:
            sizes[r["job_id"]] = int(_json(r["config"]).get("image_size", 0))
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
            wall = (_time(r["created_at"]) - _time(previous["created_at"])).total_seconds() if consecutive else None
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
    left = [(_json(r["config"]), r["epochs_done"]) for r in _rows(conn, f"SELECT config, epochs_done FROM train_jobs WHERE status IN ({unfinished})")]
    sizes = {int(cfg.get("image_size", 0)) for cfg, _ in left}
    if not sizes <= set(per_epoch):
        return len(left), None
    return len(left), sum(max(int(cfg.get("epochs", 0)) - done, 0) * per_epoch[int(cfg.get("image_size", 0))] for cfg, done in left)


def training_rates(conn: Any) -> dict[int, tuple[float, int]]:
    """Median training images per second per image size, and how many of the latest epochs it comes from."""
    return _median_by_size((r["size"], float(r["images_per_s"])) for r in _recent_epochs(conn))
