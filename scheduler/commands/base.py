"""What every command shares: the error-to-one-line group, the database session, common options."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from vocfleet.db.settings import SettingsError, get_settings
from vocfleet.model import ConfigError

from ..output import FORMATS

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def _raised(exc: BaseException, module: str, name: str) -> bool:
    """``isinstance(exc, module.name)`` without importing ``module``: if it was never imported, it raised nothing."""
    mod = sys.modules.get(module)
    return mod is not None and isinstance(exc, getattr(mod, name))


class VocfleetGroup(click.Group):
    """Turns bad input into one line on stderr and exit code 2 (connection problems: exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, SettingsError) as exc:
            click.echo(f"vocfleet: error: {exc}", err=True)
            ctx.exit(2)
        except Exception as exc:
            if _raised(exc, "vocfleet.model.download", "DownloadError"):
                click.echo(f"vocfleet: error: {exc}", err=True)
                ctx.exit(1)
            if _raised(exc, "sqlalchemy.exc", "OperationalError"):
                url = get_settings().database_url
                click.echo(f"vocfleet: error: cannot use the database {url!r} ({exc.orig}): check VOCFLEET_DATABASE_URL", err=True)
                ctx.exit(1)
            raise


@contextmanager
def database() -> Iterator[Session]:
    """One short transaction on the configured database, its schema created or upgraded first."""
    from vocfleet.db.session import ensure_schema, session_scope

    ensure_schema()
    with session_scope() as s:
        yield s


def format_option(f):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format.")(f)


def stale_window(seconds: float | None) -> timedelta:
    """How long without a heartbeat before running work is taken back (default: VOCFLEET_STALE_SECONDS)."""
    return timedelta(seconds=seconds if seconds is not None else get_settings().stale_seconds)


def stale_option(f):
    return click.option(
        "--stale-after", type=float, default=None, help="Seconds without heartbeat before running work is taken back [default: VOCFLEET_STALE_SECONDS]."
    )(f)
