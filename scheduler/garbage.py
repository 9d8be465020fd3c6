"""What `vocfleet gc` removes: artifacts no detector or resume needs, in the store and on this host.

Files are matched by job key and file name, never by absolute path, so a data folder that moved,
was copied or restored elsewhere keeps every detector. Only a finished job's spent files (its
resume checkpoints, temporary files of killed writers) are ever garbage in the store; a detector's
checkpoint and plots never are. Nothing reached through a link is listed, so nothing outside the
store is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from vocfleet.db.models import Detector, JobStatus, TrainJob
from vocfleet.model.artifacts import DETECTOR_FILES, ArtifactStore, StoredFile, is_spent, split_location

# A detector's files, and a shared start's: never removed, even for a job this database does not
# know (another database sharing the store may have it active).


@dataclass(frozen=True)
class Garbage:
    location: str  # a URI in the store, or a path on this host
    size: int
    reason: str
    local_root: Path | None = None  # a file on this host (a work copy, a cached detector) and the folder it must be inside


def _referenced(s: Session) -> tuple[set[tuple[str, str]], set[str], set[str]]:
    """What detector rows point to: (job key, file name) of each checkpoint and plot, the job keys, the sha256s (and starts' sha256s)."""
    files, shas = set(), set()
    for location, sha, metrics in s.execute(select(Detector.checkpoint_path, Detector.sha256, Detector.metrics)):
        plots = [v for v in (metrics or {}).get("plots", {}).values() if isinstance(v, str)]
        files.update(f for f in map(split_location, [location, *plots]) if f is not None)
        shas.add(sha)
    shas.update(s.scalars(select(TrainJob.start_sha256).where(TrainJob.start_sha256.is_not(None))))  # a start's start.pt, fetched by class jobs
    return files, {key for key, _ in files}, shas


def find_garbage(s: Session, store: ArtifactStore, *, orphans: bool = False) -> tuple[list[Garbage], int]:  # noqa: C901 - one walk of the store, each kind of leftover a branch beside the rule that keeps it
    """Files safe to delete, with why, and how many job folders no job of this database owns.

    Never a file a detector row points to, nor anything of a queued, running, failed or cancelled
    job (``retry`` resumes from it), nor any detector's or start's file or plots. ``orphans``: also
    the resume state and leftovers of jobs this database does not know, which another database
    sharing the store may own (their detectors' files stay).
    The store is listed before the database is read, so a job that starts meanwhile is seen as
    the job it is, not as an orphan. The store is listed once (on S3, a listing of every object).
    """
    listed: list[tuple[str, StoredFile]] = list(store.files())
    work = list(store.work_files())
    cached = list(store.cached_files())
    referenced, detector_keys, shas = _referenced(s)
    status = {key: state for key, state in s.execute(select(TrainJob.key, TrainJob.status))}
    garbage, orphaned = [], set()
    for key, f in listed:
        name = f.uri.rsplit("/", 1)[-1]
        if (key, name) in referenced:
            continue
        state = status.get(key)
        if state == JobStatus.succeeded and is_spent(name):
            garbage.append(Garbage(f.uri, f.size, "finished job: resume state"))
        elif state is None and key not in detector_keys:
            orphaned.add(key)
            if orphans and name not in DETECTOR_FILES:
                garbage.append(Garbage(f.uri, f.size, "no job of this database"))
    # This host's copies (object storage only): work folders of jobs no longer running, fetched detectors.
    for key, path in work:
        state = status.get(key)
        if state is None:
            if orphans:
                garbage.append(Garbage(str(path), path.stat().st_size, "work copy of no job of this database", local_root=store.work_dir))
        elif state not in (JobStatus.queued, JobStatus.running):
            garbage.append(Garbage(str(path), path.stat().st_size, "work copy of a job not running", local_root=store.work_dir))
    for sha, path in cached:
        if sha not in shas:
            garbage.append(Garbage(str(path), path.stat().st_size, "cached copy of no detector", local_root=store.cache_dir))
    return garbage, len(orphaned)


def remove_garbage(session: Callable, store: ArtifactStore, garbage: list[Garbage], *, orphans: bool = False) -> list[Garbage]:
    """Delete what is still garbage when asked to: the store and the database are read again first.

    A job retried, or a detector recorded, between the listing a person confirmed and now keeps
    its files. Returns what was removed.

    Args:
        session: opens a short transaction (``db.session.session_scope``).
    """
    with session() as s:
        still = {g.location for g in find_garbage(s, store, orphans=orphans)[0]}
    removed = []
    for g in garbage:
        if g.location not in still:
            continue
        if g.local_root is not None:
            ArtifactStore.remove_local(Path(g.location), g.local_root)
        else:
            store.remove(g.location)
        removed.append(g)
    return removed
