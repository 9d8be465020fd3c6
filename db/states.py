"""What the ORM, the light listings (``db/listing.py``) and the CLI's options share without SQLAlchemy: job states, UTC time, schema revision, sorts."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from vocfleet.model import utf8

# The newest Alembic revision (tests/test_db.py checks it against the migrations folder): a
# database already there is used without importing Alembic, which costs a CLI command ~0.5 s.
SCHEMA_HEAD = "0015"

# How `vocfleet results` orders rows (db/results.py; the CLI's --sort choices, offered without importing SQLAlchemy).
SORTS = ("image", "probability", "margin")


IN_BOUND = 5000  # values per SQL IN list: under every driver's bound-parameter limit
MAX_ID = 2**31 - 1  # the largest id an INTEGER column holds: a larger one is refused in one line, never sent to the driver


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


_TAG_KEY = re.compile(r"[A-Za-z0-9_.-]{1,50}")
MAX_NAME = 100


@dataclass(frozen=True)
class Labels:
    """What a person calls a training job or a scoring run, to find it again (``--name``, ``--tag KEY=VALUE``, ``--note``)."""

    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    note: str | None = None

    @classmethod
    def parse(cls, name: str | None, tags: tuple[str, ...] | list[str], note: str | None) -> Labels:
        """From the command line's values.

        Raises:
            ValueError: one line naming the bad value and what it takes.
        """
        if name is not None and not 0 < len(name.strip()) <= MAX_NAME:
            raise ValueError(f"--name {name!r}: 1 to {MAX_NAME} characters")
        plain_text("--name", name)
        plain_text("--note", note, lines=True)
        return cls(name.strip() if name else None, dict(parse_tag(t) for t in tags), note.strip() if note and note.strip() else None)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain_text(option: str, text: str | None, *, lines: bool = False) -> str | None:
    """``text`` as given, if it is UTF-8 without control characters (``lines``: newlines and tabs allowed).

    Stored raw, such text breaks every page, table and CSV that shows it (a byte the terminal could
    not decode arrives as a lone surrogate, which no encoder writes).

    Raises:
        ValueError: one line naming the option and what to change.
    """
    if text is None:
        return None
    utf8(option, text)
    if (_CONTROL_BUT_LINES if lines else _CONTROL).search(text):
        raise ValueError(f"{option} {text!r}: holds a control character; remove it")
    return text


def parse_tag(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as (key, value). Raises ValueError naming the bad tag."""
    plain_text("--tag", text)
    key, sep, value = text.partition("=")
    if not sep or not _TAG_KEY.fullmatch(key) or len(value) > MAX_NAME:
        raise ValueError(f"--tag {text!r}: use KEY=VALUE, the key of letters, digits, '_', '.' or '-' (up to 50), the value up to {MAX_NAME} characters")
    return key, value


_AGO = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a date or time (2026-11-30, 2026-11-30T08:00, UTC unless it says) or an age (90m, 12h, 7d, 2w).

    Raises:
        ValueError: one line naming the bad value and the forms it takes.
    """
    if m := _AGO.fullmatch(text.strip()):
        try:
            return (now or utcnow()) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        except OverflowError:
            raise ValueError(f"--since {text!r}: further back than the calendar goes; give a smaller age or a date") from None
    try:
        return as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise ValueError(f"--since {text!r}: a date (2026-11-30), a time (2026-11-30T08:00) or an age (90m, 12h, 7d, 2w)") from None
