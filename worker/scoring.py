"""Scoring runs: scan a run's folders into shards once, then score shards, here or on any worker of the fleet.

``run_score_run`` claims the run and scans it into shards; on the embedded default it then scores
them here, one after another, and in a fleet it hands each shard to ``dispatch`` as soon as it is
written, so every score worker takes shards of the same run at once. ``run_score_shard`` claims
one shard and scores its files; each ended shard tries to end its run. No Celery here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from sqlalchemy import select

from vocfleet.db.claims import end_job
from vocfleet.db.models import Detector, JobStatus, ScoreRun, ScoreShard
from vocfleet.db.runs import add_shard, finish_run_if_done, finish_scan, scan_position
from vocfleet.db.score_writer import recorded_paths, store_chunk
from vocfleet.db.session import session_scope
from vocfleet.db.settings import get_settings
from vocfleet.model import ConfigError
from vocfleet.model.artifacts import ArtifactStore
from vocfleet.model.engine import Stopped, resolve_device
from vocfleet.model.scan import FileEntry, entry_key, iter_scan
from vocfleet.model.score import DetectorSpec, iter_chunks, load_detectors

from . import metrics
from .runner import Heartbeat, NotClaimed, Outcome, claim, crashed, failer, hand_back, requeue, show
from .safety import check_score_folder

log = logging.getLogger(__name__)
SCORE_CHUNK = 256  # files per committed chunk: a crash loses at most this much work


class RunCancelled(Stopped):
    """The shard's run was cancelled before the shard started."""


LOG_EVERY_S = 10.0  # how often a run's progress is logged at INFO
RESUMES_HERE = "interrupted; will resume where it stopped"


class Tally:
    """Files of a run finished (scored or not) of files found so far, reported to ``progress(done, total)`` as they change."""

    def __init__(self, progress: Callable[[int, int | None], None] | None, done: int = 0, total: int | None = None):
        self.progress, self.done, self.total = progress, done, total
        self.logged = time.monotonic()

    def scanned(self, files: int) -> None:
        self.total = (self.total or 0) + files
        self._emit()

    def finished(self, files: int) -> None:
        self.done += files
        self._emit()

    def _emit(self) -> None:
        if self.progress and not show(self.progress, self.done, self.total):
            self.progress = None  # the display failed: scoring goes on without it
        if time.monotonic() - self.logged >= LOG_EVERY_S or (self.total is not None and self.done >= self.total):
            self.logged = time.monotonic()  # a notebook with logging at INFO sees the run move, without a callback
            log.info("scoring: %d of %s files done", self.done, self.total if self.total is not None else "(still scanning)")


def run_score_run(  # noqa: C901 - a run's whole life in one place: claim, scan, shards here or to the fleet, every way it ends
    run_id: int,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    host: str | None = None,
    dispatch: Callable[[list[int]], None] | None = None,
) -> Outcome:
    """Scan a run into shards (resuming an interrupted scan), then score them here or hand them out.

    Args:
        run_id: the ``score_runs`` row.
        progress: optional callback ``(files finished, files found so far)``, called per file.
        host: the worker's name recorded on the rows.
        dispatch: the fleet: called with shard ids to send to the workers, each as soon as it is
            written. None: the embedded default scores every shard here, in order.
    Returns:
        The run's end (``dispatched`` in a fleet once its shards are out), or ``skipped``.
    """
    settings = get_settings()
    try:
        claimed = claim(ScoreRun, run_id, _run_fields, host)
    except NotClaimed as nothing:
        return nothing.outcome
    token, run = claimed.token, claimed.data
    tally = Tally(progress, run["done"], run["total"] if run["scanned"] else None)
    sent: set[int] = set()

    def on_shard(shard_id: int) -> None:
        if dispatch is not None:
            dispatch([shard_id])
            sent.add(shard_id)

    with Heartbeat(ScoreRun, run_id, token, settings.heartbeat_seconds) as hb:
        try:
            if not run["scanned"]:
                folders = [str(check_score_folder(f)) for f in run["folders"]]
                _scan(run_id, token, folders, run["shard_size"], hb, on_shard, tally)
            with session_scope() as s:
                shard_ids = finish_scan(s, run_id, token)
            if shard_ids is None:
                return Outcome.skipped
        except Stopped:
            if hb.state == "cancel":
                with session_scope() as s:
                    end_job(s, ScoreRun, run_id, token, JobStatus.cancelled, "cancelled by user")
                return Outcome.cancelled
            return requeue(ScoreRun, run_id, token) if hb.draining() else Outcome.skipped
        except BaseException as exc:  # noqa: BLE001 - crashed() raises again what it does not end (a folder gone: fails once)
            back = lambda: hand_back(ScoreRun, run_id, token, RESUMES_HERE)
            return crashed(exc, what=f"scoring run {run_id} (scanning)", fail=failer(ScoreRun, run_id, token), back=back)
    if dispatch is not None:
        unsent = [i for i in shard_ids if i not in sent]  # a resumed run: shards written by an earlier scan
        if unsent:
            dispatch(unsent)
    else:
        for shard_id in shard_ids:
            if run_score_shard(shard_id, tally=tally, host=host) == Outcome.cancelled:
                break
    with session_scope() as s:
        status = finish_run_if_done(s, run_id)  # a run of no files ends here
        if status is None and dispatch is None:
            status = s.get(ScoreRun, run_id).status
    return Outcome(status.value) if status is not None else Outcome.dispatched


def _run_fields(r: ScoreRun) -> dict:
    return {"folders": list(r.folders), "scanned": r.scanned, "shard_size": r.shard_size, "done": r.scored_images + r.error_files, "total": r.total_files}


def _scan(run_id: int, token: str, folders: list[str], shard_size: int, hb: Heartbeat, on_shard, tally: Tally) -> None:
    """Write the run's shards, resuming after the last file of the last shard an earlier scan wrote."""
    with session_scope() as s:
        position = scan_position(s, run_id, token)
    if position is None:
        raise Stopped("claim lost")
    number, last, tally.total = position
    after = entry_key(last[0], last[1]) if last else None
    batch: list[list] = []

    def flush() -> None:
        nonlocal number
        if hb.should_stop():
            raise Stopped("stopped while scanning")
        with session_scope() as s:
            shard_id = add_shard(s, run_id, token, number, batch)
        if shard_id is None:
            raise Stopped("claim lost")
        number += 1
        on_shard(shard_id)

    for item in iter_scan(folders, after):
        batch.append([item.folder_index, item.entry.rel_path, item.reason])
        tally.scanned(1)
        if len(batch) == shard_size:
            flush()
            batch = []
    if batch:
        flush()


def run_score_shard(shard_id: int, *, tally: Tally | None = None, host: str | None = None) -> Outcome:
    """Score one shard's files with its run's detectors; resumes where an earlier attempt stopped.

    ``tally``: the embedded run's progress, told of each file finished.

    Returns:
        The shard's end, or ``skipped`` when another worker holds it.
    """
    settings = get_settings()
    try:
        claimed = claim(ScoreShard, shard_id, lambda sh: sh.run_id, host)
    except NotClaimed as nothing:
        return nothing.outcome
    token, run_id = claimed.token, claimed.data

    def end(status: JobStatus, reason: str | None) -> Outcome:
        with session_scope() as s:
            ended = end_job(s, ScoreShard, shard_id, token, status, reason)
        with session_scope() as s:
            finish_run_if_done(s, run_id)
        return Outcome(status.value) if ended else Outcome.skipped

    with Heartbeat(ScoreShard, shard_id, token, settings.heartbeat_seconds) as hb:
        try:
            _score_shard(shard_id, token, run_id, hb, tally or Tally(None))
        except Stopped as exc:
            cancelled = isinstance(exc, RunCancelled) or hb.state == "cancel"
            if cancelled:
                return end(JobStatus.cancelled, "cancelled by user")
            return requeue(ScoreShard, shard_id, token) if hb.draining() else Outcome.skipped
        except BaseException as exc:  # noqa: BLE001 - crashed() raises again what it does not end (a detector file gone: fails once)
            return crashed(
                exc,
                what=f"shard {shard_id} of scoring run {run_id}",
                fail=lambda reason: end(JobStatus.failed, reason),
                back=partial(hand_back, ScoreShard, shard_id, token, RESUMES_HERE),
            )
    return end(JobStatus.succeeded, None)


def _score_shard(shard_id: int, token: str, run_id: int, hb: Heartbeat, tally: Tally) -> None:
    with session_scope() as s:
        run = s.get(ScoreRun, run_id)
        if run.cancel_requested:
            raise RunCancelled("the run was cancelled")
        folders, detector_ids, batch_size = list(run.folders), list(run.detector_ids), run.batch_size
        files = s.get(ScoreShard, shard_id).files
        dets = {d.id: d for d in s.scalars(select(Detector).where(Detector.id.in_(detector_ids)))}
        missing = [i for i in detector_ids if i not in dets]
        if missing:
            raise ConfigError(f"detector(s) {missing} no longer exist: submit a new scoring run")
        specs = [DetectorSpec.of(dets[i]) for i in detector_ids]
    for folder in folders:
        check_score_folder(folder)  # again, on this worker: the folder may have moved since the scan
    listed = [(folders[index], rel_path, reason) for index, rel_path, reason in files]
    with session_scope() as s:
        already = recorded_paths(s, run_id, [(f, p) for f, p, _ in listed])
    todo = [FileEntry(f, p) for f, p, reason in listed if reason is None and (f, p) not in already]
    pending_errors = [{"folder": f, "rel_path": p, "reason": reason} for f, p, reason in listed if reason is not None and (f, p) not in already]
    device = resolve_device()
    settings = get_settings()
    loaded = load_detectors(specs, device, compile=settings.score_compile, store=ArtifactStore.from_settings(settings))
    started = time.monotonic()  # a chunk's time: decoding and the detectors (inside the iterator), then the write
    for chunk in iter_chunks(todo, loaded, device, chunk_size=SCORE_CHUNK, batch_size=batch_size, threads=settings.decode_threads, on_files=tally.finished):
        if hb.should_stop():
            raise Stopped("stopped between chunks")
        images = [
            {"folder": f.entry.folder, "rel_path": f.entry.rel_path, "size_bytes": f.size_bytes, "sha256": f.sha256, "width": f.width, "height": f.height}
            for f in chunk.scored
        ]
        scores = [
            [(d.spec.id, d.spec.voc_class, float(chunk.probs[k, j]), bool(chunk.probs[k, j] >= d.spec.threshold)) for k, d in enumerate(loaded)]
            for j in range(len(chunk.scored))
        ]
        errors = pending_errors + [{"folder": e.folder, "rel_path": e.rel_path, "reason": r} for e, r in chunk.errors]
        with session_scope() as s:
            if not store_chunk(s, shard_id, token, images, scores, errors):
                raise Stopped("claim lost")
        metrics.IMAGES_SCORED.inc(len(images))
        metrics.FILES_ERRORED.inc(len(errors))
        metrics.CHUNK_SECONDS.observe(time.monotonic() - started)
        started = time.monotonic()
        tally.finished(len(pending_errors))  # the scan's errors, written with this chunk
        pending_errors = []
    if pending_errors:  # nothing left to decode, only the scan's errors to record
        with session_scope() as s:
            if not store_chunk(s, shard_id, token, [], [], pending_errors):
                raise Stopped("claim lost")
        metrics.FILES_ERRORED.inc(len(pending_errors))
        tally.finished(len(pending_errors))
