"""Fleet operations: worker, scheduler, reap, cancel, retry, gc, db upgrade."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import click

from vocfleet.db.settings import MAX_SECONDS, get_settings, shown, sqlite_file
from vocfleet.model import ConfigError
from vocfleet.model.files import output_path
from vocfleet.worker.executor import executor

from .base import (
    ID,
    Finite,
    action_format_option,
    columns,
    database,
    echo_listing,
    emit,
    format_option,
    nothing_to_show,
    say,
    stale_option,
    stale_window,
    takeback_note,
)

resend_option = click.option(
    "--resend-after",
    type=Finite(0, MAX_SECONDS),
    default=60.0,
    help="Re-send rows queued this long when the broker's queue is empty.",
)


@click.command()
@stale_option
@resend_option
def reap(stale_after: float | None, resend_after: float) -> None:
    """Once: put work whose worker stopped heartbeating back on the queue, and re-send what the broker lost."""
    from vocfleet.db.session import ensure_schema

    from ..reaper import tick

    ensure_schema()
    out = tick(stale_window(stale_after), timedelta(seconds=resend_after))
    click.echo(" ".join(f"{k}={len(v)}" for k, v in out.items()))


@click.command("scheduler")
@click.option("--interval", type=Finite(0.1, MAX_SECONDS), default=30.0, help="Seconds between passes (0.1 to a week).")
@stale_option
@resend_option
def scheduler_daemon(interval: float, stale_after: float | None, resend_after: float) -> None:
    """Long-running: every --interval, what 'vocfleet reap' does once. Survives database and broker outages."""
    from vocfleet.db.session import DatabaseError, ensure_schema

    from ..reaper import tick

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ensure_schema()
    from ..fleet_metrics import serve_fleet

    port = serve_fleet()  # VOCFLEET_METRICS_PORT: jobs, runs and shards by state, live workers, queue depths
    click.echo(f"scheduler: every {interval:g}s, stale after {stale_window(stale_after).total_seconds():g}s", err=True)
    if port:
        click.echo(f"scheduler: metrics at http://{get_settings().metrics_bind}:{port}/metrics", err=True)
    while not stop:
        try:
            out = tick(stale_window(stale_after), timedelta(seconds=resend_after))
            changed = {k: v for k, v in out.items() if v}
            if changed:
                click.echo(f"scheduler: {changed}", err=True)
        except DatabaseError as exc:
            click.echo(f"scheduler: database unavailable ({exc.__class__.__name__}); retrying", err=True)
        except KeyboardInterrupt:
            break
        for _ in range(int(interval * 10)):
            if stop:
                break
            time.sleep(0.1)


@click.command()
@click.argument("job_ids", nargs=-1, type=ID)
@click.option("--all", "cancel_all", is_flag=True, help="Every queued or running training job.")
@click.option("--run", "run_ids", multiple=True, type=ID, help="A scoring run to cancel (repeatable).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before --all or before stopping running work.")
@action_format_option
def cancel(job_ids: tuple[int, ...], cancel_all: bool, run_ids: tuple[int, ...], yes: bool, fmt: str) -> None:
    """Cancel training jobs (or scoring runs): queued ones at once, running ones within a few batches.

    Asks first when the command would stop running work (--yes does not ask). Ids that do not
    exist are named, and the exit code is 1.
    """
    from vocfleet.db.claims import cancel_work, work_states
    from vocfleet.db.models import JobStatus, ScoreRun, TrainJob
    from vocfleet.db.runs import cancel_runs

    if not (job_ids or cancel_all or run_ids):
        raise ConfigError("name job ids, --run RUN, or --all")
    if cancel_all and not yes:
        click.confirm("Cancel every queued and running training job?", abort=True)
    targets = [("job", TrainJob, None if cancel_all else list(job_ids))] if job_ids or cancel_all else []
    targets += [("run", ScoreRun, list(run_ids))] if run_ids else []
    with database() as s:
        before = {kind: work_states(s, table, ids) for kind, table, ids in targets if ids is not None}
    missing = [f"{kind} {i}" for kind, _, ids in targets for i in ids or [] if i not in before[kind]]
    running = [f"{kind} {i}" for kind, found in before.items() for i, w in found.items() if w.status == JobStatus.running]
    if running and not yes and not cancel_all:
        click.confirm(f"Stop {', '.join(running)} (running)?", abort=True)
    settings = get_settings()
    with database() as s:
        results = [(kind, table, *(cancel_runs(s, ids) if table is ScoreRun else cancel_work(s, table, ids))) for kind, table, ids in targets]
        beats = {(kind, i): (w.heartbeat_at, w.worker_host) for kind, table, _, asked in results for i, w in work_states(s, table, asked).items()}
    changed = []
    for kind, _, now, asked in results:
        for i in now:
            say(fmt, f"{kind} {i}: cancelled")
            changed.append({kind: i, "status": "cancelled"})
        for i in asked:
            changed.append({kind: i, "status": "cancel requested"})
            beat, host = beats[(kind, i)]
            if beat is not None and datetime.now(UTC) - beat < timedelta(seconds=3 * settings.heartbeat_seconds):
                say(fmt, f"{kind} {i}: running; its worker stops it within a few batches")
            else:  # a silent worker may be gone (kill -9): then the job ends cancelled when it is taken back
                taker = executor(settings).reaper if kind == "job" else "the scheduler ('vocfleet reap')"
                say(fmt, f"{kind} {i}: cancel requested; {takeback_note(beat, host, stale_window(None), taker)}, as cancelled")
    if not changed and not missing:
        say(fmt, "nothing to cancel: already finished")
    emit(fmt, {"changed": changed, "missing": missing})
    if missing:
        click.echo(f"vocfleet: error: no {', '.join(missing)}: see 'vocfleet status' and 'vocfleet runs'", err=True)
        sys.exit(1)


@click.command()
@click.argument("job_ids", nargs=-1, type=ID, required=True)
@action_format_option
def retry(job_ids: tuple[int, ...], fmt: str) -> None:
    """Put failed or cancelled training jobs back in the queue; each resumes from its last checkpoint."""
    from vocfleet.db.models import JobStatus, TrainJob
    from vocfleet.db.training import retry_job

    with database() as s:
        outcomes = {i: retry_job(s, i) for i in job_ids}
    queued = [i for i, o in outcomes.items() if o == JobStatus.queued]
    for i, outcome in outcomes.items():
        if outcome is None:
            say(fmt, f"job {i}: no such job")
        else:
            say(fmt, f"job {i}: " + ("queued again; resumes from its last checkpoint" if outcome == JobStatus.queued else f"{outcome}, not retried"))
    if queued:
        sent, where = executor().hand_over(TrainJob, queued)
        if sent is None:
            say(fmt, where)
    emit(fmt, {"jobs": [{"job": i, "status": o.value if o is not None else "missing"} for i, o in outcomes.items()]})
    if None in outcomes.values():
        sys.exit(1)


@click.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--orphans", is_flag=True, help="Also folders of jobs this database does not know (another database sharing the store may own them).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before removing.")
def gc(dry_run: bool, orphans: bool, yes: bool) -> None:
    """Remove artifacts nothing needs: finished jobs' resume checkpoints, this host's stale copies.

    Kept: every detector's checkpoint and plots (active or not, matched by job and file name, so a
    moved data folder keeps them), everything of queued, running, failed and cancelled jobs
    ('vocfleet retry' resumes from them), and anything reached through a link.
    """
    from vocfleet.db.session import session_scope
    from vocfleet.model.artifacts import ArtifactStore

    from ..garbage import find_garbage, remove_garbage
    from ..output import clean

    store = ArtifactStore.from_settings(get_settings())
    with database(read=True) as s:
        garbage, orphaned = find_garbage(s, store, orphans=orphans)
    total = sum(g.size for g in garbage)
    for g in garbage:
        click.echo(f"{g.size / 2**20:9.1f} MiB  {clean(g.location)}  ({g.reason})")
    if orphaned and not orphans:
        click.echo(f"{orphaned} job folder(s) in {store.root} belong to no job of this database: --orphans removes their resume state (never a detector)")
    if not garbage:
        click.echo("nothing to remove")
        return
    summary = f"{len(garbage)} file(s), {total / 2**20:.1f} MiB"
    if dry_run:
        click.echo(f"would remove {summary}")
        return
    if not yes:
        click.confirm(f"Remove {summary}?", abort=True)
    removed = remove_garbage(session_scope, store, garbage, orphans=orphans)
    kept = len(garbage) - len(removed)
    said = f"removed {len(removed)} file(s), {sum(g.size for g in removed) / 2**20:.1f} MiB"
    click.echo(said + (f"; kept {kept} that became needed meanwhile" if kept else ""))


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to this vocfleet's newest migration (the fleet's one migration step)."""
    from vocfleet.db.session import check_schema, schema_revision, upgrade_database
    from vocfleet.db.states import SCHEMA_HEAD

    where = shown(get_settings().database_url)
    before = schema_revision()
    current = before is not None and int(before) >= int(SCHEMA_HEAD)
    if current:
        check_schema()  # newer: one line unless this code may still run on it
    else:
        upgrade_database()
        click.echo(f"database at {where}: schema {before or 'none'} -> {SCHEMA_HEAD}")
    if not _backfill_fingerprints() and current:
        click.echo(f"database at {where} already has schema {before} (this vocfleet's newest: {SCHEMA_HEAD}); nothing to do")


def _backfill_fingerprints() -> bool:
    """Detectors from before 0.5.0 get their data fingerprint, once (decoding their evaluation pictures); whether any needed one."""
    from vocfleet.db.registry import backfill_fingerprints

    done, failed = backfill_fingerprints(get_settings().cache_dir)
    if done:
        click.echo(f"{len(done)} detector(s) trained before data fingerprints now have one (ids {', '.join(map(str, done))}): promotion compares their data")
    for detector_id, why in failed.items():
        click.echo(f"detector {detector_id}: no data fingerprint ({why}); promotion compares its VOC root's real path instead", err=True)
    return bool(done or failed)


@db.command("backup")
@click.argument("path")
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
def db_backup(path: str, force: bool) -> None:
    """Copy the SQLite database to PATH as one consistent file, while jobs may be writing (PostgreSQL: use pg_dump)."""
    from vocfleet.db.session import backup_sqlite

    settings = get_settings()
    src = sqlite_file(settings.database_url)
    if src is None:
        where = shown(settings.database_url)
        raise ConfigError(f"the database at {where} is not a SQLite file: back it up with its own tool (PostgreSQL: pg_dump -Fc, see docs/fleet.md)")
    if not src.is_file():
        raise ConfigError(f"no database at {src}: nothing to back up (VOCFLEET_DATA_DIR or VOCFLEET_DATABASE_URL points elsewhere?)")
    out = output_path(path, option="PATH", force=force, protected=settings.own_paths())
    counts = backup_sqlite(src, out)
    click.echo(f"backed up {src} to {path}: " + ", ".join(f"{n} {what}" for what, n in counts.items()) + "; put it back with 'vocfleet db restore'")


@db.command("restore")
@click.argument("backup", type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", is_flag=True, help="Replace the database without asking.")
def db_restore(backup: str, yes: bool) -> None:
    """Put a backup made by 'db backup' back as the SQLite database (stop running commands and workers first)."""
    from pathlib import Path

    from vocfleet.db.session import restore_sqlite

    db = sqlite_file(get_settings().database_url)
    if db is None:
        raise ConfigError("the database is not a SQLite file: restore it with its own tool (PostgreSQL: pg_restore)")
    if Path(os.path.realpath(backup)) == Path(os.path.realpath(db)):
        raise ConfigError(f"{backup} is the database itself: give the backup's path")
    if db.exists() and not yes:
        click.confirm(f"replace everything in {db} with {backup}?", abort=True)
    counts = restore_sqlite(Path(backup), db)
    click.echo(f"restored {db} from {backup}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))


@db.command("check")
@format_option
def db_check(fmt: str) -> None:
    """Say whether this vocfleet can run on the database as it is (exit 1 if not), without changing it."""
    from vocfleet import __version__
    from vocfleet.db.session import SchemaMismatch, check_schema, schema_revision
    from vocfleet.db.states import SCHEMA_HEAD

    revision = schema_revision()
    try:
        check_schema()
        problem = None
    except SchemaMismatch as exc:
        problem = str(exc)
    row = {
        "database": shown(get_settings().database_url),
        "schema": revision,
        "code_schema": SCHEMA_HEAD,
        "version": __version__,
        "ok": problem is None,
    }
    if fmt == "json":
        emit(fmt, {**row, "problem": problem})
    else:
        said = "ok" if problem is None else problem
        click.echo(f"database {row['database']}: schema {revision or 'none'}; this vocfleet {__version__} runs on {SCHEMA_HEAD}: {said}")
    if problem is not None:
        sys.exit(1)


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Include workers that stopped or went silent.")
@stale_option
@format_option
def workers(show_all: bool, stale_after: float | None, fmt: str) -> None:
    """Fleet workers: host, queues, vocfleet version, device, what each holds, seconds since its heartbeat."""
    from vocfleet.db.workers import worker_records

    from ..output import render

    with database(read=True) as s:
        records = worker_records(s, stale_window(stale_after), include_gone=show_all)
    if nothing_to_show(fmt, records, "no live workers: start one with 'vocfleet worker' (--all lists those that stopped)"):
        return
    echo_listing(render([columns(r) for r in records], ["name", "host", "queues", "version", "device", "state", "holding", "heartbeat_s"], fmt))


@click.command()
@click.option("--voc-root", type=click.Path(), envvar="VOCFLEET_VOC_ROOT", default=None, help="A VOC folder to check [env VOCFLEET_VOC_ROOT].")
@format_option
def doctor(voc_root: str | None, fmt: str) -> None:
    """Check this host: database and schema, broker, artifact store, score roots, VOC root, GPUs, workers (exit 1 on a failure)."""
    from ..doctor import FAIL, run_checks
    from ..output import render

    checks = run_checks(voc_root)
    click.echo(render([{"check": c.name, "status": c.status, "detail": c.detail} for c in checks], ["check", "status", "detail"], fmt))
    if any(c.status == FAIL for c in checks):
        sys.exit(1)


def _check_cuda(gpus: str, devices: list[str | None]) -> None:
    """GPUs asked for (or seen by nvidia-smi) that this torch build cannot use: one line, not a silent CPU worker.

    Safe before the workers start: this process then execs Celery (or starts it as a new program),
    so nothing inherits the CUDA state read here.
    """
    import torch

    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [d for d in devices if d is not None and (not d.isdigit() or int(d) >= usable)]
    if missing:
        raise ConfigError(
            f"--gpus {gpus}: torch {torch.__version__} (built for CUDA {torch.version.cuda or 'none'}) can use {usable} GPU(s) here, "
            f"not {', '.join(missing)}: update the NVIDIA driver for this build, or start the worker with --gpus none for the CPU"
        )


def _visible_gpus() -> list[str]:
    """GPU indices, read without initialising CUDA (this process forks workers)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import shutil

    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def worker_devices(gpus: str) -> list[str | None]:
    """The devices ``--gpus`` names: a GPU index per worker process, or None for one CPU worker."""
    if gpus in ("auto", "all"):
        return _visible_gpus() or [None]
    if gpus in ("none", "cpu"):
        return [None]
    devices = [g.strip() for g in gpus.split(",") if g.strip()]
    if not devices or not all(g.isdigit() for g in devices):
        raise ConfigError(f"--gpus {gpus!r}: use 'all' (or 'auto'), 'none' or indices like 0,1")
    return list(dict.fromkeys(devices))


def worker_processes(devices: list[str | None], queues: str, name: str, loglevel: str, metrics_port: int | None) -> list[tuple[dict[str, str], list[str]]]:
    """(environment, command) of each Celery worker to start: one per device, pinned with CUDA_VISIBLE_DEVICES, for any queue (training or scoring)."""
    out = []
    for index, dev in enumerate(devices):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if dev is None else dev)
        if metrics_port:
            env.update(VOCFLEET_METRICS_PORT=str(metrics_port + index))
        # Unique per host, queues and device: a train and a score worker on one host are two nodes.
        node = f"{name}-{queues.replace(',', '+')}-{'cpu' if dev is None else 'gpu' + dev}@%h"
        cmd = [sys.executable, "-m", "celery", "-A", "vocfleet.worker.celery_app", "worker", "-Q", queues, "-n", node]
        cmd += ["--concurrency", "1", "--prefetch-multiplier", "1", "-O", "fair", "--loglevel", loglevel]
        out.append((env, cmd))
    return out


@click.command()
@click.option("--gpus", default="auto", help="'all' or 'auto' (every visible GPU, a worker process each), 'none' (CPU), or indices like 0,1.")
@click.option("--queues", default="train,score", help="Queues this host serves: train, score or both.")
@click.option("--name", default="vocfleet", help="Worker name prefix (the host name is appended).")
@click.option("--loglevel", default="info")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics here (one port up per further GPU) [default: VOCFLEET_METRICS_PORT, else none].",
)
def worker(gpus: str, queues: str, name: str, loglevel: str, metrics_port: int | None) -> None:
    """Start fleet workers: one Celery worker per GPU, pinned with CUDA_VISIBLE_DEVICES, one job at a time.

    Each worker acknowledges late, prefetches one message and runs tasks in a forked child, so
    the process that forks never initialises CUDA.
    """
    if not executor().fleet:
        raise ConfigError("vocfleet worker needs VOCFLEET_BROKER_URL (e.g. redis://localhost:6379/0); without a broker use 'vocfleet run'")
    bad = [q for q in queues.split(",") if q not in ("train", "score")]
    if bad:
        raise ConfigError(f"--queues {queues!r}: only train and score exist")
    from vocfleet.model.artifacts import ArtifactStore

    ArtifactStore.from_settings(get_settings()).check()  # a missing bucket or bad credentials: said now, in one line
    devices = worker_devices(gpus)
    if any(dev is not None for dev in devices):
        _check_cuda(gpus, devices)
    # Never a migration here: a worker runs on the schema as it is, or refuses in one line
    # ('vocfleet db upgrade', the compose 'migrate' step, is the fleet's one migration step).
    from vocfleet.db.session import check_schema

    check_schema()
    started = worker_processes(devices, queues, name, loglevel, metrics_port or get_settings().metrics_port)
    if len(started) == 1:
        env, cmd = started[0]
        os.execvpe(cmd[0], cmd, env)  # one worker: become it, so signals reach Celery directly
    procs = [subprocess.Popen(cmd, env=env) for env, cmd in started]
    forward = lambda signum, _frame: [p.send_signal(signum) for p in procs]
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sys.exit(max(p.wait() for p in procs))


COMMANDS = [worker, workers, doctor, scheduler_daemon, reap, cancel, retry, gc, db]
