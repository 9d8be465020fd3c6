"""What the ORM, the light listings (``db/listing.py``) and the CLI's options share without SQLAlchemy: job states, UTC time, schema revision, sorts."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

# The newest Alembic revision (tests/test_db.py checks it against the migrations folder): a
# database already there is used without importing Alembic, which costs a CLI command ~0.5 s.
SCHEMA_HEAD = "0010"

# How `vocfleet results` orders rows (db/results.py; the CLI's --sort choices, offered without importing SQLAlchemy).
SORTS = ("image", "probability", "margin")


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


# Work not yet ended: waiting for a worker, or held by one.
UNFINISHED = (JobStatus.queued, JobStatus.running)

# When a finished job's detector becomes its class's active one (submit --promote).
PROMOTE = ("if-better", "always", "never")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt
