"""Where a detector is right and wrong: its evaluation pictures beside their labels, read by the ranked index.

At its threshold a picture is a true positive (the class is there and the detector says so), a
false positive (it says so, the class is not there), a false negative or a true negative. The
mistakes worth a look come first: the absent pictures it is surest of, the present ones it is
least sure of, and the true positives just above its threshold.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from vocfleet.model.scan import MAX_FILE_BYTES, UnsafeFile, read_inside

from .labels import LabelRecord, latest_labels
from .models import Detector, EvaluationPicture, PictureLabel, Score, ScoredImage, ScoreRun, TrainJob

SHOWN = 24  # pictures per kind on a page
MAX_SHOWN = 500


@dataclass(frozen=True)
class Judged:
    """One evaluation picture: its VOC id, whether the class is in it, the detector's probability."""

    picture: str
    label: bool
    probability: float


@dataclass(frozen=True)
class Confusion:
    """Counts at the detector's threshold."""

    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int

    @property
    def precision(self) -> float | None:
        said = self.true_positives + self.false_positives
        return self.true_positives / said if said else None

    @property
    def recall(self) -> float | None:
        there = self.true_positives + self.false_negatives
        return self.true_positives / there if there else None


@dataclass(frozen=True)
class Mistakes:
    """A detector's evaluation pictures, sorted into what a person checks first.

    ``recorded`` is False for a detector trained before 0.10 (its pictures were not kept).
    ``voc_root``: the folder the pictures are in (``JPEGImages/<picture>.jpg``), None if its job is gone.
    """

    detector_id: int
    voc_class: str
    threshold: float
    recorded: bool
    voc_root: str | None
    confusion: Confusion | None
    false_positives: list[Judged]  # absent, highest probability first
    false_negatives: list[Judged]  # present, lowest probability first
    near_threshold: list[Judged]  # true positives just above the threshold, lowest first


def mistakes(s: Session, detector_id: int, limit: int = SHOWN) -> Mistakes | None:
    """None if there is no such detector."""
    d = s.get(Detector, detector_id)
    if d is None:
        return None
    job = s.get(TrainJob, d.job_id) if d.job_id is not None else None
    root = job.config.get("voc_root") if job is not None else None
    pic = EvaluationPicture
    mine = pic.detector_id == detector_id
    said = pic.probability >= d.threshold
    counts = s.execute(
        select(
            func.count(),
            func.sum(case((and_(pic.label, said), 1), else_=0)),
            func.sum(case((and_(~pic.label, said), 1), else_=0)),
            func.sum(case((and_(pic.label, ~said), 1), else_=0)),
        ).where(mine)
    ).one()
    if not counts[0]:
        return Mistakes(d.id, d.voc_class, d.threshold, False, root, None, [], [], [])
    tp, fp, fn = (int(c or 0) for c in counts[1:])
    confusion = Confusion(tp, fp, fn, int(counts[0]) - tp - fp - fn)

    def ranked(*where, order) -> list[Judged]:
        q = select(pic.picture, pic.label, pic.probability).where(mine, *where).order_by(order, pic.picture).limit(limit)
        return [Judged(*r) for r in s.execute(q)]

    return Mistakes(
        d.id,
        d.voc_class,
        d.threshold,
        True,
        root,
        confusion,
        false_positives=ranked(~pic.label, said, order=pic.probability.desc()),
        false_negatives=ranked(pic.label, ~said, order=pic.probability.asc()),
        near_threshold=ranked(pic.label, said, order=pic.probability.asc()),
    )


def evaluation_file(s: Session, detector_id: int, picture: str) -> tuple[str, str] | None:
    """(folder, relative path) of one of a detector's evaluation pictures: the only such files the web app reads.

    The picture must be one the detector was judged on, and the folder is its job's VOC root: both
    come from the database, never from a request.
    """
    row = s.execute(
        select(TrainJob.config)
        .join(Detector, Detector.job_id == TrainJob.id)
        .join(EvaluationPicture, EvaluationPicture.detector_id == Detector.id)
        .where(Detector.id == detector_id, EvaluationPicture.picture == picture)
    ).first()
    if row is None or not row.config.get("voc_root"):
        return None
    return str(Path(row.config["voc_root"]) / "JPEGImages"), f"{picture}.jpg"


def run_confusion(s: Session, run_id: int) -> dict[str, Confusion]:
    """Class -> counts of a scoring run's pictures that people labelled for it (their latest word) against what the run said.

    One query, driven by the labels (few) through the pictures' sha256 index: as cheap on a
    million-picture run as on a small one. Classes nobody labelled in this run are absent.
    """
    run = s.get(ScoreRun, run_id)
    used = dict(s.execute(select(Detector.voc_class, Detector.id).where(Detector.id.in_(list(run.detector_ids or [])))).all()) if run else {}
    if not used:
        return {}
    latest = select(func.max(PictureLabel.id)).group_by(PictureLabel.sha256, PictureLabel.voc_class)
    q = (
        select(Score.voc_class, Score.present, PictureLabel.present, func.count())
        .select_from(PictureLabel)
        .join(ScoredImage, ScoredImage.sha256 == PictureLabel.sha256)
        # the class's detector in this run: one primary-key lookup of the score per labelled picture
        .join(Score, and_(Score.image_id == ScoredImage.id, Score.detector_id == case(used, value=PictureLabel.voc_class)))
        .where(ScoredImage.run_id == run_id, PictureLabel.id.in_(latest), PictureLabel.voc_class.in_(list(used)))
        .group_by(Score.voc_class, Score.present, PictureLabel.present)
    )
    counts: dict[str, dict[tuple[bool, bool], int]] = {}
    for voc_class, said, there, n in s.execute(q):
        counts.setdefault(voc_class, {})[(bool(said), bool(there))] = n
    return {c: Confusion(k.get((True, True), 0), k.get((True, False), 0), k.get((False, True), 0), k.get((False, False), 0)) for c, k in sorted(counts.items())}


@dataclass(frozen=True)
class EvaluationView:
    """One of a detector's evaluation pictures as a person checks it: the label it was judged by, what it said,
    the file (None if gone) and what people said about that content since (latest word per class)."""

    detector_id: int
    voc_class: str
    threshold: float
    picture: str
    label: bool
    probability: float
    place: tuple[str, str] | None  # (folder, relative path)
    sha256: str | None  # None: the file is gone or unreadable
    people: list[LabelRecord]

    @property
    def verdict(self) -> str:
        said = self.probability >= self.threshold
        return {(True, True): "right", (False, False): "right", (False, True): "false alarm", (True, False): "missed"}[(self.label, said)]


def evaluation_view(s: Session, detector_id: int, picture: str) -> EvaluationView | None:
    """None if the detector was not judged on that picture. Reads the file once, to know its content."""
    row = s.execute(
        select(Detector.voc_class, Detector.threshold, EvaluationPicture.label, EvaluationPicture.probability)
        .join(EvaluationPicture, EvaluationPicture.detector_id == Detector.id)
        .where(Detector.id == detector_id, EvaluationPicture.picture == picture)
    ).first()
    if row is None:
        return None
    place = evaluation_file(s, detector_id, picture)
    sha = file_sha256(place) if place else None
    people = latest_labels(s, sha256=sha) if sha else []
    return EvaluationView(detector_id, row.voc_class, row.threshold, picture, row.label, row.probability, place, sha, people)


def file_sha256(place: tuple[str, str]) -> str | None:
    """sha256 of a file read without following links (None if it is gone, unreadable or too large)."""
    try:
        return hashlib.sha256(read_inside(*place, MAX_FILE_BYTES)).hexdigest()
    except (OSError, UnsafeFile):
        return None


def judged(s: Session, detector_ids: list[int]) -> dict[int, tuple[list[float], list[bool]]]:
    """Detector id -> (probabilities, labels) of its evaluation pictures (none for a detector from before 0.10)."""
    out: dict[int, tuple[list[float], list[bool]]] = {}
    q = select(EvaluationPicture.detector_id, EvaluationPicture.probability, EvaluationPicture.label).where(EvaluationPicture.detector_id.in_(detector_ids))
    for detector_id, probability, label in s.execute(q):
        probs, labels = out.setdefault(detector_id, ([], []))
        probs.append(probability)
        labels.append(label)
    return out
