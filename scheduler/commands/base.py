"""What every command shares: the error-to-one-line group, the database session, common options."""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from vocfleet.db.errors import database_problem
from vocfleet.db.listing import ListFilter, tag_text
from vocfleet.db.records import DetectorRecord, JobRecord, RunRecord, WorkerRecord
from vocfleet.db.settings import MAX_SECONDS, get_settings
from vocfleet.db.states import MAX_ID, Labels, as_utc, parse_since, parse_tag
from vocfleet.model import ConfigError, VocfleetError
from vocfleet.worker.executor import executor

from ..output import FORMATS

if TYPE_CHECKING:
    from vocfleet.db.session import Session


class VocfleetGroup(click.Group):
    """Turns bad input into one line on stderr and exit code 2 (connection problems: exit 1)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Click's own errors (a bad option, a value out of range) as one line too, not a usage block."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = self._main_closing(args, prog_name, complete_var, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else (prog_name or "vocfleet")
            click.echo(f"vocfleet: error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"vocfleet: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("vocfleet: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def _main_closing(self, args, prog_name, complete_var, **extra):
        """The command, then the SQLite file made whole (its log folded in), however the command ended."""
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        finally:
            if "vocfleet.db.session" in sys.modules:  # only a command that opened a database pays for this
                from vocfleet.db.session import close_databases

                close_databases()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VocfleetError as exc:  # every error meant for a person: its line, its exit code
            click.echo(f"vocfleet: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:
            problem = database_problem(exc, get_settings().database_url)
            if problem is not None:
                click.echo(f"vocfleet: error: {problem[0]}", err=True)
                ctx.exit(problem[1])
            if isinstance(exc, OSError) and exc.filename:  # an unwritable data folder, report or download folder
                click.echo(f"vocfleet: error: cannot write {exc.filename}: {exc.strerror}: choose a folder you can write", err=True)
                ctx.exit(1)
            raise


@contextmanager
def database(*, read: bool = False) -> Iterator[Session]:
    """One short transaction on the configured database, its schema created or upgraded first.

    ``read``: the command only reads, and never creates tables in a database that has none of vocfleet's.
    """
    from vocfleet.db.session import ensure_schema, session_scope

    ensure_schema(create=not read)
    with session_scope() as s:
        yield s


def complete_classes(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion for ``--classes``: the class being typed after the last comma."""
    from vocfleet.model import VOC_CLASSES

    done, _, typing = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    return [prefix + c for c in (*VOC_CLASSES, *(() if done else ("all",))) if c.startswith(typing.lower())]


def action_format_option(f):
    """``--format text|json`` for commands that create or change things."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(("text", "json")),
        default="text",
        show_default=True,
        help="json: one JSON object on stdout (the ids and their states) for scripts; messages go to stderr.",
    )(f)


def say(fmt: str, message: str) -> None:
    """A message for people: on stdout, or on stderr when stdout carries JSON."""
    click.echo(message, err=fmt == "json")


def emit(fmt: str, result: dict[str, Any]) -> None:
    """The command's result as one JSON object on stdout (``--format json``)."""
    if fmt == "json":
        click.echo(json.dumps(result, default=str))


def labels_options(f):
    """``--name``, ``--tag KEY=VALUE`` (repeatable) and ``--note``: what a person calls the work, to find it again."""
    f = click.option("--note", default=None, help="A note kept with it, shown by --format json.")(f)
    f = click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag to find it by (repeatable).")(f)
    return click.option("--name", default=None, help="A name to find it by (up to 100 characters).")(f)


def labels_from(name: str | None, tags: tuple[str, ...], note: str | None) -> Labels:
    try:
        return Labels.parse(name, tags, note)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


TERMINAL_LIMIT = 50  # rows a listing shows in a terminal unless --limit says otherwise


def filter_options(statuses: tuple[str, ...]):
    """``--status``, ``--class``, ``--tag``, ``--since``, ``--limit`` for a listing whose rows have these statuses."""

    def add(f):
        most = f"At most this many, newest first [default in a terminal: {TERMINAL_LIMIT}; else all, oldest first]."
        f = click.option("--limit", type=click.IntRange(1), default=None, help=most)(f)
        f = click.option("--since", default=None, metavar="WHEN", help="Only those created since a date, a time or an age (2026-11-30, 12h, 7d).")(f)
        f = click.option("--tag", "tag_filter", multiple=True, metavar="KEY=VALUE", help="Only those with this tag (repeatable: all of them).")(f)
        f = click.option("--class", "class_filter", multiple=True, help="Only this class (repeatable, or comma-separated).", shell_complete=complete_classes)(f)
        return click.option("--status", "status_filter", multiple=True, type=click.Choice(statuses), help="Only this status (repeatable).")(f)

    return add


def list_filter(
    fmt: str, status_filter: tuple[str, ...], class_filter: tuple[str, ...], tag_filter: tuple[str, ...], since: str | None, limit: int | None
) -> ListFilter:
    """The filter a listing's options ask for; in a terminal, the newest first and at most TERMINAL_LIMIT."""
    terminal = fmt == "table" and sys.stdout.isatty()
    try:
        tags = dict(parse_tag(t) for t in tag_filter)
        when = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    shown = limit or (TERMINAL_LIMIT if terminal else None)
    return ListFilter(tuple(status_filter), class_names(class_filter), tags, when, shown, newest_first=terminal or limit is not None)


def class_names(given: tuple[str, ...]) -> tuple[str, ...]:
    """``--class`` values (repeatable or comma-separated) as VOC class names, in any case; 'all' is a shared start's row.

    Raises:
        ConfigError: an empty value (which would otherwise mean every class) or a name that is not a class.
    """
    from vocfleet.model import VOC_CLASSES

    names = []
    for text in given:
        for part in text.split(","):
            name = part.strip().lower()
            if name not in (*VOC_CLASSES, "all"):
                said = repr(part) if part.strip() else "''"
                raise ConfigError(f"--class {said}: not a VOC class; use one of {', '.join(VOC_CLASSES)} (or 'all' for shared starts)")
            names.append(name)
    return tuple(names)


def nothing_to_show(fmt: str, rows: Sequence[Any], none_yet: str, every: Sequence[Any] | None = None, noun: str = "") -> bool:
    """Where a table would have no rows, say why in one line and return True: nothing yet (``none_yet``:
    what to run first), or none of ``every`` matching the filter. A script asking for JSON, CSV or
    JSON Lines gets its empty listing instead (False: render the rows)."""
    if rows or fmt != "table":
        return False
    click.echo(f"none of the {len(every)} {noun} match" if every else none_yet)
    return True


def echo_listing(text: str) -> None:
    """A rendered listing: no rows as JSON Lines is no output at all, not an empty line."""
    click.echo(text, nl=bool(text))


def more_line(fmt: str, more: int, what: str) -> None:
    """After a listing cut by its limit: how many more there are (on stderr where the output is data)."""
    if more:
        click.echo(
            f"{more} more {what if more > 1 else what[:-1]} not shown: --limit N shows more; --status, --class, --tag and --since narrow the list",
            err=fmt != "table",
        )


# The CLI's names for a record's fields: its table headers, and the keys of its CSV and JSON.
_CLI_NAMES = {"job_id": "job", "run_id": "run", "detector_id": "id", "voc_class": "class", "start_job_id": "start", "heartbeat_age_s": "heartbeat_s"}


def columns(record: JobRecord | RunRecord | DetectorRecord | WorkerRecord) -> dict[str, Any]:
    """A record as the CLI shows it: every field under its CLI name, and what a person reads beside:
    a job's ``epoch`` (``2/5``), a detector's ``status`` and short fingerprints (12 characters, as git shows a commit)."""
    row = {_CLI_NAMES.get(k, k): v for k, v in asdict(record).items()}
    if isinstance(record, JobRecord):
        row["epoch"] = f"{record.epochs_done}/{record.epochs}"
    if isinstance(record, DetectorRecord):
        row["status"] = record.status
        row["eval_data"] = (record.eval_fingerprint or "")[:12] or None
        row["train_data"] = (record.train_fingerprint or "")[:12] or None
    return row


def with_labels(rows: list[dict[str, Any]], fmt: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(the rows to render, the label columns to show): in a table the name and tags where any row has one, tags as ``k=v``; else all three, as stored."""
    if fmt != "table":
        return rows, ["name", "tags", "note"]
    return [{**r, "tags": tag_text(r["tags"])} for r in rows], [c for c in ("name", "tags") if any(r.get(c) for r in rows)]


def format_option(f):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format.")(f)


def stale_window(seconds: float | None) -> timedelta:
    """How long without a heartbeat before running work is taken back (default: VOCFLEET_STALE_SECONDS)."""
    return timedelta(seconds=seconds if seconds is not None else get_settings().stale_seconds)


def takeback_note(beat: datetime | None, host: str | None, window: timedelta, taker: str) -> str:
    """How long ago a running row's worker last heartbeated, and when ``taker`` takes it back if that worker is gone."""
    now = datetime.now(UTC)
    beat = as_utc(beat)
    silent = (now - beat).total_seconds() if beat is not None else None
    left = max((beat + window - now).total_seconds(), 0) if beat is not None else 0
    said = f"last heartbeat {silent:.0f} s ago" if silent is not None else "no heartbeat yet"
    when = f"in {left:.0f} s" if left > 0 else "now"
    where = f" from {host}" if host else ""
    return f"{said}{where}; if that process was killed, {taker} takes it back {when} (after {window.total_seconds():g} s without a heartbeat)"


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, delivered as Ctrl-C is: the running job is handed back to resume."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """While work runs in this process, SIGTERM (a service manager, ``kill``) and SIGHUP (a closed terminal) act as Ctrl-C."""

    def handler(signum, _frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def exit_interrupted(exc: KeyboardInterrupt, what: str) -> None:
    """One line saying what was interrupted and how it resumes; exit 130 (Ctrl-C) or 128 + the signal."""
    by = f" by {exc}" if isinstance(exc, Interrupted) else ""
    click.echo(f"\ninterrupted{by}: {what}", err=True)
    sys.exit(128 + exc.signum if isinstance(exc, Interrupted) else 130)


def stale_option(f):
    return click.option(
        "--stale-after",
        type=Finite(0, MAX_SECONDS),
        default=None,
        help="Seconds without heartbeat before running work is taken back [default: VOCFLEET_STALE_SECONDS].",
    )(f)


class Finite(click.ParamType):
    """A finite number within bounds: ``nan`` and ``inf`` are refused (click's FloatRange lets nan through)."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None):
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            bounds = f"from {self.low:g}" if self.low is not None else ""
            bounds += f" to {self.high:g}" if self.high is not None else ""
            self.fail(f"{value!r}: use a finite number {bounds.strip()}", param, ctx)
        return number


ID = click.IntRange(1, MAX_ID)  # the databases' integer ids: a larger number is one line, not a traceback


def warn_idle_queue(conn: Any, queue: str) -> None:
    """In a fleet: say on stderr when work waits in ``queue`` and no live worker consumes it."""
    settings = get_settings()
    if not executor(settings).fleet:
        return
    from vocfleet.db.listing import idle_queues

    waiting = idle_queues(conn, timedelta(seconds=settings.stale_seconds)).get(queue)
    if waiting:
        click.echo(
            f"warning: {waiting} row(s) wait in the '{queue}' queue and no live worker takes it: "
            f"start 'vocfleet worker --queues {queue}' on a host ('vocfleet workers' lists those alive)",
            err=True,
        )
