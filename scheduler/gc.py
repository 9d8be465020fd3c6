"""What `vocfleet gc` removes: artifacts no detector or resume needs, in the store and on this host."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from vocfleet.db.models import Detector, JobStatus, TrainJob
from vocfleet.model.artifacts import ArtifactStore


@dataclass(frozen=True)
class Garbage:
    location: str  # a URI in the store, or a path on this host
    size: int
    reason: str


def _referenced(s: Session) -> tuple[set[str], set[str]]:
    """Every file a detector row points to (checkpoint and plots, active or not), and their sha256s."""
    files, shas = set(), set()
    for path, sha, metrics in s.execute(select(Detector.checkpoint_path, Detector.sha256, Detector.metrics)):
        files.add(path)
        files.update(v for v in (metrics or {}).get("plots", {}).values() if isinstance(v, str))
        shas.add(sha)
    return files, shas


def find_garbage(s: Session, store: ArtifactStore, *, orphans: bool = False) -> tuple[list[Garbage], int]:
    """Files safe to delete, with why, and how many job folders no job of this database owns.

    Never a file a detector points to, nor the resume state of a queued, running, failed or
    cancelled job (``retry`` resumes from it). ``orphans``: also the folders of jobs this database
    does not know, which another database sharing the store may own. The store is listed once
    (on S3, a listing of every object).
    """
    referenced, shas = _referenced(s)
    status = {key: state for key, state in s.execute(select(TrainJob.key, TrainJob.status))}
    garbage, orphaned = [], set()
    for key, f in store.files():
        if f.uri in referenced:
            continue
        state = status.get(key)
        if state == JobStatus.succeeded:
            garbage.append(Garbage(f.uri, f.size, "finished job: not its detector or plots"))
        elif state is None:
            orphaned.add(key)
            if orphans:
                garbage.append(Garbage(f.uri, f.size, "no job of this database"))
    if store.remote:  # this host's copies: fetched detectors, work folders of jobs no longer running
        for path in sorted((store.cache_dir / "artifacts").glob("*.pt")):
            if path.stem not in shas:
                garbage.append(Garbage(str(path), path.stat().st_size, "cached copy of no detector"))
        for folder in sorted((store.work_dir / "jobs").glob("*")):
            if status.get(folder.name) not in (JobStatus.queued, JobStatus.running):
                garbage += [Garbage(str(p), p.stat().st_size, "work copy of a job not running") for p in sorted(folder.rglob("*")) if p.is_file()]
    return garbage, len(orphaned)
