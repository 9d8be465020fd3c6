"""What the HTML reports show, read in one place: ``scheduler/report.py`` renders these and queries nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vocfleet.model import ConfigError
from vocfleet.model.events import EpochRecord

from .models import Detector
from .records import DetectorRecord, ResultRow
from .registry import detector_epochs, detector_records
from .results import ResultQuery, error_rows, image_scores, iter_results, summary_rows
from .runs import scoring_run

PER_CLASS = 24  # pictures per class in a run's report: the most confident present ones
MAX_ERRORS = 500  # files not scored listed in a report (the count is always shown)


@dataclass(frozen=True)
class Picture:
    """One picture of a run's report: where it is and every class's score, present ones first."""

    folder: str
    path: str
    scores: list[dict[str, Any]]


@dataclass(frozen=True)
class RunReport:
    """A scoring run's report, the same size at any run size."""

    run_id: int
    folders: list[str]
    status: str
    scored_images: int
    error_files: int
    total_files: int
    classes: list[str]
    counts: list[dict[str, Any]]  # per class: images, present, mean probability
    pictures: list[Picture]  # up to PER_CLASS per class, the most confident present ones
    errors: list[dict[str, Any]]  # the first MAX_ERRORS files not scored
    detectors: list[DetectorRecord]  # the detectors the run used


@dataclass(frozen=True)
class FleetDetector:
    voc_class: str
    id: int
    job_id: int | None
    plots: dict[str, str]  # curves, pr: artifact-store locations


@dataclass(frozen=True)
class FleetReport:
    detectors: list[FleetDetector]
    rows: list[DetectorRecord]  # the active detectors
    epochs: dict[int, list[EpochRecord]] = field(default_factory=dict)  # detector id -> its job's epochs (the curves overlaid)


def run_report(s: Session, run_id: int) -> RunReport:
    run = scoring_run(s, run_id)
    dets = list(s.scalars(select(Detector).where(Detector.id.in_(run.detector_ids)).order_by(Detector.voc_class)))
    picked: dict[int, ResultRow] = {}
    for d in dets:
        for r in iter_results(s, ResultQuery((run_id,), voc_class=d.voc_class, present=True, sort="margin", limit=PER_CLASS)):
            picked.setdefault(r.image_id, r)
    scores = image_scores(s, list(picked))
    used = {d.id for d in dets}
    return RunReport(
        run_id=run.id,
        folders=list(run.folders),
        status=run.status.value,
        scored_images=run.scored_images,
        error_files=run.error_files,
        total_files=run.total_files,
        classes=[d.voc_class for d in dets],
        counts=summary_rows(s, (run_id,)),
        pictures=[Picture(first.folder, first.image, scores[image_id]) for image_id, first in picked.items()],
        errors=error_rows(s, run_id, limit=MAX_ERRORS),
        detectors=detector_records(s, ids=sorted(used)),
    )


def fleet_report(s: Session) -> FleetReport:
    dets = list(s.scalars(select(Detector).where(Detector.active.is_(True)).order_by(Detector.voc_class)))
    if not dets:
        raise ConfigError("no trained detectors yet: run 'vocfleet submit ...' and 'vocfleet run' first")
    epochs = detector_epochs(s, {d.id: d.job_id for d in dets})
    return FleetReport([FleetDetector(d.voc_class, d.id, d.job_id, dict(d.metrics.get("plots", {}))) for d in dets], detector_records(s), epochs)
