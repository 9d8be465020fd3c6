"""Engines and sessions. The caller owns the session: ``with session_scope() as s: ...``."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from vocfleet.model import VocfleetError

from .settings import SettingsError, get_settings, read_only_sqlite, shown, sqlite_file
from .states import SCHEMA_HEAD

log = logging.getLogger(__name__)
DatabaseError = SQLAlchemyError  # what a command that outlives database outages catches (the scheduler's loop)

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


class SchemaMismatch(VocfleetError):
    """The database's schema and this code's do not match, and this process may not change it: one line says what to run."""


class DatabaseGone(VocfleetError):
    """The SQLite file was deleted or replaced while this process used it, or is missing beside earlier work: one line."""


_sqlite_files: dict[str, tuple[int, int]] = {}  # SQLite URL -> (device, inode) of the file this process opened


def _watch_sqlite_file(engine: Engine, url: str, path: Path) -> None:
    """Every transaction first checks that the file is still the one this process opened (a stat: microseconds).

    Without it, a database deleted under a running job takes its writes into the unlinked file,
    the job reports success, and the next command starts an empty database.
    """

    def check(_conn) -> None:
        try:
            st = path.stat()
            now = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            now = None
        first = _sqlite_files.setdefault(url, now) if now is not None else _sqlite_files.get(url)
        if first is not None and now != first:
            what = "deleted" if now is None else "replaced by another file"
            raise DatabaseGone(f"the database {path} was {what} while this command ran: what it did since is lost; restore the file from a backup")

    event.listen(engine, "begin", check)


def _sqlite_read_only_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.execute("PRAGMA foreign_keys=ON")


def check_default_database() -> None:
    """Refuse to start an empty default database where earlier jobs left detectors (a deleted or misplaced ``vocfleet.db``).

    Raises:
        DatabaseGone: ``VOCFLEET_DATABASE_URL`` is unset, ``<data dir>/vocfleet.db`` is missing and
            ``<data dir>/artifacts/jobs`` holds job folders.
    """
    settings = get_settings()
    if not settings.database_is_default:
        return
    db, jobs = settings.data_dir / "vocfleet.db", settings.data_dir / "artifacts" / "jobs"
    if not db.exists() and jobs.is_dir() and any(jobs.iterdir()):
        raise DatabaseGone(
            f"no database at {db}, but {jobs} holds earlier jobs' detectors: restore vocfleet.db from a backup, "
            "or run 'vocfleet db upgrade' to start a new, empty database beside them"
        )


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
            path = sqlite_file(url)
            if path is not None and path.parent == get_settings().data_dir:
                path.parent.mkdir(parents=True, exist_ok=True)  # the data folder is ours to make; any other folder must exist
            read_only = read_only_sqlite(path) if path is not None else None
            if read_only is not None:  # status, runs, results and detectors still answer; writes fail in one line
                import sqlite3

                engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(read_only, uri=True, check_same_thread=False))
                event.listen(engine, "connect", _sqlite_read_only_pragmas)
            else:
                engine = create_engine(url, connect_args={"timeout": 30})
                event.listen(engine, "connect", _sqlite_pragmas)
            if path is not None:
                _watch_sqlite_file(engine, url, path)
        else:
            # pre_ping: a connection dropped by a database restart is replaced, not handed out.
            try:
                # JIT off: every query here is an index range of at most thousands of rows, where PostgreSQL's
                # JIT (on by default when a plan's cost estimate is high, as a LIMIT over a 20M-row index is)
                # spends 100-500 ms compiling for a query that then runs in milliseconds.
                pg = {"connect_args": {"options": "-c jit=off"}} if url.startswith("postgresql") else {}
                engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, **pg)
            except ImportError as exc:  # mysql://, or postgresql:// with a driver that is not installed
                raise SettingsError(
                    f"VOCFLEET_DATABASE_URL={url!r}: its driver {exc.name or exc} is not installed; use sqlite:///PATH or postgresql+psycopg://..."
                ) from None
        _engines[url] = engine
    return engine


def dispose_engines() -> None:
    """Drop pooled connections (after a fork, a connection must not be shared with the parent)."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _forget()


def _forget() -> None:
    """No engine, session maker or schema check of this process is kept: the next use starts afresh."""
    _engines.clear()
    _sqlite_files.clear()
    _makers.clear()
    _current.clear()


def close_databases() -> None:
    """Fold SQLite's write-ahead log into the database file and close every pooled connection.

    Run as each command exits: the ``.db`` file alone then holds everything (a plain copy, a
    read-only mount, ``gc`` reading it elsewhere), and no ``-wal`` or ``-shm`` is left beside it.
    A file that was deleted or replaced meanwhile is not touched (connecting would create an empty
    one); closing still lets SQLite drop the log that belonged to it.
    """
    for url, engine in list(_engines.items()):
        path = sqlite_file(url)
        try:
            st = path.stat() if path is not None else None
            ours = st is not None and (st.st_dev, st.st_ino) == _sqlite_files.get(url) and not read_only_sqlite(path)
            if ours:
                with engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA busy_timeout=2000")  # another process mid-write: wait briefly, not the usual 30 s
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OSError, SQLAlchemyError, DatabaseGone) as exc:  # another process mid-write: it folds the log when it ends
            log.debug("no checkpoint of %s: %s", path, exc)
        engine.dispose()
    _forget()


def _copy_sqlite(src: Path, dst: Path) -> dict[str, int]:
    """SQLite's online backup from ``src`` to ``dst`` (a consistent snapshot, the log's pages included),
    left in rollback-journal mode so the copy is one self-contained file; checked, then counted."""
    import sqlite3

    source = sqlite3.connect(src, timeout=30)
    target = sqlite3.connect(dst, timeout=30)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
        problem = target.execute("PRAGMA integrity_check").fetchone()[0]
        if problem != "ok":
            raise DatabaseGone(f"the copy of {src} fails SQLite's integrity check ({problem}): the source itself is damaged")
        tables = {"jobs": "train_jobs", "detectors": "detectors", "runs": "score_runs"}
        present = {r[0] for r in target.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {what: target.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for what, table in tables.items() if table in present}  # names above
    finally:
        target.close()
        source.close()


def backup_sqlite(src: Path, out: Path) -> dict[str, int]:
    """Back up the SQLite database ``src`` to ``out`` (checked by ``output_path`` first), written beside and renamed.

    Returns:
        Jobs, detectors and runs in the copy.
    """
    from vocfleet.model.files import replacing

    with replacing(out, then="back up again") as tmp:
        return _copy_sqlite(src, tmp)


def restore_sqlite(backup: Path, db: Path) -> dict[str, int]:
    """Put ``backup`` back as the database ``db`` through SQLite's backup API: every page is written
    through ``db``'s connection, so a log left beside it (a deleted file's) is read first and then
    overwritten, never replayed over the restored pages as after a plain copy.

    Raises:
        DatabaseGone: ``backup`` is not a whole vocfleet database.
    """
    import sqlite3

    try:
        with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as conn:
            problem = conn.execute("PRAGMA integrity_check").fetchone()[0]
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseGone(f"{backup} is not a vocfleet database ({exc}): give the file 'vocfleet db backup' wrote") from None
    if problem != "ok" or revision is None:
        raise DatabaseGone(f"{backup} is not a whole vocfleet database ({problem if problem != 'ok' else 'no schema'}): give another backup")
    counts = _copy_sqlite(backup, db)
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    return counts


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
    """Create or upgrade the schema to the newest Alembic revision, all or nothing.

    PostgreSQL runs DDL inside the transaction. SQLite can too, but Python's sqlite3 driver
    commits before each DDL statement unless the transaction is begun by hand: the upgrade runs
    on its own connection that does so, so a kill or power loss part-way leaves the database as it
    was before the upgrade, never half-migrated.
    """
    url = url or get_settings().database_url
    engine = get_engine(url)
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            _migrate_to_head(conn, url)
        return
    # A connection of its own: the driver's implicit transactions off, one BEGIN IMMEDIATE around
    # every migration. Foreign keys off first (the pragma is ignored inside a transaction): SQLite
    # migrations copy a table and drop the old one, and with them on the drop would cascade.
    upgrader = create_engine(url, connect_args={"timeout": 30, "isolation_level": None}, poolclass=NullPool)
    try:
        with upgrader.connect() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                _migrate_to_head(conn, url)
                conn.exec_driver_sql("COMMIT")
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
    finally:
        upgrader.dispose()
    engine.dispose()  # pooled connections may hold the old schema's statements


@functools.cache
def migrations():  # alembic's ScriptDirectory, imported only here
    """The migration scripts, loaded once per process: Alembic's own commands import every script
    again on each call (twice per upgrade with the compatibility walk), most of the cost of making
    a new database."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def _migrate_to_head(conn, url: str) -> None:
    """Alembic's ``upgrade head`` on ``conn`` (what ``alembic.command.upgrade`` does, with the scripts
    loaded once), then the oldest code that may run on the result recorded beside it."""
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext

    script = migrations()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes.update(connection=conn, connection_url=url)
    # The step alembic.command.upgrade itself takes (a private method: alembic is held below 2 in pyproject.toml).
    with EnvironmentContext(cfg, script, fn=lambda rev, _context: script._upgrade_revs("head", rev), destination_rev="head"):
        script.run_env()
    conn.execute(text("DELETE FROM schema_compat"))
    conn.execute(text("INSERT INTO schema_compat (oldest_code) VALUES (:r)"), {"r": oldest_compatible()})


def oldest_compatible() -> str:
    """The oldest revision whose code can run on a schema at head: down from head past each migration marked ``older_code_ok``."""
    script = migrations()
    rev = script.get_revision("head")
    while getattr(rev.module, "older_code_ok", False) and rev.down_revision:
        rev = script.get_revision(rev.down_revision)
    return rev.revision


def _oldest_code(url: str) -> str | None:
    """What the database says is the oldest code that may run on it (None: it does not say)."""
    try:
        with get_engine(url).connect() as conn:
            return conn.execute(text("SELECT oldest_code FROM schema_compat")).scalar()
    except SQLAlchemyError:
        return None


def schema_revision(url: str | None = None) -> str | None:
    """The database's Alembic revision, or None if it has no schema yet.

    Raises:
        SchemaMismatch: the revision is not one of vocfleet's (another application's tables).
    """
    try:
        with get_engine(url).connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if revision is not None and not revision.isdigit():
            raise SchemaMismatch(
                f"the database at {shown(url or get_settings().database_url)} holds another application's schema "
                f"(Alembic revision {revision!r}): point VOCFLEET_DATABASE_URL at a database of vocfleet's own"
            )
        return revision
    except ProgrammingError:  # PostgreSQL: no such table
        return None
    except OperationalError as exc:  # SQLite says "no such table" this way; anything else is real
        if "no such table" in str(exc):
            return None
        raise


def ensure_schema(url: str | None = None, *, create: bool = True) -> None:
    """Create or upgrade the schema unless it is already current (checked once per process and URL).

    ``create=False`` (the commands that only read): a database with no vocfleet tables is refused
    in one line rather than given eleven tables, unless it is the embedded default's own file.
    """
    settings = get_settings()
    url = url or settings.database_url
    if url in _current:
        return
    if url == settings.database_url:
        check_default_database()
    path = sqlite_file(url)
    if path is not None and path.parent != settings.data_dir and not path.parent.is_dir():
        raise DatabaseGone(f"VOCFLEET_DATABASE_URL={url!r}: the folder {path.parent} does not exist; create it, or fix the URL")
    revision = schema_revision(url)
    if not create and not (settings.database_is_default and url == settings.database_url) and revision is None:
        raise SchemaMismatch(
            f"the database at {shown(url)} has no vocfleet tables, so there is nothing to read: point VOCFLEET_DATABASE_URL "
            "at vocfleet's database, or run 'vocfleet db upgrade' to make this one vocfleet's"
        )
    if revision is not None and int(revision) > int(SCHEMA_HEAD):
        _check_newer(url, revision)
    elif revision != SCHEMA_HEAD:
        if path is not None and read_only_sqlite(path):
            raise DatabaseGone(f"the database {path} is read-only here and older than this vocfleet: run 'vocfleet db upgrade' where it can be written")
        if revision is not None and path is None:  # a shared database: workers of the old code may be running on it
            raise _needs_upgrade(url, revision)
        upgrade_database(url)  # a new database, or the embedded SQLite file (one user)
    _current.add(url)


def _needs_upgrade(url: str, revision: str | None) -> SchemaMismatch:
    has = "no schema yet" if revision is None else f"schema {revision}"
    return SchemaMismatch(
        f"the database at {shown(url)} has {has} and this vocfleet {_version()} needs {SCHEMA_HEAD}: "
        "run 'vocfleet db upgrade' once for the fleet (docs/fleet.md: upgrading a running fleet)"
    )


def check_schema(url: str | None = None) -> str | None:
    """For processes that never migrate (fleet workers): the schema is current, or newer and still compatible.

    Returns:
        The database's revision.
    Raises:
        SchemaMismatch: no schema, an older one, or a newer one this code cannot run on.
    """
    url = url or get_settings().database_url
    revision = schema_revision(url)
    if revision is not None and int(revision) > int(SCHEMA_HEAD):
        _check_newer(url, revision)
    elif revision != SCHEMA_HEAD:
        raise _needs_upgrade(url, revision)
    return revision


def _version() -> str:
    from vocfleet import __version__

    return __version__


def _check_newer(url: str, revision: str) -> None:
    """A schema newer than this code: allowed if the database says code of SCHEMA_HEAD may still run on it."""
    oldest = _oldest_code(url)
    if oldest is not None and int(oldest) <= int(SCHEMA_HEAD):
        log.warning(
            "the database at %s has schema %s, newer than this vocfleet %s (%s), which may still run on it", shown(url), revision, _version(), SCHEMA_HEAD
        )
        return
    raise SchemaMismatch(
        f"the database at {shown(url)} has schema {revision}, newer than this vocfleet {_version()} can run on "
        f"(it knows up to {SCHEMA_HEAD}{f'; the database needs {oldest} or newer' if oldest else ''}): upgrade vocfleet on this host"
    )
