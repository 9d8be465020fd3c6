"""Scoring runs: scan a run's folders into shards once, then score shards, here or on any worker of the fleet.

``run_score_run`` claims the run and scans it into shards; on the embedded default it then scores
them here, one after another, and in a fleet it hands each shard to ``dispatch`` as soon as it is
written, so every score worker takes shards of the same run at once. ``run_score_shard`` claims
one shard and scores its files; each ended shard tries to end its run. No Celery here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import select

from vocfleet.db.claims import end_job
from vocfleet.db.models import Detector, JobStatus, ScoreRun, ScoreShard
from vocfleet.db.reuse import Known, earlier_runs, known_pictures, sha_by_path
from vocfleet.db.runs import add_shard, finish_run_if_done, finish_scan, scan_position
from vocfleet.db.score_writer import recorded_paths, store_chunk
from vocfleet.db.session import session_scope
from vocfleet.db.settings import get_settings
from vocfleet.model import ConfigError
from vocfleet.model.artifacts import ArtifactStore
from vocfleet.model.engine import Stopped, resolve_device
from vocfleet.model.scan import MAX_FILE_BYTES, FileEntry, UnsafeFile, entry_key, iter_scan, read_inside
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
        folders, detector_ids, batch_size, fresh = list(run.folders), list(run.detector_ids), run.batch_size, run.fresh
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
    writer = _ShardWriter(shard_id, token, hb, tally, specs, pending_errors)
    plan = _plan(run_id, todo, detector_ids) if not fresh else _Plan(stats={e: m for e, (_, m) in _sizes(todo).items()}, compute={(): todo})
    for chunk_start in range(0, len(plan.reused), SCORE_CHUNK):  # known pictures: no decode, no detector
        part = plan.reused[chunk_start : chunk_start + SCORE_CHUNK]
        writer.write([(e, k.sha256, k.width, k.height, k.size_bytes, plan.stats.get(e), k.scores) for e, k in part], [], reused=len(part))
        tally.finished(len(part))
    if not plan.compute:  # every picture known: no detector is loaded
        writer.flush_errors()
        return
    settings = get_settings()
    device = resolve_device()
    loaded = load_detectors(specs, device, compile=settings.score_compile, store=ArtifactStore.from_settings(settings))
    compute = partial(_compute, writer, device=device, batch_size=batch_size, threads=settings.decode_threads, stats=plan.stats)
    changed = [e for have, entries in plan.compute.items() for e in compute(entries, [d for d in loaded if d.spec.id not in have], plan.known if have else {})]
    if changed:  # a file changed under an unchanged size and time: every detector after all
        compute(changed, loaded, {}, counted=False)
    writer.flush_errors()


def _compute(writer: _ShardWriter, entries, detectors, known, *, device, batch_size: int, threads: int, stats, counted: bool = True) -> list[FileEntry]:
    """Decode ``entries`` and run ``detectors`` (those the pictures lack), merged with what ``known`` holds of each.

    Returns the entries whose content is not the content ``known`` has (they need every detector).
    """
    changed = []
    tally = writer.tally.finished if counted else None  # a file decoded again is not counted again
    for chunk in iter_chunks(entries, detectors, device, chunk_size=SCORE_CHUNK, batch_size=batch_size, threads=threads, on_files=tally):
        rows = []
        for j, f in enumerate(chunk.scored):
            earlier = known.get(f.entry)
            if known and (earlier is None or earlier.sha256 != f.sha256):
                changed.append(f.entry)
                continue
            scores = dict(earlier.scores) if earlier else {}
            scores.update({d.spec.id: d.spec.answer(chunk.probs[k, j]) for k, d in enumerate(detectors)})
            rows.append((f.entry, f.sha256, f.width, f.height, f.size_bytes, stats.get(f.entry), scores))
        writer.write(rows, chunk.errors)
    return changed


@dataclass
class _Plan:
    """A shard's files sorted by what earlier runs know: reused whole, or computed for the detectors they lack."""

    stats: dict[FileEntry, int] = field(default_factory=dict)  # mtime_ns as the file is now
    reused: list[tuple[FileEntry, Known]] = field(default_factory=list)
    compute: dict[tuple[int, ...], list[FileEntry]] = field(default_factory=dict)  # detectors it has -> files
    known: dict[FileEntry, Known] = field(default_factory=dict)


def _sizes(entries: list[FileEntry]) -> dict[FileEntry, tuple[int, int]]:
    """(size, mtime_ns) of each file as it is now; a file gone or unreadable is left out (decoding records why)."""
    out = {}
    for e in entries:
        try:
            st = os.stat(e.path)
        except OSError:
            continue
        out[e] = (st.st_size, st.st_mtime_ns)
    return out


def _plan(run_id: int, todo: list[FileEntry], detector_ids: list[int]) -> _Plan:
    """What earlier runs know of ``todo``: by path where size and time are unchanged (unread), else by content (hashed here)."""
    sizes = _sizes(todo)
    sha: dict[FileEntry, str] = {}
    with session_scope() as s:
        for folder in {e.folder for e in todo}:
            runs = earlier_runs(s, run_id, folder)
            mine = {e.rel_path: sizes[e] for e in todo if e.folder == folder and e in sizes}
            if runs and mine:
                sha.update({FileEntry(folder, p): h for p, h in sha_by_path(s, runs, folder, mine).items()})
    for e in todo:  # not recognised by path: hash it (reading is cheap beside decoding), to find a renamed or copied picture
        if e not in sha and e in sizes:
            try:
                sha[e] = hashlib.sha256(read_inside(e.folder, e.rel_path, MAX_FILE_BYTES)).hexdigest()
            except (OSError, UnsafeFile):
                pass  # decoding records why
    with session_scope() as s:
        known = known_pictures(s, sha.values(), detector_ids) if sha else {}
    plan = _Plan(stats={e: m for e, (_, m) in sizes.items()})
    for e in todo:
        k = known.get(sha.get(e, ""))
        have = tuple(sorted(k.scores)) if k is not None else ()
        if k is not None and len(have) == len(detector_ids):
            plan.reused.append((e, k))
        else:
            plan.compute.setdefault(have, []).append(e)
            if k is not None:
                plan.known[e] = k
    return plan


class _ShardWriter:
    """Writes a shard's rows chunk by chunk under its claim: pictures, their scores in the run's detector order, errors."""

    def __init__(self, shard_id: int, token: str, hb: Heartbeat, tally: Tally, specs: list[DetectorSpec], pending_errors: list[dict]):
        self.shard_id, self.token, self.hb, self.tally, self.specs = shard_id, token, hb, tally, specs
        self.pending_errors = pending_errors  # the scan's errors, written with the first chunk
        self.started = time.monotonic()

    def write(self, rows: list[tuple], errors: list[tuple[FileEntry, str]], reused: int = 0) -> None:
        """``rows``: (entry, sha256, width, height, size, mtime_ns, {detector id: (probability, present)})."""
        if self.hb.should_stop():
            raise Stopped("stopped between chunks")
        images = [
            {"folder": e.folder, "rel_path": e.rel_path, "size_bytes": size, "sha256": sha, "width": w, "height": h, "mtime_ns": mtime}
            for e, sha, w, h, size, mtime, _ in rows
        ]
        scores = [[(d.id, d.voc_class, *sc[d.id]) for d in self.specs] for *_, sc in rows]
        errs = self.pending_errors + [{"folder": e.folder, "rel_path": e.rel_path, "reason": r} for e, r in errors]
        with session_scope() as s:
            if not store_chunk(s, self.shard_id, self.token, images, scores, errs, reused=reused):
                raise Stopped("claim lost")
        metrics.IMAGES_SCORED.inc(len(images))
        metrics.FILES_ERRORED.inc(len(errs))
        metrics.CHUNK_SECONDS.observe(time.monotonic() - self.started)
        self.started = time.monotonic()
        self.tally.finished(len(self.pending_errors))
        self.pending_errors = []

    def flush_errors(self) -> None:
        """The scan's errors, when nothing was left to write them with."""
        if self.pending_errors:
            self.write([], [])
