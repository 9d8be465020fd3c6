"""What the ORM and the light listings (``db/listing.py``) share, without SQLAlchemy: job states, UTC time, the schema revision."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

# The newest Alembic revision (tests/test_db.py checks it against the migrations folder): a
# database already there is used without importing Alembic, which costs a CLI command ~0.5 s.
SCHEMA_HEAD = "0007"


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt
