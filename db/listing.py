"""What `status` and `runs` show (job and run records), read through the database driver alone (the queue's time left: ``estimates.py``).

Importing SQLAlchemy costs 0.4-0.5 s on a 2-core machine, the whole budget of these two commands;
sqlite3 or psycopg alone answer in about 0.2 s. A database whose schema is missing or old, or a URL
for another driver, goes through SQLAlchemy (which upgrades the schema, and refuses a database
with none of vocfleet's tables) and its raw connection runs the same SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from .records import DetectorRecord, JobRecord, RunRecord
from .settings import SettingsError, get_settings, read_only_sqlite
from .states import SCHEMA_HEAD, JobStatus, as_utc, utcnow

R = TypeVar("R", JobRecord, RunRecord, DetectorRecord)


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

        try:
            return psycopg.connect(f"postgresql://{rest}")
        except psycopg.ProgrammingError as exc:  # the URL itself cannot be parsed (connection failures are OperationalError)
            said = " ".join(str(exc).split())
            raise SettingsError(f"VOCFLEET_DATABASE_URL={url!r} is not a database URL ({said}): use postgresql+psycopg://USER@HOST:PORT/DB") from None
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

        ensure_schema(url, create=False)  # a listing never makes tables in a database that is not vocfleet's
        conn = get_engine(url).raw_connection()
    with closing(conn):
        yield conn


def fetch_rows(conn: Any, sql: str) -> Iterator[dict[str, Any]]:
    cur = conn.cursor()
    cur.execute(sql)
    names = [d[0] for d in cur.description]
    for values in cur.fetchall():
        yield dict(zip(names, values, strict=True))


def timestamp(value: datetime | str | None) -> datetime | None:
    """SQLite stores times as ISO text; PostgreSQL hands back datetimes."""
    return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def json_value(value: Any) -> Any:
    """SQLite stores JSON as text; psycopg decodes JSONB itself."""
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class ListFilter:
    """Which rows a listing shows (``--status``, ``--class``, ``--tag``, ``--since``, ``--limit``), newest first or oldest first.

    A listing reads its rows (jobs and runs number in the thousands, not millions) and filters
    them here, the same way on SQLite and PostgreSQL.
    """

    statuses: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    since: datetime | None = None
    limit: int | None = None
    newest_first: bool = False

    def apply(self, records: Sequence[R], *, classes: str = "voc_class") -> tuple[list[R], int]:
        """(the records shown, how many more matched past the limit). ``classes``: the attribute holding a record's class or list of classes."""

        def keep(r: R) -> bool:
            if self.statuses and r.status not in self.statuses:
                return False
            value = getattr(r, classes)
            if self.classes and not set(value if isinstance(value, list) else [value]) & set(self.classes):
                return False
            if any(r.tags.get(k) != v for k, v in self.tags.items()):
                return False
            return self.since is None or (r.created is not None and r.created >= self.since)

        kept = [r for r in records if keep(r)]
        if self.newest_first:
            oldest = datetime.min.replace(tzinfo=UTC)
            kept.sort(key=lambda r: r.created or oldest, reverse=True)
        if self.limit is None or len(kept) <= self.limit:
            return kept, 0
        return kept[: self.limit], len(kept) - self.limit


def tag_text(tags: dict[str, str] | None) -> str:
    """Tags as a table shows them: ``k=v,k2=v2``."""
    return ",".join(f"{k}={v}" for k, v in sorted((tags or {}).items()))


def _first_line(text: str | None) -> str | None:
    return text.splitlines()[0] if text else None


def job_records(conn: Any) -> list[JobRecord]:
    """Every training job, oldest first: status, epochs done of total, latest validation AP, worker, first line of the error."""
    cols = "id, voc_class, status, epochs_done, config, latest_val_ap, attempts, worker_host, heartbeat_at, error, created_at, name, tags, note, start_job_id"
    sql = (
        f"SELECT {', '.join('t.' + c.strip() for c in cols.split(','))}, s.status AS start_status "
        "FROM train_jobs t LEFT JOIN train_jobs s ON s.id = t.start_job_id ORDER BY t.id"
    )
    records = []
    for r in fetch_rows(conn, sql):
        error = _first_line(r["error"])
        if r["status"] == "queued" and r["start_job_id"] is not None and r["start_status"] != "succeeded":
            error = f"waits for start job {r['start_job_id']} ({r['start_status']})"
        records.append(
            JobRecord(
                job_id=r["id"],
                voc_class=r["voc_class"],
                status=JobStatus(r["status"]),
                epochs_done=r["epochs_done"],
                epochs=int(json_value(r["config"]).get("epochs", 0)),  # TrainJob.total_epochs
                val_ap=r["latest_val_ap"],
                attempts=r["attempts"],
                worker=r["worker_host"],
                heartbeat=timestamp(r["heartbeat_at"]),
                error=error,
                created=timestamp(r["created_at"]),
                name=r["name"],
                tags=json_value(r["tags"]) or {},
                note=r["note"],
                start_job_id=r["start_job_id"],
            )
        )
    return records


def run_records(conn: Any) -> list[RunRecord]:
    """Every scoring run with its counts, oldest first."""
    sql = (
        "SELECT id, status, folders, classes, total_files, scored_images, error_files, created_at, finished_at, error, name, tags, note, reused "
        "FROM score_runs ORDER BY id"
    )
    return [
        RunRecord(
            run_id=r["id"],
            status=JobStatus(r["status"]),
            folders=list(json_value(r["folders"])),
            classes=list(json_value(r["classes"])),
            files=r["total_files"],
            scored=r["scored_images"],
            errors=r["error_files"],
            created=timestamp(r["created_at"]),
            finished=timestamp(r["finished_at"]),
            error=_first_line(r["error"]),
            reused=r["reused"],
            name=r["name"],
            tags=json_value(r["tags"]) or {},
            note=r["note"],
        )
        for r in fetch_rows(conn, sql)
    ]


QUEUE_TABLES = {"train": ("train_jobs",), "score": ("score_runs", "score_shards")}


def idle_queues(conn: Any, stale_after: timedelta) -> dict[str, int]:
    """Queues with work waiting and no live worker consuming them ({queue: rows waiting}), read on the bare driver.

    A worker is live while it has not said it stopped and its heartbeat is younger than ``stale_after``.
    """
    oldest = utcnow() - stale_after
    live: set[str] = set()
    for r in fetch_rows(conn, "SELECT queues, heartbeat_at, stopped_at FROM workers"):
        beat = timestamp(r["heartbeat_at"])
        if r["stopped_at"] is None and beat is not None and beat >= oldest:
            live.update(r["queues"].split(","))
    waiting = {}
    for queue, tables in QUEUE_TABLES.items():
        if queue in live:
            continue
        n = sum(next(fetch_rows(conn, f"SELECT count(*) AS n FROM {t} WHERE status = 'queued'"))["n"] for t in tables)
        if n:
            waiting[queue] = n
    return waiting
