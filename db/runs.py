"""Scoring runs and their shards: create, scan into shards, finish, reopen, cancel.

A run is scanned once, by the worker that claims it, into shards of ``shard_size`` files in a
stable order (:func:`add_shard`, guarded by the run's claim). The scan then releases the run
(:func:`finish_scan`): it stays ``running``, unclaimed, while any worker claims its shards, and
:func:`finish_run_if_done` ends it when the last shard ends.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from vocfleet.model import ConfigError

from .claims import cancel_work, clock, is_stale, owned
from .models import Detector, JobStatus, Score, ScoreRun, ScoreShard, utcnow
from .states import UNFINISHED, Labels, as_utc


@dataclass(frozen=True)
class RunState:
    """Where one scoring run stands, as a command shows it."""

    id: int
    status: JobStatus
    classes: list[str]
    total_files: int | None
    scored_images: int
    error_files: int
    error: str | None
    reused: int = 0  # of scored_images, taken from earlier runs


def run_state(s: Session, run_id: int) -> RunState | None:
    """A scoring run's status and counts, or None if there is no such run."""
    run = s.get(ScoreRun, run_id)
    if run is None:
        return None
    return RunState(run.id, run.status, list(run.classes), run.total_files, run.scored_images, run.error_files, run.error, run.reused)


def missing_run(run_id: int) -> ConfigError:
    """The one line for a scoring run id that names none."""
    return ConfigError(f"no scoring run {run_id}: see 'vocfleet runs'")


def scoring_run(s: Session, run_id: int) -> ScoreRun:
    """The scoring run ``run_id``.

    Raises:
        ConfigError: there is none (:func:`missing_run`).
    """
    run = s.get(ScoreRun, run_id)
    if run is None:
        raise missing_run(run_id)
    return run


def create_run(
    s: Session,
    folders: list[str],
    detectors: Sequence[Detector],
    *,
    batch_size: int,
    max_attempts: int,
    shard_size: int = 2000,
    labels: Labels | None = None,
    fresh: bool = False,
) -> ScoreRun:
    """Add a queued scoring run of ``folders`` with ``detectors`` (and ``labels``: name, tags, note); its id is set on return.

    A picture an earlier run scored (the same content) is not decoded again: its scores are taken
    for the detectors that scored it, and only the others run; ``fresh``: decode and score everything.

    Folders are stored with links resolved (``/tmp`` on macOS is one), as the CLI does: the scan
    refuses a link that leads out of its folder, and a folder named through a link would be one.
    """
    run = ScoreRun(
        folders=[os.path.realpath(os.path.expanduser(f)) for f in folders],
        classes=[d.voc_class for d in detectors],
        detector_ids=[d.id for d in detectors],
        batch_size=batch_size,
        max_attempts=max_attempts,
        shard_size=shard_size,
        name=labels.name if labels else None,
        tags=(labels.tags or None) if labels else None,
        note=labels.note if labels else None,
        class_counts={d.voc_class: 0 for d in detectors},  # counted as chunks land (score_writer.store_chunk)
        fresh=fresh,
    )
    s.add(run)
    s.flush()
    return run


def scan_position(s: Session, run_id: int, token: str) -> tuple[int, list[Any] | None, int] | None:
    """Where the run's scan stands: (shards written, the last file of the last shard, files in them); None if the claim is lost.

    A scan that starts from nothing resets ``total_files`` (a run from before shards counted
    differently; the files it already recorded stay recorded and are skipped, not counted again).
    """
    run = owned(s, ScoreRun, run_id, token)
    if run is None:
        return None
    last = s.scalar(select(ScoreShard).where(ScoreShard.run_id == run_id).order_by(ScoreShard.number.desc()).limit(1))
    if last is None:
        run.total_files = 0
        return 0, None, 0
    return last.number + 1, last.files[-1], run.total_files


def add_shard(s: Session, run_id: int, token: str, number: int, files: list[list[Any]]) -> int | None:
    """Write shard ``number`` of a run being scanned and count its files; None if the run's claim is lost."""
    run = owned(s, ScoreRun, run_id, token)
    if run is None:
        return None
    shard = ScoreShard(run_id=run_id, number=number, files=files, total_files=len(files), max_attempts=run.max_attempts)
    s.add(shard)
    run.total_files = (run.total_files or 0) + len(files)
    s.flush()
    return shard.id


def finish_scan(s: Session, run_id: int, token: str) -> list[int] | None:
    """Mark the scan complete and release the run to its shards; returns the queued shard ids (None: claim lost)."""
    run = owned(s, ScoreRun, run_id, token)
    if run is None:
        return None
    run.scanned, run.claim_token = True, None
    return queued_shards(s, run_id)


def queued_shards(s: Session, run_id: int) -> list[int]:
    return list(
        s.scalars(
            select(ScoreShard.id)
            .where(ScoreShard.run_id == run_id, ScoreShard.status == JobStatus.queued, ScoreShard.cancel_requested.is_(False))
            .order_by(ScoreShard.number)
        )
    )


def finish_run_if_done(s: Session, run_id: int) -> JobStatus | None:
    """End a scanned run whose shards have all ended; returns its final status, or None if it goes on.

    Failed if any shard failed (with the first failure's reason), cancelled if a cancel was asked
    for, else succeeded. The run row is locked first, so of two shards ending at once the one that
    commits last sees the other finished and ends the run.
    """
    run = s.get(ScoreRun, run_id, with_for_update=True)
    if run is None or not run.scanned or run.status != JobStatus.running:
        return None
    counts = dict(s.execute(select(ScoreShard.status, func.count()).where(ScoreShard.run_id == run_id).group_by(ScoreShard.status)).all())
    if any(counts.get(st) for st in UNFINISHED):
        return None
    if counts.get(JobStatus.failed):
        first = s.scalar(select(ScoreShard).where(ScoreShard.run_id == run_id, ScoreShard.status == JobStatus.failed).order_by(ScoreShard.number).limit(1))
        run.status, run.error = JobStatus.failed, f"shard {first.number}: {first.error}"
    elif counts.get(JobStatus.cancelled) or run.cancel_requested:
        run.status, run.error = JobStatus.cancelled, "cancelled by user"
    else:
        run.status, run.error = JobStatus.succeeded, None
    run.finished_at = utcnow()
    if run.class_counts is None:  # a run begun before 0.10 kept none as its chunks landed: counted once, here
        run.class_counts = class_presence(s, run_id)
    return run.status


def class_presence(s: Session, run_id: int) -> dict[str, int]:
    """Per class, how many of a run's pictures have it (the present rows of the scores index)."""
    q = select(Score.voc_class, func.count()).where(Score.run_id == run_id, Score.present.is_(True)).group_by(Score.voc_class)
    return dict(s.execute(q).all())


def running_runs(s: Session) -> list[int]:
    """Scanned runs still running: the reaper ends those whose shards have all ended."""
    return list(s.scalars(select(ScoreRun.id).where(ScoreRun.status == JobStatus.running, ScoreRun.scanned.is_(True))))


def cancel_runs(s: Session, ids: list[int]) -> tuple[list[int], list[int]]:
    """Cancel scoring runs and their shards: queued ones at once, running ones at their workers' next heartbeat.

    Returns:
        (runs cancelled now, runs whose cancel was asked of a running worker).
    """
    now, asked = cancel_work(s, ScoreRun, ids)
    if now or asked:
        cancel_shards(s, now + asked)
        for run_id in asked:  # a scanned run whose shards just ended as cancelled ends now
            finish_run_if_done(s, run_id)
    return now, asked


def cancel_shards(s: Session, run_ids: list[int]) -> None:
    """A run's cancel reaches its shards: queued ones end now, running ones at their next heartbeat."""
    now = utcnow()
    base = update(ScoreShard).where(ScoreShard.run_id.in_(run_ids))
    s.execute(
        base.where(ScoreShard.status == JobStatus.queued).values(
            status=JobStatus.cancelled, cancel_requested=True, finished_at=now, error="cancelled by user before it started"
        )
    )
    s.execute(base.where(ScoreShard.status == JobStatus.running).values(cancel_requested=True))


def last_heartbeat(s: Session, run_id: int) -> tuple[datetime | None, str | None]:
    """The newest heartbeat of a run's running rows (its scanner, its shards), and the worker that sent it."""
    beats = [
        (row.heartbeat_at, row.worker_host)
        for table, where in ((ScoreRun, ScoreRun.id == run_id), (ScoreShard, ScoreShard.run_id == run_id))
        for row in s.scalars(select(table).where(where, table.status == JobStatus.running, table.heartbeat_at.is_not(None)))
    ]
    return max(beats, key=lambda b: as_utc(b[0]), default=(None, None))


class Reopen(enum.Enum):
    """What :func:`reopen_run` found."""

    missing = "missing"
    finished = "finished"  # succeeded already: nothing to do
    running = "running"  # a live worker holds it or one of its shards
    ready = "ready"  # queued (again): run or send it


def reopen_run(s: Session, run_id: int, stale_after: timedelta) -> tuple[Reopen, ScoreRun | None]:
    """Put a failed, cancelled or abandoned run back in the queue, with the shards that did not succeed.

    Abandoned: its scanner's or a shard's heartbeat is older than ``stale_after``. Unlike
    :func:`vocfleet.db.claims.reap_stale`, rows that used up their attempts are queued too: a person
    asked for it. Shards that succeeded, and files already recorded, are not redone.
    """
    run = s.get(ScoreRun, run_id, with_for_update=True)
    if run is None:
        return Reopen.missing, None
    if run.status == JobStatus.succeeded:
        return Reopen.finished, run
    shards = list(s.scalars(select(ScoreShard).where(ScoreShard.run_id == run_id, ScoreShard.status != JobStatus.succeeded).with_for_update()))
    now = clock(s)
    live = [sh for sh in shards if sh.status == JobStatus.running and not is_stale(sh, stale_after, now)]
    scanning = run.status == JobStatus.running and run.claim_token is not None
    if live or (scanning and not is_stale(run, stale_after, now)):
        return Reopen.running, run
    for sh in shards:
        sh.status, sh.claim_token, sh.cancel_requested, sh.finished_at, sh.error = JobStatus.queued, None, False, None, None
        sh.attempts = 0
    run.status, run.claim_token, run.cancel_requested, run.finished_at, run.error = JobStatus.queued, None, False, None, None
    run.attempts = 0
    run.class_counts = class_presence(s, run_id)  # what its chunks wrote so far; its next chunks add to it
    return Reopen.ready, run
