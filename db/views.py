"""What the web app and its JSON API show, read in one place: ``scheduler/web`` renders these and queries nothing.

Built from the functions the CLI uses (``runs``, ``status``, ``detectors``, ``results --errors``),
as typed values; the gallery and a picture's page are in :mod:`.gallery`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vocfleet.model.events import EpochRecord

from .gallery import RunScope
from .listing import job_records, run_records
from .models import Detector, ScoreRun, ScoreShard
from .records import DetectorRecord, JobRecord, RunRecord
from .registry import detector_epochs, detector_records
from .runs import class_presence
from .states import as_utc
from .truth import Confusion, run_confusion


def _conn(s: Session) -> Any:
    return s.connection().connection.driver_connection


def run_list(s: Session) -> list[RunRecord]:
    """Every scoring run, newest first (the rows of ``vocfleet runs``)."""
    return run_records(_conn(s))[::-1]


@dataclass(frozen=True)
class ClassCount:
    """One class of a run: the detector that scored it and how many pictures have it."""

    voc_class: str
    detector_id: int | None
    threshold: float
    detector_ap: float | None
    present: int | None  # pictures where the class is present (None: not counted yet)


@dataclass(frozen=True)
class RunView:
    run_id: int
    status: str
    folders: list[str]
    files: int | None
    scored_images: int
    error_files: int
    shards: int
    shards_done: int
    created: datetime | None
    finished: datetime | None
    error: str | None
    classes: list[ClassCount]
    # Class -> the run's answers on the pictures people labelled for it, against their word (classes nobody labelled absent).
    judged_by_people: dict[str, Confusion]

    def scope(self) -> RunScope:
        """What its gallery needs, from what the view read (its counts are exact: kept, or counted now)."""
        detectors = {c.voc_class: c.detector_id for c in self.classes}
        return RunScope(self.run_id, list(detectors), self.folders, detectors, {c.voc_class: c.present for c in self.classes})


def run_view(s: Session, run_id: int) -> RunView | None:
    """None if there is no such run; with its answers counted against people's labels."""
    run = s.get(ScoreRun, run_id)
    if run is None:
        return None
    detectors = {d.voc_class: d for d in s.scalars(select(Detector).where(Detector.id.in_(list(run.detector_ids or []))))}
    present = run.class_counts if run.class_counts is not None else class_presence(s, run_id)
    shards = dict(s.execute(select(ScoreShard.status, func.count()).where(ScoreShard.run_id == run_id).group_by(ScoreShard.status)).all())
    classes = []
    for c in run.classes:
        d = detectors.get(c)
        classes.append(ClassCount(c, d.id if d else None, d.threshold if d else 0.5, d.ap if d else None, present.get(c, 0)))
    return RunView(
        run.id,
        run.status.value,
        list(run.folders),
        run.total_files,
        run.scored_images,
        run.error_files,
        sum(shards.values()),
        sum(n for st, n in shards.items() if st.finished),
        as_utc(run.created_at),
        as_utc(run.finished_at),
        run.error,
        classes,
        run_confusion(s, run_id),
    )


def job_list(s: Session) -> list[JobRecord]:
    """Every training job, newest first (the rows of ``vocfleet status``)."""
    return job_records(_conn(s))[::-1]


@dataclass(frozen=True)
class DetectorView:
    """A detector's page: its record (what ``vocfleet detectors --all`` shows), its plots, and its job's epochs."""

    detector: DetectorRecord
    plots: dict[str, str]  # kind (curves, pr) -> location in the artifact store
    epochs: list[EpochRecord]


@dataclass(frozen=True)
class ClassRegistry:
    """One class's detectors: the active one first, then the rest newest first."""

    voc_class: str
    active_id: int | None
    detectors: list[DetectorRecord]


# What the detectors page sorts each class by: the active one first, then by this (the newest first by default).
REGISTRY_SORTS = ("newest", "ap", "auc", "image_size", "epochs", "lr", "batch_size", "seed", "arch", "init", "name")


def registry(s: Session, sort: str = "newest", tag: str | None = None) -> list[ClassRegistry]:
    """Every detector, by class. ``sort``: one of :data:`REGISTRY_SORTS` (metrics highest first, settings
    smallest first); ``tag``: sort by that tag's value instead. Missing values go last."""
    by_class: dict[str, list[DetectorRecord]] = {}
    for record in detector_records(s, include_inactive=True):
        by_class.setdefault(record.voc_class, []).append(record)

    def value(r: DetectorRecord):
        v = r.tags.get(tag) if tag is not None else None if sort == "newest" else getattr(r, sort)
        if isinstance(v, (int, float)) and sort in ("ap", "auc") and tag is None:
            v = -v  # the best first
        return (v is None, "" if v is None else v if isinstance(v, (int, float)) else str(v))

    out = []
    for cls, records in sorted(by_class.items()):
        records.sort(key=lambda r: -r.detector_id)
        if tag is not None or sort != "newest":
            records.sort(key=value)
        records.sort(key=lambda r: not r.active)
        out.append(ClassRegistry(cls, next((r.detector_id for r in records if r.active), None), records))
    return out


def detectors_of_jobs(s: Session) -> dict[int, int]:
    """Job id -> the detector it made (jobs that made none are absent)."""
    return dict(s.execute(select(Detector.job_id, Detector.id).where(Detector.job_id.is_not(None))).all())


def detector_view(s: Session, detector_id: int) -> DetectorView | None:
    d = s.get(Detector, detector_id)
    if d is None:
        return None
    [record] = detector_records(s, ids=[detector_id])
    plots = {k: v for k, v in (d.metrics.get("plots") or {}).items() if v}
    return DetectorView(record, plots, detector_epochs(s, {d.id: d.job_id})[d.id])
