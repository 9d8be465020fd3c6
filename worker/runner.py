"""The runner: claim a row, call ``vocfleet.model``, record the result. No Celery here.

``vocfleet run`` (the embedded default) calls these functions in-process; the Celery tasks in
``tasks.py`` are thin wrappers around the same functions, so both paths run the same code.
Training is here; scoring runs and shards are in ``scoring.py``.
"""

from __future__ import annotations

import enum
import logging
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import OperationalError

from vocfleet.db.claims import Work, claim_job, end_job, heartbeat
from vocfleet.db.models import JobStatus, TrainJob
from vocfleet.db.session import DatabaseGone, session_scope
from vocfleet.db.settings import get_settings
from vocfleet.db.training import finish_job, finish_start, record_epoch, record_resumed
from vocfleet.model import ConfigError, StoreUnavailable
from vocfleet.model.artifacts import RESUME_FILES, ArtifactStore
from vocfleet.model.checkpoint import DiskFull
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import START_FILE, FitResult, StartResult, Stopped, fit, fit_start
from vocfleet.model.events import EpochFinished, Event, FitResumed, Progress

from . import metrics
from .drain import DRAIN

log = logging.getLogger(__name__)
T = TypeVar("T")

HANDED_BACK = "handed back by a worker shutting down; another worker resumes it"


def requeue(table: Work, row_id: int, token: str) -> Outcome:
    """Hand a row back and send it to the broker again at once (not after the stale timeout)."""
    from .dispatch import enqueue

    hand_back(table, row_id, token, HANDED_BACK)
    enqueue(table, [row_id])
    log.warning("%s %d: %s", table.__tablename__, row_id, HANDED_BACK)
    return Outcome.queued


class Outcome(enum.StrEnum):
    """How one call of a runner ended (a ``StrEnum``: it compares equal to its name)."""

    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    queued = "queued"  # handed back (interrupted); it resumes on the next delivery
    dispatched = "dispatched"  # a scoring run scanned into shards that the fleet now scores
    skipped = "skipped"  # another worker holds the row, or this one lost its claim
    missing = "missing"  # no such row


class Heartbeat:
    """Background thread that keeps the job's heartbeat fresh and notices cancel or a lost claim."""

    def __init__(self, table: Work, job_id: int, token: str, interval: float):
        self.table, self.job_id, self.token, self.interval = table, job_id, token, interval
        self.state = "ok"
        self.gone: DatabaseGone | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with session_scope() as s:
                    self.state = heartbeat(s, self.table, self.job_id, self.token)
                metrics.HEARTBEATS.labels(self.table.__tablename__).inc()
                metrics.LAST_HEARTBEAT.set_to_current_time()
            except OperationalError as exc:  # database briefly away: try again next beat
                log.warning("heartbeat for job %d failed: %s", self.job_id, exc)
            except DatabaseGone as exc:  # the SQLite file was deleted: nothing this job writes can be kept
                self.state, self.gone = "gone", exc
                return
            if self.state != "ok":
                return

    def should_stop(self) -> bool:
        return self.state != "ok" or DRAIN.is_set()

    def draining(self) -> bool:
        """Stopped because this worker is shutting down, still holding the row (not cancelled, not lost)."""
        return DRAIN.is_set() and self.state == "ok"

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# Bad input, a full disk, storage away past its retries: the work fails once, with the reason as it is; 'retry' resumes it.
FAILS_WITH_REASON = (ConfigError, FloatingPointError, DiskFull, StoreUnavailable)


RESUMES = "interrupted; will resume from the last checkpoint"


def failer(table: Work, row_id: int, token: str) -> Callable[[str], Outcome]:
    """``fail(reason)`` for :func:`crashed`: the owned row ends failed with the reason."""

    def fail(reason: str) -> Outcome:
        with session_scope() as s:
            end_job(s, table, row_id, token, JobStatus.failed, reason)
        return Outcome.failed

    return fail


def crashed(exc: BaseException, *, what: str, fail: Callable[[str], Outcome], back: Callable[[], None], trace: bool = False) -> Outcome:
    """How a unit of work ends on an exception other than ``Stopped``: the one chain every runner shares.

    ``fail(reason)`` records it failed; ``back()`` hands it back to the queue. An interrupt or a
    database that stopped answering hands it back and is raised again; a database that is gone is
    raised as it is (nothing can be recorded: the command says so in one line); any other crash
    is recorded with its class, its message and, with ``trace``, the last frames.
    """
    if isinstance(exc, FAILS_WITH_REASON):
        return fail(str(exc))
    if isinstance(exc, KeyboardInterrupt | OperationalError):
        back()
        raise exc
    if isinstance(exc, DatabaseGone) or not isinstance(exc, Exception):
        raise exc
    log.exception("%s failed", what)
    return fail(f"{exc.__class__.__name__}: {exc}" + (f"\n{traceback.format_exc(limit=3)}" if trace else ""))


def run_train_job(job_id: int, progress: Progress | None = None, host: str | None = None) -> Outcome:  # noqa: C901 - a job's whole life in one place: claim, start or detector, every way it ends
    """Run one training job to its end state; safe to call again for the same id (at-least-once delivery).

    Args:
        job_id: the ``train_jobs`` row.
        progress: optional extra callback receiving ``fit``'s progress events (the CLI's bar).
        host: the worker's name recorded on the row (default: this machine's host name).
    Returns:
        What happened; ``skipped`` when another worker holds the job.
    """
    settings = get_settings()
    try:
        claimed = claim(TrainJob, job_id, read_job, host)
    except NotClaimed as nothing:
        return nothing.outcome
    token, (config, key, start_file) = claimed.token, claimed.data
    try:
        cfg = TrainConfig.from_dict(config)  # old rows read as they ran: the one place that knows them
    except ConfigError as exc:  # a row this version cannot read fails once, with the reason
        with session_scope() as s:
            end_job(s, TrainJob, job_id, token, JobStatus.failed, f"its stored settings cannot be read: {exc}")
        return Outcome.failed
    store = ArtifactStore.from_settings(settings)
    # Under a key unique across databases: two databases sharing one store never share a job's files.
    out_dir = store.job_dir(key)

    on_progress = _recorder(job_id, token, cfg, store, key, progress)

    with Heartbeat(TrainJob, job_id, token, settings.heartbeat_seconds) as hb:
        try:
            store.pull(key)  # on object storage: the last epoch any host finished
            run = dict(out_dir=out_dir, cache_dir=settings.cache_dir, progress=on_progress, should_stop=hb.should_stop, job_key=key)
            if cfg.is_start:
                result = fit_start(cfg, **run)
                location = store.push(key, [START_FILE])[START_FILE]  # where its class jobs fetch it from
            else:
                if cfg.start and start_file is None:  # its start's row was deleted (the column is then NULL)
                    raise ConfigError(f"job {job_id}: its start (key {cfg.start}) is gone from the database; submit the class again with --start new")
                weights = store.local_copy(*start_file) if start_file else None  # checked against its sha256
                result = publish(store, key, fit(cfg, start_weights=weights, **run))
        except Stopped:
            if hb.gone is not None:
                raise hb.gone from None
            if hb.state == "cancel":
                with session_scope() as s:
                    end_job(s, TrainJob, job_id, token, JobStatus.cancelled, "cancelled by user")
                return Outcome.cancelled
            if hb.draining():  # the checkpoint of the last epoch is where another worker resumes
                return requeue(TrainJob, job_id, token)
            log.warning("job %d: claim lost (reaped or re-delivered); leaving it to its new owner", job_id)
            return Outcome.skipped
        except BaseException as exc:  # noqa: BLE001 - crashed() raises again what it does not end
            back = partial(hand_back, TrainJob, job_id, token, RESUMES)
            return crashed(exc, what=f"job {job_id}", fail=failer(TrainJob, job_id, token), back=back, trace=True)
    if isinstance(result, StartResult):
        with session_scope() as s:
            ready = finish_start(s, job_id, token, location, result.sha256, result.metrics["map"])
        if ready is None:
            return Outcome.skipped
        from .dispatch import enqueue

        enqueue(TrainJob, ready)  # its class jobs, waiting until now (a lost message: the scheduler re-sends them)
    else:
        with session_scope() as s:
            if finish_job(s, job_id, token, result) is None:
                return Outcome.skipped
    store.drop_resume_files(key)  # the detector is recorded: last.pt and best.pt (2-3x its size) are not needed again
    return Outcome.succeeded


def _recorder(job_id: int, token: str, cfg: TrainConfig, store: ArtifactStore, key: str, progress: Progress | None) -> Progress:
    """The training job's progress callback: each epoch's files pushed, then its row written (guarded by the claim token), then shown."""

    def on_progress(event: Event) -> None:
        if isinstance(event, EpochFinished):
            store.push(key, RESUME_FILES)  # first: the row never counts an epoch that a resume could not find
            with session_scope() as s:
                record_epoch(s, job_id, token, event.record)
            metrics.EPOCHS.labels(cfg.voc_class).inc()
            metrics.EPOCH_SECONDS.observe(event.record.seconds)
            r = event.record  # a notebook with logging at INFO sees each epoch, without a callback
            log.info("job %d (%s): epoch %d/%d, loss %.4f, val AP %.3f, %.1f s", job_id, cfg.voc_class, r.epoch, cfg.epochs, r.train_loss, r.val_ap, r.seconds)
        elif isinstance(event, FitResumed):  # a worker killed between its push and its row: the epoch is recorded now
            with session_scope() as s:
                record_resumed(s, job_id, token, event.history)
        show(progress, event)

    return on_progress


def read_job(job: TrainJob) -> tuple[dict[str, Any], str, tuple[str, str] | None]:
    """What a claimed training job needs: its config, its key, and its start's ``start.pt`` (location, sha256) if it has one."""
    start = job.start_job
    return dict(job.config), job.key, (start.start_file, start.start_sha256) if start is not None else None


def publish(store: ArtifactStore, key: str, result: FitResult) -> FitResult:
    """The job's detector and plots in the store; the result pointing at them there."""
    names = {Path(p).name: k for k, p in result.plots.items()}
    stored = store.push(key, [Path(result.checkpoint).name, *names])
    return replace(result, checkpoint=stored[Path(result.checkpoint).name], plots={k: stored[n] for n, k in names.items() if n in stored})


def show(progress: Callable[..., None] | None, *args: Any) -> bool:
    """Call a display callback; if it fails (stdout piped to ``head`` and closed), the work goes on without it.

    Returns:
        False once the display has failed, so the caller can stop calling it.
    """
    if progress is None:
        return False
    try:
        progress(*args)
        return True
    except Exception as exc:  # noqa: BLE001 - a broken pipe, a closed terminal: the display's problem, not the job's
        log.warning("progress display failed (%s: %s); carrying on without it", exc.__class__.__name__, exc)
        return False


def hand_back(table: Work, row_id: int, token: str, reason: str) -> None:
    """Interrupted, or the database went away: queue the row again so it resumes where it stopped.

    If the database cannot be reached, the reaper requeues it once its heartbeat goes stale.
    """
    try:
        with session_scope() as s:
            end_job(s, table, row_id, token, JobStatus.queued, reason)
    except OperationalError:
        pass


@dataclass(frozen=True)
class Claim(Generic[T]):
    """A row this worker now holds: its claim token and what ``read`` took from the row under the claim."""

    token: str
    data: T


class NotClaimed(Exception):
    """Nothing to run: the row is missing, finished, or held by another worker (``outcome`` says which)."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.value)
        self.outcome = outcome


def claim(table: Work, row_id: int, read: Callable[[Any], T], host: str | None) -> Claim[T]:
    """Claim a queued row and read what the runner needs from it in the same transaction.

    Raises:
        NotClaimed: with the outcome to report when there is nothing to run.
    """
    with session_scope() as s:
        row = s.get(table, row_id)
        if row is None:
            log.warning("%s %d does not exist; nothing to do", table.__tablename__, row_id)
            raise NotClaimed(Outcome.missing)
        if row.status != JobStatus.queued:
            log.info("%s %d is %s; not running it again", table.__tablename__, row_id, row.status.value)
            raise NotClaimed(Outcome(row.status.value) if row.status.finished else Outcome.skipped)
        token = claim_job(s, table, row_id, host or socket.gethostname())
        if token is None:
            raise NotClaimed(Outcome.skipped)
        return Claim(token, read(row))
