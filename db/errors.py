"""A database failure as one line for a person, without importing a driver that raised nothing (light, like ``states.py``)."""

from __future__ import annotations

import sys


def raised(exc: BaseException, module: str, name: str) -> bool:
    """``isinstance(exc, module.name)`` without importing ``module``: if it was never imported, it raised nothing."""
    mod = sys.modules.get(module)
    return mod is not None and isinstance(exc, getattr(mod, name))


def database_problem(exc: BaseException, url: str) -> tuple[str, int] | None:
    """(one line, exit code) for a failure of the database at ``url``; None if ``exc`` is not one.

    SQLAlchemy's errors, or the driver's own where ``status`` and ``runs`` read without SQLAlchemy
    (``listing.py``); a full disk and a read-only file are named as such.
    """
    if any(raised(exc, module, "OperationalError") for module in ("sqlalchemy.exc", "psycopg", "sqlite3")):
        reason = " ".join(str(getattr(exc, "orig", exc)).split())
        if "disk is full" in reason or "No space left" in reason or "disk I/O error" in reason and _full(url):
            return f"the disk holding the database {url!r} is full: free space there, then run the command again", 1
        if "readonly database" in reason or "read-only" in reason:
            return f"the database {url!r} is read-only here ({reason}): use an account or mount that can write it", 1
        return f"cannot use the database {url!r} ({reason}): check VOCFLEET_DATABASE_URL", 1
    if any(raised(exc, module, "DatabaseError") for module in ("sqlalchemy.exc", "sqlite3")) and "not a database" in str(exc):
        return f"VOCFLEET_DATABASE_URL={url!r} names a file that is not a SQLite database: point it at vocfleet's database file", 2
    if raised(exc, "sqlalchemy.exc", "ArgumentError"):  # includes NoSuchModuleError: an unknown scheme
        return f"VOCFLEET_DATABASE_URL={url!r} is not a database URL ({exc}): use sqlite:///PATH or postgresql+psycopg://...", 2
    return None


def _full(url: str) -> bool:
    """The SQLite file's folder has under 1 MiB free: SQLite reports a log it cannot grow as an I/O error, not a full disk."""
    import shutil

    from .settings import sqlite_file

    path = sqlite_file(url)
    try:
        return path is not None and shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        return False
