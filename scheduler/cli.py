"""The ``vocfleet`` command line: submit, run, status, detectors, worker, reap."""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from db.jobs import reap_stale
from db.models import Detector, JobStatus, ScoreRun, TrainJob, utcnow
from db.scoring import error_rows, result_rows
from db.session import session_scope, upgrade_database
from db.settings import SettingsError, get_settings
from model import ConfigError
from model.config import BALANCE, DIFFICULT, OPTIMIZERS, TrainConfig
from model.download import DownloadError
from scheduler.output import FORMATS, render
from scheduler.fleet import cancel as cancel_rows
from scheduler.fleet import enqueue, tick
from scheduler.queueing import build_configs, create_jobs, next_queued, parse_classes

log = logging.getLogger("vocfleet")
_DEFAULTS = TrainConfig(voc_class="car", voc_root=".")


class VocfleetGroup(click.Group):
    """Turns bad input into one line on stderr and exit code 2 (connection problems: exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, SettingsError) as exc:
            click.echo(f"vocfleet: error: {exc}", err=True)
            ctx.exit(2)
        except DownloadError as exc:
            click.echo(f"vocfleet: error: {exc}", err=True)
            ctx.exit(1)
        except OperationalError as exc:
            url = get_settings().database_url
            click.echo(f"vocfleet: error: cannot use the database {url!r} ({exc.orig}): check VOCFLEET_DATABASE_URL", err=True)
            ctx.exit(1)


_db_ready = False


def ensure_db() -> None:
    """Create or upgrade the schema once per process (cheap when already current)."""
    global _db_ready
    if not _db_ready:
        upgrade_database()
        _db_ready = True


def format_option(f):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format.")(f)


@click.group(cls=VocfleetGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def cli(verbose: bool) -> None:
    """Train one ResNet-50 detector per PASCAL VOC class and score image folders with all of them.

    State lives in VOCFLEET_DATA_DIR (default ~/.local/share/vocfleet); VOCFLEET_DATABASE_URL and
    VOCFLEET_BROKER_URL switch from the embedded default to a fleet.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--classes", required=True, help="Comma-separated VOC classes, or 'all'.")
@click.option("--voc-root", required=True, type=click.Path(), envvar="VOCFLEET_VOC_ROOT", help="VOCdevkit/VOC2007 folder [env VOCFLEET_VOC_ROOT].")
@click.option("--epochs", type=int, default=_DEFAULTS.epochs)
@click.option("--image-size", type=int, default=_DEFAULTS.image_size, help="Square training size in pixels.")
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size)
@click.option("--lr", type=float, default=_DEFAULTS.lr, help="Peak learning rate.")
@click.option("--weight-decay", type=float, default=_DEFAULTS.weight_decay)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_DEFAULTS.optimizer)
@click.option("--init", default=_DEFAULTS.init, help="scratch, imagenet, or a path to a state dict.")
@click.option("--zero-init-residual/--no-zero-init-residual", default=_DEFAULTS.zero_init_residual, help="Residual blocks start as the identity (from scratch).")
@click.option("--augment/--no-augment", default=_DEFAULTS.augment, help="Random scale, flip and rotation.")
@click.option("--balance", type=click.Choice(BALANCE), default=_DEFAULTS.balance, help="Class-imbalance handling.")
@click.option("--aux-classes/--no-aux-classes", default=_DEFAULTS.aux_classes, help="Also learn the other 19 classes' labels of the training images (the detector keeps one logit).")
@click.option("--difficult", type=click.Choice(DIFFICULT), default=_DEFAULTS.difficult, help="'Difficult only' images (label 0).")
@click.option("--train-split", default=_DEFAULTS.train_split)
@click.option("--eval-split", default="auto", help="A split name, 'holdout' (part of the training split), or 'auto'.")
@click.option("--seed", type=int, default=_DEFAULTS.seed)
@click.option("--max-batches", type=int, default=None, help="Cap on batches per epoch (quick trials).")
@click.option("--device", default=_DEFAULTS.device, help="auto, cpu, cuda, cuda:N.")
@click.option("--compile/--no-compile", default=_DEFAULTS.compile, help="torch.compile the model (GPU; minutes of warm-up).")
@click.option("--max-attempts", type=int, default=3, help="Attempts before a job whose worker keeps dying fails.")
def submit(classes: str, max_attempts: int, **options: Any) -> None:
    """Queue one training job per class."""
    configs = build_configs(parse_classes(classes), **options)
    ensure_db()
    with session_scope() as s:
        jobs = create_jobs(s, configs, max_attempts=max_attempts)
        ids = [j.id for j in jobs]
    if get_settings().broker_url:
        sent = enqueue(TrainJob, ids)
        where = f"sent {sent} to the broker" if sent == len(ids) else f"sent {sent}; 'vocfleet scheduler' sends the rest when the broker is back"
    else:
        where = "run them with: vocfleet run"
    cfg = configs[0]
    click.echo(
        f"queued {len(ids)} job(s) {ids[0]}..{ids[-1]} for {', '.join(c.voc_class for c in configs)} "
        f"({cfg.epochs} epochs, {cfg.image_size} px, eval split: {cfg.eval_split}); {where}"
    )


def _as_utc(dt):
    """SQLite hands back naive datetimes; everything stored is UTC."""
    from datetime import timezone

    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


@cli.command()
@click.option("--watch", is_flag=True, help="Refresh until every job has finished.")
@click.option("--interval", type=float, default=5.0, help="Seconds between refreshes with --watch.")
@format_option
def status(watch: bool, interval: float, fmt: str) -> None:
    """Jobs with progress: epoch x of y and the latest validation AP."""
    import time

    ensure_db()
    while True:
        rows = _status_rows()
        if watch and sys.stdout.isatty():
            click.clear()
        if not rows:
            click.echo("no jobs yet: vocfleet submit --classes car --voc-root PATH")
            return
        click.echo(render(rows, ["job", "class", "status", "epoch", "val_ap", "attempts", "worker", "heartbeat", "error"], fmt))
        if not watch or all(JobStatus(r["status"]).finished for r in rows):
            return
        if not sys.stdout.isatty():
            click.echo("")
        time.sleep(interval)


def _status_rows() -> list[dict[str, Any]]:
    with session_scope() as s:
        jobs = s.scalars(select(TrainJob).order_by(TrainJob.id)).all()
        rows = [
            {
                "job": j.id, "class": j.voc_class, "status": j.status.value, "epoch": f"{j.epochs_done}/{j.total_epochs}",
                "val_ap": j.latest_val_ap, "attempts": j.attempts, "worker": j.worker_host,
                "heartbeat": _as_utc(j.heartbeat_at), "error": (j.error or "").splitlines()[0] if j.error else None,
            }
            for j in jobs
        ]
    return rows


def detector_rows(s, include_inactive: bool = False) -> list[dict[str, Any]]:
    q = select(Detector).order_by(Detector.voc_class, Detector.id)
    if not include_inactive:
        q = q.where(Detector.active.is_(True))
    rows = []
    for d in s.scalars(q):
        m = d.metrics
        rows.append({
            "id": d.id, "class": d.voc_class, "job": d.job_id, "active": d.active, "ap": d.ap, "ap11": m.get("ap11"),
            "auc": m.get("auc"), "accuracy": m.get("accuracy"), "always_absent": m.get("baseline_accuracy"),
            "f1": m.get("f1"), "threshold": d.threshold, "pos_rate": m["positives"] / max(m["images"], 1),
            "eval_images": m.get("images"), "split": m.get("split"), "checkpoint": d.checkpoint_path,
            "curves": m.get("plots", {}).get("curves"), "pr_curve": m.get("plots", {}).get("pr"),
        })
    return rows


DETECTOR_COLUMNS = ["id", "class", "ap", "ap11", "auc", "accuracy", "always_absent", "f1", "threshold", "pos_rate", "eval_images", "split"]


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Include detectors replaced by newer ones.")
@click.option("--plots", is_flag=True, help="List each detector's PNG plots (training curves, precision-recall).")
@format_option
def detectors(show_all: bool, plots: bool, fmt: str) -> None:
    """Trained detectors: AP on the evaluation split, accuracy beside 'always absent', threshold."""
    ensure_db()
    with session_scope() as s:
        rows = detector_rows(s, show_all)
    if not rows:
        click.echo("no detectors yet: vocfleet submit ... then vocfleet run")
        return
    if plots:
        click.echo(render(rows, ["id", "class", "curves", "pr_curve"], fmt))
        return
    cols = DETECTOR_COLUMNS + (["active"] if show_all else []) + (["checkpoint", "curves", "pr_curve"] if fmt != "table" else [])
    click.echo(render(rows, cols, fmt))


@cli.command()
@click.option("--stale-after", type=float, default=None, help="Seconds without heartbeat before a running job is taken back [default: VOCFLEET_STALE_SECONDS].")
def run(stale_after: float | None) -> None:
    """Embedded default: run every queued job in this process, then print the detector table.

    Jobs left 'running' by an interrupted earlier run resume from their last checkpoint.
    """
    from scheduler.progress import TrainProgress
    from worker.tasks import run_train_job

    if get_settings().broker_url:
        raise ConfigError("VOCFLEET_BROKER_URL is set, so jobs go to the fleet: start 'vocfleet worker' instead (or unset it)")
    ensure_db()
    _requeue_stale(stale_after)
    done: list[tuple[int, str, str]] = []
    while True:
        with session_scope() as s:
            job_id = next_queued(s)
            voc_class = s.get(TrainJob, job_id).voc_class if job_id else None
        if job_id is None:
            break
        click.echo(f"job {job_id}: training {voc_class}", err=True)
        try:
            outcome = run_train_job(job_id, progress=TrainProgress(f"job {job_id} {voc_class}"))
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: job {job_id} will resume from its last checkpoint on the next 'vocfleet run'", err=True)
            sys.exit(130)
        done.append((job_id, voc_class, outcome))
        if outcome == "failed":
            with session_scope() as s:
                click.echo(f"job {job_id} ({voc_class}) failed: {s.get(TrainJob, job_id).error.splitlines()[0]}", err=True)
    if not done:
        click.echo("nothing queued: vocfleet submit --classes car --voc-root PATH", err=True)
    with session_scope() as s:
        rows = detector_rows(s)
    if rows:
        click.echo(render(rows, DETECTOR_COLUMNS))
    if any(o == "failed" for _, _, o in done):
        sys.exit(1)


def _requeue_stale(stale_after: float | None) -> list[int]:
    with session_scope() as s:
        requeued, failed = reap_stale(s, _stale(stale_after))
    for job_id in requeued:
        click.echo(f"job {job_id}: its worker stopped; requeued to resume from its checkpoint", err=True)
    for job_id in failed:
        click.echo(f"job {job_id}: failed after too many attempts", err=True)
    return requeued


def _stale(seconds: float | None) -> timedelta:
    return timedelta(seconds=seconds if seconds is not None else get_settings().stale_seconds)


@cli.command()
@click.option("--stale-after", type=float, default=None, help="Seconds without heartbeat [default: VOCFLEET_STALE_SECONDS].")
@click.option("--resend-after", type=float, default=60.0, help="Re-send rows queued this long when the broker's queue is empty.")
def reap(stale_after: float | None, resend_after: float) -> None:
    """Once: put work whose worker stopped heartbeating back on the queue, and re-send what the broker lost."""
    ensure_db()
    out = tick(_stale(stale_after), timedelta(seconds=resend_after))
    click.echo(" ".join(f"{k}={len(v)}" for k, v in out.items()))


@cli.command("scheduler")
@click.option("--interval", type=float, default=30.0, help="Seconds between passes.")
@click.option("--stale-after", type=float, default=None, help="Seconds without heartbeat [default: VOCFLEET_STALE_SECONDS].")
@click.option("--resend-after", type=float, default=60.0, help="Re-send rows queued this long when the broker's queue is empty.")
def scheduler_daemon(interval: float, stale_after: float | None, resend_after: float) -> None:
    """Long-running: every --interval, what 'vocfleet reap' does once. Survives database and broker outages."""
    import signal
    import time

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ensure_db()
    click.echo(f"scheduler: every {interval:g}s, stale after {_stale(stale_after).total_seconds():g}s", err=True)
    while not stop:
        try:
            out = tick(_stale(stale_after), timedelta(seconds=resend_after))
            changed = {k: v for k, v in out.items() if v}
            if changed:
                click.echo(f"scheduler: {changed}", err=True)
        except SQLAlchemyError as exc:
            click.echo(f"scheduler: database unavailable ({exc.__class__.__name__}); retrying", err=True)
        except KeyboardInterrupt:
            break
        for _ in range(int(interval * 10)):
            if stop:
                break
            time.sleep(0.1)


@cli.command()
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--all", "cancel_all", is_flag=True, help="Every queued or running training job.")
@click.option("--run", "run_ids", multiple=True, type=int, help="A scoring run to cancel (repeatable).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before --all.")
def cancel(job_ids: tuple[int, ...], cancel_all: bool, run_ids: tuple[int, ...], yes: bool) -> None:
    """Cancel training jobs (or scoring runs): queued ones at once, running ones within a few batches."""
    if not (job_ids or cancel_all or run_ids):
        raise ConfigError("name job ids, --run RUN, or --all")
    if cancel_all and not yes:
        click.confirm("Cancel every queued and running training job?", abort=True)
    ensure_db()
    with session_scope() as s:
        results = []
        if job_ids or cancel_all:
            results.append(("job", *cancel_rows(s, TrainJob, None if cancel_all else list(job_ids))))
        if run_ids:
            results.append(("run", *cancel_rows(s, ScoreRun, list(run_ids))))
    for kind, now, asked in results:
        for i in now:
            click.echo(f"{kind} {i}: cancelled")
        for i in asked:
            click.echo(f"{kind} {i}: running; its worker stops it within a few batches")
    if not any(now or asked for _, now, asked in results):
        click.echo("nothing to cancel (finished, or no such id)")


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the newest migration (the fleet's migration step)."""
    upgrade_database()
    click.echo(f"database at newest schema: {get_settings().database_url.split('@')[-1]}")


def _visible_gpus() -> list[str]:
    """GPU indices, read without initialising CUDA (this process forks workers)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


@cli.command()
@click.option("--gpus", default="auto", help="'auto' (every visible GPU), 'none' (CPU), or indices like 0,1.")
@click.option("--queues", default="train,score", help="Queues this host serves: train, score or both.")
@click.option("--name", default="vocfleet", help="Worker name prefix (the host name is appended).")
@click.option("--loglevel", default="info")
def worker(gpus: str, queues: str, name: str, loglevel: str) -> None:
    """Start fleet workers: one Celery worker per GPU, pinned with CUDA_VISIBLE_DEVICES, one job at a time.

    Each worker acknowledges late, prefetches one message and runs tasks in a forked child, so
    the process that forks never initialises CUDA.
    """
    import signal
    import subprocess

    if not get_settings().broker_url:
        raise ConfigError("vocfleet worker needs VOCFLEET_BROKER_URL (e.g. redis://localhost:6379/0); without a broker use 'vocfleet run'")
    bad = [q for q in queues.split(",") if q not in ("train", "score")]
    if bad:
        raise ConfigError(f"--queues {queues!r}: only train and score exist")
    devices: list[str | None]
    if gpus == "auto":
        devices = _visible_gpus() or [None]
    elif gpus in ("none", "cpu"):
        devices = [None]
    else:
        devices = [g.strip() for g in gpus.split(",") if g.strip()]
        if not all(g.isdigit() for g in devices):
            raise ConfigError(f"--gpus {gpus!r}: use 'auto', 'none' or indices like 0,1")
    # No schema upgrade here: many hosts starting at once would race; 'vocfleet db upgrade' (the
    # compose 'migrate' step) or any submit creates it.
    procs = []
    for dev in devices:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if dev is None else dev)
        node = f"{name}-{'cpu' if dev is None else 'gpu' + dev}@%h"
        cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues, "-n", node,
               "--concurrency", "1", "--prefetch-multiplier", "1", "-O", "fair", "--loglevel", loglevel]
        if len(devices) == 1:
            os.execvpe(cmd[0], cmd, env)  # one worker: become it, so signals reach Celery directly
        procs.append(subprocess.Popen(cmd, env=env))
    forward = lambda signum, _frame: [p.send_signal(signum) for p in procs]  # noqa: E731
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sys.exit(max(p.wait() for p in procs))


def _active_detectors(s, classes: str | None) -> list[Detector]:
    q = select(Detector).where(Detector.active.is_(True)).order_by(Detector.voc_class)
    found = list(s.scalars(q))
    if classes:
        wanted = parse_classes(classes)
        have = {d.voc_class for d in found}
        missing = [c for c in wanted if c not in have]
        if missing:
            raise ConfigError(f"no trained detector for {', '.join(missing)}: train with 'vocfleet submit --classes {','.join(missing)} ...' first")
        found = [d for d in found if d.voc_class in wanted]
    if not found:
        raise ConfigError("no trained detectors yet: run 'vocfleet submit ...' and 'vocfleet run' first")
    return found


@cli.command()
@click.argument("folders", nargs=-1, required=True)
@click.option("--classes", default=None, help="Comma-separated classes [default: every active detector].")
@click.option("--batch-size", type=int, default=64)
@click.option("--max-attempts", type=int, default=3)
@click.option("--wait", is_flag=True, help="In a fleet: show progress until the run has finished.")
def score(folders: tuple[str, ...], classes: str | None, batch_size: int, max_attempts: int, wait: bool) -> None:
    """Score every picture under FOLDERS with every active detector (or --classes).

    On the embedded default the run happens now, with progress; in a fleet it is queued on the
    'score' queue. Files that are not pictures, broken or unsafe are recorded with a reason.
    """
    from worker.safety import check_score_folder

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    resolved = [str(check_score_folder(f)) for f in folders]
    ensure_db()
    with session_scope() as s:
        dets = _active_detectors(s, classes)
        run = ScoreRun(folders=resolved, classes=[d.voc_class for d in dets], detector_ids=[d.id for d in dets], batch_size=batch_size, max_attempts=max_attempts)
        s.add(run)
        s.flush()
        run_id, names = run.id, run.classes
    if get_settings().broker_url:
        enqueue(ScoreRun, [run_id])
        click.echo(f"scoring run {run_id} queued for {', '.join(names)}; follow it with: vocfleet runs")
        if wait:
            _wait_for_run(run_id)
        return
    _run_scoring(run_id, names)


def _wait_for_run(run_id: int, interval: float = 1.0) -> None:
    """Progress of a run the fleet is scoring (files done of total), until it finishes."""
    import time

    from scheduler.progress import CountProgress

    with CountProgress(f"run {run_id}", "file") as progress:
        while True:
            with session_scope() as s:
                run = s.get(ScoreRun, run_id)
                status, done, total = run.status, run.scored_images + run.error_files, run.total_files
            progress(done, total)
            if status.finished:
                break
            time.sleep(interval)
    click.echo(f"run {run_id} {status.value}: {done} of {total} files")
    if status != JobStatus.succeeded:
        sys.exit(1)


def _run_scoring(run_id: int, names: list[str]) -> None:
    from scheduler.progress import CountProgress
    from worker.tasks import run_score_run

    click.echo(f"scoring run {run_id} with {len(names)} detector(s): {', '.join(names)}", err=True)
    try:
        with CountProgress(f"run {run_id}", "file") as progress:
            outcome = run_score_run(run_id, progress=progress)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: resume with 'vocfleet resume-run {run_id}'", err=True)
        sys.exit(130)
    with session_scope() as s:
        run = s.get(ScoreRun, run_id)
        errors = error_rows(s, run_id)
        click.echo(f"run {run_id} {run.status.value}: {run.scored_images} image(s) scored, {run.error_files} file(s) not scored, of {run.total_files} seen")
        if run.error:
            click.echo(f"reason: {run.error}", err=True)
    if errors:
        click.echo(render(errors, ["file", "reason"]))
    click.echo(f"results: vocfleet results {run_id} [--by-image] [--present] [--format csv|json]")
    if outcome != "succeeded":
        sys.exit(1)


@cli.command("resume-run")
@click.argument("run_id", type=int)
def resume_run(run_id: int) -> None:
    """Continue an interrupted scoring run where it stopped (already recorded files are not redone)."""
    ensure_db()
    with session_scope() as s:
        run = s.get(ScoreRun, run_id)
        if run is None:
            raise ConfigError(f"no scoring run {run_id}: see 'vocfleet runs'")
        if run.status == JobStatus.succeeded:
            click.echo(f"run {run_id} already finished")
            return
        stale = run.status == JobStatus.running and _as_utc(run.heartbeat_at) < utcnow() - timedelta(seconds=get_settings().stale_seconds)
        if run.status in (JobStatus.failed, JobStatus.cancelled) or stale:
            run.status, run.claim_token, run.cancel_requested = JobStatus.queued, None, False
        elif run.status == JobStatus.running:
            raise ConfigError(f"run {run_id} is running on {run.worker_host} (heartbeat {run.heartbeat_at}); wait or cancel it")
        names = list(run.classes)
    if get_settings().broker_url:
        enqueue(ScoreRun, [run_id])
        click.echo(f"scoring run {run_id} queued again")
        return
    _run_scoring(run_id, names)


@cli.command()
@format_option
def runs(fmt: str) -> None:
    """Scoring runs with status and counts."""
    ensure_db()
    with session_scope() as s:
        rows = [
            {"run": r.id, "status": r.status.value, "folders": " ".join(r.folders), "classes": ",".join(r.classes),
             "files": r.total_files, "scored": r.scored_images, "errors": r.error_files,
             "created": _as_utc(r.created_at), "finished": _as_utc(r.finished_at)}
            for r in s.scalars(select(ScoreRun).order_by(ScoreRun.id))
        ]
    if not rows:
        click.echo("no scoring runs yet: vocfleet score FOLDER")
        return
    click.echo(render(rows, ["run", "status", "files", "scored", "errors", "classes", "created", "finished", "folders"], fmt))


@cli.command()
@click.argument("run_id", type=int)
@click.option("--class", "voc_class", default=None, help="Only this class.")
@click.option("--min-prob", type=float, default=None, help="Only probabilities at or above this.")
@click.option("--present/--absent", default=None, help="Only images judged present (or absent) at the detector's threshold.")
@click.option("--image", default=None, help="One image (path relative to its folder, or sha256): which classes are in it.")
@click.option("--by-image", is_flag=True, help="One row per image: the classes found, most probable first.")
@click.option("--errors", "show_errors", is_flag=True, help="The files that could not be scored, with reasons.")
@format_option
def results(run_id: int, voc_class, min_prob, present, image, by_image: bool, show_errors: bool, fmt: str) -> None:
    """Query a scoring run's results."""
    ensure_db()
    if voc_class:
        parse_classes(voc_class)
    with session_scope() as s:
        if s.get(ScoreRun, run_id) is None:
            raise ConfigError(f"no scoring run {run_id}: see 'vocfleet runs'")
        if show_errors:
            click.echo(render(error_rows(s, run_id), ["file", "reason", "folder"], fmt))
            return
        rows = result_rows(s, run_id, voc_class=voc_class, min_prob=min_prob, present=present, image=image)
    if image and not rows:
        raise ConfigError(f"run {run_id} has no scored image {image!r}: see 'vocfleet results {run_id} --by-image'")
    if by_image:
        grouped: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            grouped.setdefault((r["folder"], r["image"]), []).append(r)
        rows = [
            {"image": img, "folder": folder, "present": ",".join(r["class"] for r in rs if r["present"]),
             "top": ", ".join(f"{r['class']} {r['probability']:.2f}" for r in rs[:3]), "sha256": rs[0]["sha256"]}
            for (folder, img), rs in grouped.items()
        ]
        click.echo(render(rows, ["image", "present", "top"] + (["folder", "sha256"] if fmt != "table" else []), fmt))
        return
    click.echo(render(rows, ["image", "class", "probability", "present"] + (["folder", "detector", "sha256"] if fmt != "table" else []), fmt))


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--classes", default=None, help="Comma-separated classes [default: every active detector].")
@format_option
def predict(images: tuple[str, ...], classes: str | None, fmt: str) -> None:
    """Quick answer for a few images, without creating a run: classes by probability."""
    from model.engine import resolve_device
    from model.score import DetectorSpec, FileEntry, iter_chunks, load_detectors

    ensure_db()
    with session_scope() as s:
        specs = [DetectorSpec.of(d) for d in _active_detectors(s, classes)]
    entries = []
    for img in images:
        p = Path(img).expanduser().resolve()
        if not p.is_file():
            raise ConfigError(f"image {img!r} does not exist or is not a file")
        entries.append(FileEntry(str(p.parent), p.name))
    device = resolve_device()
    try:
        # A few images: compiling would cost more than it saves, unless asked for explicitly.
        loaded = load_detectors(specs, device, compile=bool(get_settings().score_compile))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    rows, failed = [], 0
    for chunk in iter_chunks(entries, loaded, device):
        for j, f in enumerate(chunk.scored):
            per = sorted(((float(chunk.probs[k, j]), d) for k, d in enumerate(loaded)), key=lambda t: -t[0])
            rows += [{"image": str(f.entry.path), "class": d.spec.voc_class, "probability": p, "present": p >= d.spec.threshold} for p, d in per]
        for e, reason in chunk.errors:
            click.echo(f"vocfleet: error: {e.path}: {reason}", err=True)
            failed += 1
    if rows:
        click.echo(render(rows, ["image", "class", "probability", "present"], fmt))
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("run_id", type=int, required=False)
@click.option("--fleet", is_flag=True, help="Report on the active detectors (table and training curves) instead of a run.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="HTML file to write.")
def report(run_id: int | None, fleet: bool, out: str) -> None:
    """Write a self-contained HTML page: a scoring run (RUN_ID) or the fleet's detectors (--fleet)."""
    from scheduler.report import fleet_report, run_report

    if (run_id is None) == (not fleet):
        raise ConfigError("give a scoring run id, or --fleet (not both)")
    ensure_db()
    with session_scope() as s:
        page = fleet_report(s) if fleet else run_report(s, run_id)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # never a half-written report
    click.echo(f"wrote {path} ({len(page) // 1024} KiB)")


@cli.group()
def data() -> None:
    """Get and check PASCAL VOC data."""


@data.command("download")
@click.option("--year", default="2007", help="VOC year (2007: trainval and test).")
@click.option("--dest", default=None, type=click.Path(file_okay=False), help="Folder for archives and VOCdevkit [default: VOCFLEET_DATA_DIR/voc].")
@click.option("--timeout", type=float, default=20.0, help="Seconds without data before giving up.")
def data_download(year: str, dest: str | None, timeout: float) -> None:
    """Download VOC (torchvision's archive list and MD5s), verify, extract; resumes an interrupted download."""
    from tqdm import tqdm

    from model.download import download_voc

    dest_path = Path(dest) if dest else get_settings().data_dir / "voc"
    bars: dict[str, tqdm] = {}
    tty = sys.stderr.isatty()
    last = {}

    def progress(name: str, done: int, total: int) -> None:
        if tty:
            bar = bars.setdefault(name, tqdm(desc=name, total=total or None, unit="B", unit_scale=True, file=sys.stderr, initial=done))
            bar.update(done - bar.n)
        elif done - last.get(name, 0) >= 50 << 20 or done == total:  # a line every 50 MB
            last[name] = done
            click.echo(f"{name}: {done >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""), err=True)

    try:
        root = download_voc(dest_path, year, progress=progress, timeout=timeout)
    finally:
        for bar in bars.values():
            bar.close()
    click.echo(f"VOC{year} ready at {root}; next: vocfleet data check {root}")


@data.command("check")
@click.argument("voc_root", type=click.Path())
@format_option
def data_check(voc_root: str, fmt: str) -> None:
    """Validate a VOC root: images per split, positives per class, files listed but missing."""
    from model.data import check_voc_root, voc_summary

    root = check_voc_root(voc_root)
    summary = voc_summary(root)
    if not summary["splits"]:
        raise ConfigError(f"{root}/ImageSets/Main has no <class>_<split>.txt lists: is this a VOC year folder?")
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
        return
    split_rows = [
        {"split": k, "listed": v["listed"], "present": v["present"], "missing": len(v["missing"]),
         "missing_ids": " ".join(v["missing"][:8]) + (" ..." if len(v["missing"]) > 8 else "")}
        for k, v in summary["splits"].items()
    ]
    click.echo(render(split_rows, ["split", "listed", "present", "missing", "missing_ids"], fmt))
    splits = list(summary["splits"])
    class_rows = [{"class": c, **{f"{sp}_pos": v.get(sp, {}).get("positive") for sp in splits}} for c, v in summary["classes"].items()]
    click.echo("")
    click.echo(render(class_rows, ["class", *[f"{sp}_pos" for sp in splits]], fmt))


def main() -> None:
    cli(prog_name="vocfleet")


if __name__ == "__main__":
    main()
