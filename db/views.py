"""What the web app and its JSON API show, read in one place: ``scheduler/web`` renders these and queries nothing.

Built from the functions the CLI uses (``runs``, ``status``, ``detectors``, ``results --errors``),
as typed values; the gallery and a picture's page are in :mod:`.gallery`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .listing import run_rows, status_rows
from .models import Detector, EpochMetric, ScoreRun, ScoreShard
from .registry import detector_rows
from .runs import class_presence
from .states import as_utc


@dataclass(frozen=True)
class RunRow:
    """A scoring run in the list: its progress, live while it runs."""

    run_id: int
    status: str
    folders: list[str]
    classes: list[str]
    files: int | None  # None until the scan has counted them
    scored: int
    errors: int
    created: datetime | None
    finished: datetime | None
    error: str | None
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def done_fraction(self) -> float | None:
        return (self.scored + self.errors) / self.files if self.files else None


def _conn(s: Session) -> Any:
    return s.connection().connection.driver_connection


def run_list(s: Session) -> list[RunRow]:
    """Every scoring run, newest first (the rows of ``vocfleet runs``)."""
    rows = [
        RunRow(
            r["run"],
            r["status"],
            r["folders"],
            r["classes"],
            r["files"],
            r["scored"],
            r["errors"],
            r["created"],
            r["finished"],
            r["error"],
            r["name"],
            r["tags"],
        )
        for r in run_rows(_conn(s))
    ]
    return rows[::-1]


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


def run_view(s: Session, run_id: int) -> RunView | None:
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
    )


@dataclass(frozen=True)
class JobRow:
    """A training job with its live epoch progress (the rows of ``vocfleet status``)."""

    job_id: int
    voc_class: str
    status: str
    epochs_done: int
    epochs: int
    val_ap: float | None
    attempts: int
    worker: str | None
    heartbeat: datetime | None
    error: str | None
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def job_list(s: Session) -> list[JobRow]:
    rows = [
        JobRow(
            r["job"],
            r["class"],
            r["status"],
            r["epochs_done"],
            r["epochs"],
            r["val_ap"],
            r["attempts"],
            r["worker"],
            r["heartbeat"],
            r["error"],
            r["name"],
            r["tags"],
        )
        for r in status_rows(_conn(s))
    ]
    return rows[::-1]


@dataclass(frozen=True)
class DetectorView:
    """A detector: the row ``vocfleet detectors --all`` shows, its plots, and its job's epochs."""

    id: int
    voc_class: str
    active: bool
    row: dict[str, Any]  # detector_rows' columns: AP, AUC, accuracy beside always-absent, settings, decision
    plots: dict[str, str]  # kind (curves, pr) -> location in the artifact store
    epochs: list[dict[str, Any]]


@dataclass(frozen=True)
class ClassRegistry:
    """One class's detectors: the active one first, then the rest newest first."""

    voc_class: str
    active_id: int | None
    detectors: list[dict[str, Any]]


def registry(s: Session) -> list[ClassRegistry]:
    by_class: dict[str, list[dict[str, Any]]] = {}
    for row in detector_rows(s, include_inactive=True):
        by_class.setdefault(row["class"], []).append(row)
    out = []
    for cls, rows in sorted(by_class.items()):
        rows.sort(key=lambda r: (not r["active"], -r["id"]))
        out.append(ClassRegistry(cls, next((r["id"] for r in rows if r["active"]), None), rows))
    return out


def detector_view(s: Session, detector_id: int) -> DetectorView | None:
    d = s.get(Detector, detector_id)
    if d is None:
        return None
    [row] = detector_rows(s, ids=[detector_id])
    plots = {k: v for k, v in (d.metrics.get("plots") or {}).items() if v}
    epochs = []
    if d.job_id is not None:
        q = select(EpochMetric).where(EpochMetric.job_id == d.job_id).order_by(EpochMetric.epoch)
        epochs = [
            {"epoch": e.epoch, "train_loss": e.train_loss, "val_loss": e.val_loss, "val_ap": e.val_ap, "lr": e.lr, "seconds": e.seconds} for e in s.scalars(q)
        ]
    return DetectorView(d.id, d.voc_class, d.active, row, plots, epochs)
