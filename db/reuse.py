"""What earlier runs already know of a shard's files: incremental scoring's lookups.

A file is known by its content (sha256). Where an earlier run of the same folder recorded it with
the same size and modification time, its sha256 is taken from there unread; otherwise the worker
hashes it (cheap beside decoding) and asks by sha256, which also finds a file renamed, moved or
copied. A known picture's scores are reused for every detector that scored it before; only the
detectors it lacks are run (after a new car detector is promoted, only the car detector).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Score, ScoredImage, ScoreRun
from .states import IN_BOUND

EARLIER_RUNS = 5  # the newest runs of a folder asked for its files by path


@dataclass
class Known:
    """A picture seen before: its content, its size, and what each detector said of it."""

    sha256: str
    width: int
    height: int
    size_bytes: int
    scores: dict[int, tuple[float, bool]] = field(default_factory=dict)  # detector id -> (probability, present)


def earlier_runs(s: Session, run_id: int, folder: str) -> list[int]:
    """The newest runs before ``run_id`` that scored ``folder`` (as one of their folders), newest first."""
    rows = s.execute(select(ScoreRun.id, ScoreRun.folders).where(ScoreRun.id < run_id).order_by(ScoreRun.id.desc())).all()
    return [r.id for r in rows if folder in (r.folders or [])][:EARLIER_RUNS]


def sha_by_path(s: Session, runs: Sequence[int], folder: str, stats: dict[str, tuple[int, int]]) -> dict[str, str]:
    """rel_path -> sha256 for the files an earlier run recorded with the same size and modification time (unread now).

    ``stats``: rel_path -> (size, mtime_ns) as the file is now. The newest run that has a file decides.
    """
    found: dict[str, str] = {}
    paths = list(stats)
    for run in runs:
        todo = [p for p in paths if p not in found]
        for i in range(0, len(todo), IN_BOUND):
            q = select(ScoredImage.rel_path, ScoredImage.size_bytes, ScoredImage.mtime_ns, ScoredImage.sha256).where(
                ScoredImage.run_id == run, ScoredImage.folder == folder, ScoredImage.rel_path.in_(todo[i : i + IN_BOUND])
            )
            for rel_path, size, mtime, sha in s.execute(q):
                if rel_path not in found and mtime is not None and (size, mtime) == stats[rel_path]:
                    found[rel_path] = sha
    return found


def known_pictures(s: Session, shas: Iterable[str], detector_ids: Sequence[int]) -> dict[str, Known]:
    """sha256 -> what earlier runs know of that content: its size, and each of ``detector_ids``' score of it."""
    shas, wanted = list(dict.fromkeys(shas)), list(detector_ids)
    known: dict[str, Known] = {}
    for i in range(0, len(shas), IN_BOUND):
        q = (
            select(ScoredImage.sha256, ScoredImage.width, ScoredImage.height, ScoredImage.size_bytes, Score.detector_id, Score.probability, Score.present)
            .join(Score, Score.image_id == ScoredImage.id)
            .where(ScoredImage.sha256.in_(shas[i : i + IN_BOUND]), Score.detector_id.in_(wanted))
        )
        for sha, width, height, size, detector_id, probability, present in s.execute(q):
            k = known.setdefault(sha, Known(sha, width, height, size))
            k.scores.setdefault(detector_id, (probability, present))
    return known
