"""The score writer: what a shard already recorded, and one bulk write of images, scores and errors per chunk."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session

from .claims import owned
from .models import FileError, Score, ScoredImage, ScoreRun, ScoreShard
from .states import IN_BOUND


def recorded_paths(s: Session, run_id: int, entries: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``entries`` ((folder, rel_path) pairs) the run already recorded, scored or failed.

    One indexed lookup per table for a shard's files, so a redelivered shard redoes nothing and
    memory stays bounded by the shard, not the run.
    """
    if not entries:
        return set()
    found: set[tuple[str, str]] = set()
    for folder in {f for f, _ in entries}:
        paths = [p for f, p in entries if f == folder]
        for table in (ScoredImage, FileError):
            for i in range(0, len(paths), IN_BOUND):
                q = select(table.rel_path).where(table.run_id == run_id, table.folder == folder, table.rel_path.in_(paths[i : i + IN_BOUND]))
                found.update((folder, p) for p in s.scalars(q))
    return found


def store_chunk(
    s: Session,
    shard_id: int,
    token: str,
    images: Sequence[dict[str, Any]],
    scores: Sequence[Sequence[tuple[int, str, float, bool]]],
    errors: Sequence[dict[str, str]],
    reused: int = 0,
) -> bool:
    """Write one chunk of a shard in one transaction: images, their scores, and per-file errors.

    Args:
        s: session (the caller commits; a crash before that loses only this chunk).
        shard_id: the shard; ``token`` must still hold its claim.
        images: rows for :class:`ScoredImage` (folder, rel_path, size_bytes, sha256, width, height).
        scores: per image, (detector_id, voc_class, probability, present) for every detector.
        errors: rows for :class:`FileError` (folder, rel_path, reason).
        reused: how many of ``images`` were taken from earlier runs (not decoded again).
    Returns:
        False if the claim was lost (nothing written).
    """
    shard = owned(s, ScoreShard, shard_id, token)
    if shard is None:
        return False
    run_id = shard.run_id
    if images:
        ids = _insert_images(s, run_id, images)
        rows = [(run_id, image_id, det, cls, p, present) for image_id, per_image in zip(ids, scores, strict=True) for det, cls, p, present in per_image]
        _insert_scores(s, rows)
    if errors:
        s.execute(insert(FileError), [{"run_id": run_id, **e} for e in errors])
    # Plain increments are exact: the unique keys would have failed the whole chunk on a repeat.
    shard.scored_images += len(images)
    shard.error_files += len(errors)
    # The run's counts are the sum of its shards' chunks. An atomic increment, last, so the run
    # row is locked only while this transaction commits, however many workers write at once.
    s.execute(
        update(ScoreRun)
        .where(ScoreRun.id == run_id)
        .values(scored_images=ScoreRun.scored_images + len(images), error_files=ScoreRun.error_files + len(errors), reused=ScoreRun.reused + reused)
    )
    present = Counter(cls for per_image in scores for _, cls, _, is_present in per_image if is_present)
    if present:
        # Per class, the pictures that have it, kept as chunks land, so a running run's page reads them
        # instead of counting its scores. Read after the increment above: this transaction holds the
        # run row's lock, so no other chunk's counts can be lost between the read and the write.
        counts = s.scalar(select(ScoreRun.class_counts).where(ScoreRun.id == run_id))
        if counts is not None:  # None: a run from before 0.10 still running; its page counts its scores
            merged = {c: counts.get(c, 0) + present.get(c, 0) for c in {*counts, *present}}
            s.execute(update(ScoreRun).where(ScoreRun.id == run_id).values(class_counts=merged))
    return True


SCORE_COLUMNS = ("run_id", "image_id", "detector_id", "voc_class", "probability", "present")
IMAGE_COLUMNS = ("id", "run_id", "folder", "rel_path", "size_bytes", "sha256", "width", "height", "mtime_ns")


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
        _copy(s, "scored_images", IMAGE_COLUMNS, ((i, run_id, *(img.get(c) for c in IMAGE_COLUMNS[2:])) for i, img in zip(ids, images, strict=True)))
        return ids
    return list(s.scalars(insert(ScoredImage).returning(ScoredImage.id, sort_by_parameter_order=True), [{"run_id": run_id, **img} for img in images]))


def _insert_scores(s: Session, rows: list[tuple]) -> None:
    if _postgres(s):
        _copy(s, "scores", SCORE_COLUMNS, rows)
    else:
        s.execute(insert(Score), [dict(zip(SCORE_COLUMNS, row, strict=True)) for row in rows])
