"""Engines and sessions. The caller owns the session: ``with session_scope() as s: ...``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from .settings import get_settings
from .states import SCHEMA_HEAD

log = logging.getLogger(__name__)

_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}
_current: set[str] = set()  # URLs whose schema this process has seen at SCHEMA_HEAD
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the CLI read while a job writes; busy_timeout waits out short write locks.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str | None = None) -> Engine:
    """Return the process-wide engine for ``url`` (default: the configured database).

    Args:
        url: SQLAlchemy URL; ``None`` reads ``VOCFLEET_DATABASE_URL``.
    Returns:
        A cached :class:`Engine`.
    """
    url = url or get_settings().database_url
    engine = _engines.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            # pre_ping: a connection dropped by a database restart is replaced, not handed out.
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        _engines[url] = engine
    return engine


def dispose_engines() -> None:
    """Drop pooled connections (after a fork, a connection must not be shared with the parent)."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _makers.clear()
    _current.clear()


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().database_url
    maker = _makers.get(url)
    if maker is None:
        maker = sessionmaker(get_engine(url), expire_on_commit=False)
        _makers[url] = maker
    return maker


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One short transaction: commits on success, rolls back on error."""
    with session_factory(url).begin() as session:
        yield session


def upgrade_database(url: str | None = None) -> None:
    """Create or upgrade the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection_url"] = url or get_settings().database_url
    engine = get_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as conn:
        if sqlite:
            # SQLite migrations copy a table and drop the old one: with foreign keys on, that drop
            # would cascade and delete the rows that refer to it (epoch metrics, scores). The
            # pragma only takes effect outside a transaction, so before the first write.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    if sqlite:
        engine.dispose()  # the pooled connection has foreign keys off: new ones get the pragmas again


def schema_revision(url: str | None = None) -> str | None:
    """The database's Alembic revision, or None if it has no schema yet."""
    try:
        with get_engine(url).connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except ProgrammingError:  # PostgreSQL: no such table
        return None
    except OperationalError as exc:  # SQLite says "no such table" this way; anything else is real
        if "no such table" in str(exc):
            return None
        raise


def ensure_schema(url: str | None = None) -> None:
    """Create or upgrade the schema unless it is already current (checked once per process and URL)."""
    url = url or get_settings().database_url
    if url in _current:
        return
    if schema_revision(url) != SCHEMA_HEAD:
        upgrade_database(url)
    _current.add(url)
