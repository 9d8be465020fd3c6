"""Scoring runs in the database: what is done already, and one bulk write per chunk."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session

from .jobs import is_stale, owned
from .models import Detector, FileError, JobStatus, Score, ScoredImage, ScoreRun


def done_paths(s: Session, run_id: int) -> set[tuple[str, str]]:
    """(folder, rel_path) of every file this run already recorded, scored or failed."""
    scored = s.execute(select(ScoredImage.folder, ScoredImage.rel_path).where(ScoredImage.run_id == run_id))
    failed = s.execute(select(FileError.folder, FileError.rel_path).where(FileError.run_id == run_id))
    return {tuple(r) for r in scored} | {tuple(r) for r in failed}


def store_chunk(
    s: Session,
    run_id: int,
    token: str,
    images: Sequence[dict[str, Any]],
    scores: Sequence[Sequence[tuple[int, str, float, bool]]],
    errors: Sequence[dict[str, str]],
) -> bool:
    """Write one chunk in one transaction: images, their scores, and per-file errors.

    Args:
        s: session (the caller commits; a crash before that loses only this chunk).
        run_id: the run; ``token`` must still hold its claim.
        images: rows for :class:`ScoredImage` (folder, rel_path, size_bytes, sha256, width, height).
        scores: per image, (detector_id, voc_class, probability, present) for every detector.
        errors: rows for :class:`FileError` (folder, rel_path, reason).
    Returns:
        False if the claim was lost (nothing written).
    """
    run = owned(s, run_id, token, ScoreRun)
    if run is None:
        return False
    if images:
        ids = _insert_images(s, run_id, images)
        rows = [(run_id, image_id, det, cls, p, present) for image_id, per_image in zip(ids, scores, strict=True) for det, cls, p, present in per_image]
        _insert_scores(s, rows)
    if errors:
        s.execute(insert(FileError), [{"run_id": run_id, **e} for e in errors])
    # Plain increments are exact: the unique keys would have failed the whole chunk on a repeat.
    run.scored_images += len(images)
    run.error_files += len(errors)
    return True


SCORE_COLUMNS = ("run_id", "image_id", "detector_id", "voc_class", "probability", "present")
IMAGE_COLUMNS = ("id", "run_id", "folder", "rel_path", "size_bytes", "sha256", "width", "height")


def _postgres(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def _copy(s: Session, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """COPY rows in the session's own transaction (several times faster than INSERT on PostgreSQL)."""
    raw = s.connection().connection.driver_connection  # the psycopg connection under the session
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _insert_images(s: Session, run_id: int, images: Sequence[dict[str, Any]]) -> list[int]:
    """Insert image rows and return their ids, in order."""
    if _postgres(s):
        # Ids drawn from the sequence in one round trip, then one COPY (RETURNING costs ~40 ms a chunk).
        ids = list(s.scalars(text("SELECT nextval(pg_get_serial_sequence('scored_images', 'id')) FROM generate_series(1, :n)"), {"n": len(images)}))
        _copy(s, "scored_images", IMAGE_COLUMNS, ((i, run_id, *(img[c] for c in IMAGE_COLUMNS[2:])) for i, img in zip(ids, images, strict=True)))
        return ids
    return list(s.scalars(insert(ScoredImage).returning(ScoredImage.id, sort_by_parameter_order=True), [{"run_id": run_id, **img} for img in images]))


def _insert_scores(s: Session, rows: list[tuple]) -> None:
    if _postgres(s):
        _copy(s, "scores", SCORE_COLUMNS, rows)
    else:
        s.execute(insert(Score), [dict(zip(SCORE_COLUMNS, row, strict=True)) for row in rows])


def set_total(s: Session, run_id: int, token: str, total: int) -> None:
    s.execute(update(ScoreRun).where(ScoreRun.id == run_id, ScoreRun.claim_token == token).values(total_files=total))


def result_rows(
    s: Session,
    run_id: int,
    *,
    voc_class: str | None = None,
    min_prob: float | None = None,
    present: bool | None = None,
    image: str | None = None,
) -> list[dict[str, Any]]:
    """Scores of a run, one row per (image, detector), best first within each image."""
    q = (
        select(ScoredImage.folder, ScoredImage.rel_path, ScoredImage.sha256, Score.voc_class, Score.probability, Score.present, Score.detector_id)
        .join(Score, Score.image_id == ScoredImage.id)
        .where(ScoredImage.run_id == run_id)
        .order_by(ScoredImage.folder, ScoredImage.rel_path, Score.probability.desc())
    )
    if voc_class:
        q = q.where(Score.voc_class == voc_class)
    if min_prob is not None:
        q = q.where(Score.probability >= min_prob)
    if present is not None:
        q = q.where(Score.present.is_(present))
    if image:
        q = q.where((ScoredImage.rel_path == image) | (ScoredImage.sha256 == image))
    return [
        {
            "image": r.rel_path,
            "folder": r.folder,
            "class": r.voc_class,
            "probability": r.probability,
            "present": r.present,
            "detector": r.detector_id,
            "sha256": r.sha256,
        }
        for r in s.execute(q)
    ]


def error_rows(s: Session, run_id: int) -> list[dict[str, Any]]:
    q = select(FileError).where(FileError.run_id == run_id).order_by(FileError.folder, FileError.rel_path)
    return [{"file": e.rel_path, "folder": e.folder, "reason": e.reason} for e in s.scalars(q)]


def create_run(s: Session, folders: list[str], detectors: Sequence[Detector], *, batch_size: int, max_attempts: int) -> ScoreRun:
    """Add a queued scoring run of ``folders`` with ``detectors``; its id is set on return."""
    run = ScoreRun(
        folders=list(folders),
        classes=[d.voc_class for d in detectors],
        detector_ids=[d.id for d in detectors],
        batch_size=batch_size,
        max_attempts=max_attempts,
    )
    s.add(run)
    s.flush()
    return run


class Reopen(enum.Enum):
    """What :func:`reopen_run` found."""

    missing = "missing"
    finished = "finished"  # succeeded already: nothing to do
    running = "running"  # a live worker holds it
    ready = "ready"  # queued (again): run or send it


def reopen_run(s: Session, run_id: int, stale_after: timedelta) -> tuple[Reopen, ScoreRun | None]:
    """Put a failed, cancelled or abandoned (heartbeat older than ``stale_after``) run back in the queue.

    Unlike :func:`vocfleet.db.jobs.reap_stale`, a run that used up its attempts is queued too: a
    person asked for it explicitly. Files already recorded are not redone when it runs.
    """
    run = s.get(ScoreRun, run_id, with_for_update=True)
    if run is None:
        return Reopen.missing, None
    if run.status == JobStatus.succeeded:
        return Reopen.finished, run
    if run.status == JobStatus.running and not is_stale(run, stale_after):
        return Reopen.running, run
    if run.status != JobStatus.queued:
        run.status, run.claim_token, run.cancel_requested, run.finished_at = JobStatus.queued, None, False, None
    return Reopen.ready, run
