"""A scoring run's pictures a page at a time, and one picture with everything known about it.

The gallery is read with keyset pagination over the ``(run, class, present, probability, image)`` index
of ``scores``: a page starts where the previous one ended (its last picture's present flag,
probability and image id), so page 5,000 of a million-image run costs what page 1 costs. Within
one run a class has one detector and so one threshold: ordering by probability is ordering by
margin above the threshold, and every present picture comes before every absent one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.orm import Session, aliased

from .labels import LabelRecord, latest_labels
from .models import Detector, Score, ScoredImage, ScoreRun, TrainJob
from .registry import how_started
from .results import class_present
from .states import MAX_ID, as_utc

PAGE = 48  # pictures per gallery page
MAX_PAGE = 200


@dataclass(frozen=True)
class Cursor:
    """Where a gallery page starts: after this picture, in (present, probability, image id) order, highest first."""

    present: bool
    probability: float
    image_id: int

    def encode(self) -> str:
        return f"{int(self.present)}_{self.probability!r}_{self.image_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ValueError (one line) for a cursor this module did not write."""
        try:
            present, probability, image_id = text.split("_")
            if present not in ("0", "1"):
                raise ValueError
            cursor = cls(present == "1", float(probability), int(image_id))
            if not (math.isfinite(cursor.probability) and 0 <= cursor.probability <= 1 and 1 <= cursor.image_id <= MAX_ID):
                raise ValueError
            return cursor
        except ValueError:
            raise ValueError(f"after={text!r}: not a page cursor (use the 'next' value of the previous page)") from None


@dataclass(frozen=True)
class GalleryQuery:
    """Which of a run's pictures to show, for one class.

    Attributes:
        run_id, voc_class: the run, and the class whose probability orders the pictures.
        also: classes that must be present too; ``without``: classes that must be absent
            ("dog and not person": ``voc_class="dog", without=("person",)``).
        min_prob, max_prob: a probability range of ``voc_class``. Without one, only the pictures
            where it is present; with one, absent pictures in the range too (near the threshold).
        folder: only files under this path (a folder the run scored, or a subfolder of one).
        after: the page's start (the previous page's ``next``); before: the page that ends just
            before this cursor (a page's ``previous``); ``limit``: pictures per page.
    """

    run_id: int
    voc_class: str
    also: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    min_prob: float | None = None
    max_prob: float | None = None
    folder: str | None = None
    after: Cursor | None = None
    limit: int = PAGE
    before: Cursor | None = None
    counted: bool = True  # False: no count and no position (a picture's page asks for its neighbours only once counted)

    def __post_init__(self) -> None:
        if self.after is not None and self.before is not None:
            raise ValueError("after and before: give one (the next page's cursor, or the previous page's)")
        if self.min_prob is not None and self.max_prob is not None and self.min_prob > self.max_prob:
            raise ValueError(f"min={self.min_prob:g} is above max={self.max_prob:g}: no picture can match; swap them")


@dataclass(frozen=True)
class Tile:
    """One picture of a gallery page."""

    image_id: int
    folder: str
    rel_path: str
    sha256: str
    probability: float
    threshold: float
    margin: float
    present: bool
    filtered: dict[str, float] = field(default_factory=dict)  # the probability of each class the filter names besides (also, without)


# Counted exactly up to here; above, "more than" and no position. A count walks the scores' index from
# where the filter's rows start, reading the index alone (with "also" or "without", a lookup of another
# class's score per row: about 25 µs at a million pictures on PostgreSQL), so it stays inside a page's
# 150 ms. A class alone needs no count: the run keeps its per-class counts.
COUNT_CAP = 1_000

# A folder with at most this many pictures is read from its pictures (one lookup of each picture's score by its key,
# then a sort): walking the class's scores in gallery order to find a small folder's pictures reads about
# page size x (the run's pictures / the folder's) rows, 50,000 for a page of a 1,000-picture folder in a million, and
# PostgreSQL's estimate of a path prefix's share is too rough to choose between the two (1.3 s against 66 ms).
FEW_PICTURES = 5_000


@dataclass(frozen=True)
class GalleryPage:
    tiles: list[Tile]
    next: Cursor | None  # None: the last page
    previous: Cursor | None = None  # the ``before`` of the page before; None: the first page
    total: int = 0  # pictures matching the filter: exact for a class alone (the run's counts), else at most COUNT_CAP
    total_is_exact: bool = True  # False: more than COUNT_CAP
    start: int | None = 1  # the first tile's position (1-based) among them; None: past COUNT_CAP


def _like_prefix(path: str) -> str:
    return path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"


def _under(folders: list[str], path: str):
    """The condition "under ``path``" for a run of ``folders``: a whole folder, or a relative-path prefix in one (an index range)."""
    path = path.rstrip("/") or "/"
    parts = []
    for top in folders:
        if path == top:
            parts.append(ScoredImage.folder == top)
        elif path.startswith(top.rstrip("/") + "/"):
            rel = path[len(top.rstrip("/")) + 1 :]
            parts.append((ScoredImage.folder == top) & ScoredImage.rel_path.like(_like_prefix(rel), escape="\\"))
    if not parts:
        raise ValueError(f"folder={path!r}: not under the run's folders ({', '.join(folders)})")
    return or_(*parts)


@dataclass(frozen=True)
class RunScope:
    """What a gallery of a run needs of the run: the classes it scored, its folders, each class's detector,
    and, where known, how many pictures each class is present in (a class alone's exact total)."""

    run_id: int
    classes: list[str]
    folders: list[str]
    detectors: dict[str, int | None] = field(default_factory=dict)
    class_counts: dict[str, int] | None = None


def run_scope(s: Session, run_id: int) -> RunScope | None:
    """None if there is no such run; one read of its row, no counting."""
    cols = (ScoreRun.classes, ScoreRun.folders, ScoreRun.detector_ids, ScoreRun.class_counts)
    row = s.execute(select(*cols).where(ScoreRun.id == run_id)).first()
    if row is None:
        return None
    classes = list(row.classes or [])
    return RunScope(run_id, classes, list(row.folders or []), dict(zip(classes, row.detector_ids or [], strict=False)), row.class_counts)


def gallery_page(s: Session, q: GalleryQuery, scope: RunScope | None = None) -> GalleryPage:
    """One page of the run's pictures for ``q.voc_class``, highest probability first.

    ``scope``: the run's, where the caller has read it (else read here).

    Raises:
        ValueError: a limit outside 1..MAX_PAGE, or a class in both ``also`` and ``without``.
    """
    if not 1 <= q.limit <= MAX_PAGE:
        raise ValueError(f"limit={q.limit}: between 1 and {MAX_PAGE}")
    if clash := (set(q.also) | {q.voc_class}) & set(q.without):
        raise ValueError(f"{', '.join(sorted(clash))}: asked to be both present and absent")
    run = scope if scope is not None else run_scope(s, q.run_id)
    under = and_(ScoredImage.run_id == q.run_id, _under(run.folders if run else [], q.folder)) if q.folder else None  # the run's path index
    few = s.scalars(select(ScoredImage.id).where(under).limit(FEW_PICTURES + 1)).all() if under is not None else None
    if few is not None and len(few) <= FEW_PICTURES and run is not None:
        # A small folder: each of its pictures' score by the scores' key (picture, the run's detector of the class), then sorted.
        conds = [Score.image_id.in_(few), Score.detector_id == run.detectors.get(q.voc_class)]
    else:
        few = None
        conds = [Score.run_id == q.run_id, Score.voc_class == q.voc_class]
    if q.min_prob is None and q.max_prob is None:
        conds.append(Score.present.is_(True))
    if q.min_prob is not None:
        conds.append(Score.probability >= q.min_prob)
    if q.max_prob is not None:
        conds.append(Score.probability <= q.max_prob)
    conds += [class_present(Score.image_id, cls).is_(True) for cls in q.also]
    conds += [class_present(Score.image_id, cls).is_(False) for cls in q.without]
    counted = select(Score.image_id).where(*conds)  # the count reads the scores' index alone, joining a table only to filter by it
    if under is not None and few is None:  # a large folder: the class's scores in gallery order, kept where they lie under it
        conds.append(under)
        counted = counted.join(ScoredImage, ScoredImage.id == Score.image_id).where(under)
    stmt = (
        select(Score.image_id, Score.probability, Score.present, Detector.threshold, ScoredImage.folder, ScoredImage.rel_path, ScoredImage.sha256)
        .join(ScoredImage, ScoredImage.id == Score.image_id)
        .join(Detector, Detector.id == Score.detector_id)
        .where(*conds)
    )
    order = (Score.present.desc(), Score.probability.desc(), Score.image_id.desc())
    if q.before is not None:  # the page before: read upwards from the cursor, shown in the usual order
        rows = s.execute(stmt.where(_ahead_of(q.before)).order_by(*(c.element.asc() for c in order)).limit(q.limit)).all()[::-1]
        has_more_after = True
    else:
        rows = s.execute((stmt.where(_behind(q.after)) if q.after is not None else stmt).order_by(*order).limit(q.limit + 1)).all()
        has_more_after = len(rows) > q.limit
        rows = rows[: q.limit]
    others = _probabilities(s, [r.image_id for r in rows], (*q.also, *q.without)) if q.also or q.without else {}
    tiles = [
        Tile(r.image_id, r.folder, r.rel_path, r.sha256, r.probability, r.threshold, r.probability - r.threshold, r.present, others.get(r.image_id, {}))
        for r in rows
    ]
    first, last = (_cursor(tiles[0]), _cursor(tiles[-1])) if tiles else (None, None)
    plain = not (q.also or q.without or q.folder) and q.min_prob is None and q.max_prob is None
    known = (run.class_counts or {}).get(q.voc_class) if plain and run is not None else None  # kept as shards end: exact, free
    if not q.counted:
        return GalleryPage(tiles, last if has_more_after and tiles else None, first if q.after or q.before else None, 0, False, None)
    # Under a small folder its pictures bound the rows: counted in any order. Otherwise counted in the gallery's order
    # (or its reverse, from a cursor), so the walk of the class's scores stops at the cap.
    walk, back = ([], []) if few is not None else (order, [c.element.asc() for c in order])
    total = known if known is not None else _capped_count(s, counted, walk)
    starts_the_gallery = q.after is None and q.before is None
    ahead = _capped_count(s, counted.where(_ahead_of(first)), back) if first is not None and not starts_the_gallery else 0
    return GalleryPage(
        tiles,
        last if has_more_after and tiles else None,
        first if ahead else None,
        total if known is not None else min(total, COUNT_CAP),
        known is not None or total <= COUNT_CAP,
        ahead + 1 if ahead <= COUNT_CAP else None,
    )


def _probabilities(s: Session, image_ids: list[int], classes: tuple[str, ...]) -> dict[int, dict[str, float]]:
    """image id -> class -> probability, for a page's pictures and the classes its filter names."""
    out: dict[int, dict[str, float]] = {}
    q = select(Score.image_id, Score.voc_class, Score.probability).where(Score.image_id.in_(image_ids), Score.voc_class.in_(classes))
    for image_id, cls, p in s.execute(q):
        out.setdefault(image_id, {})[cls] = p
    return out


def _cursor(t: Tile) -> Cursor:
    return Cursor(t.present, t.probability, t.image_id)


def _behind(a: Cursor):
    """After the cursor in gallery order: one row comparison of the index's last three columns, so the
    cursor itself is where the index scan starts."""
    return tuple_(Score.present, Score.probability, Score.image_id) < tuple_(a.present, a.probability, a.image_id)


def _ahead_of(a: Cursor):
    """Before the cursor in gallery order (the pictures shown on earlier pages)."""
    return tuple_(Score.present, Score.probability, Score.image_id) > tuple_(a.present, a.probability, a.image_id)


def _capped_count(s: Session, stmt, order) -> int:
    """How many rows ``stmt`` gives, counting at most COUNT_CAP + 1 of them (an index range, never the whole run).

    Counted in ``order`` (the gallery's, or its reverse from a cursor), so PostgreSQL walks the
    ``(run, class, present, probability, image)`` index from where the rows start and stops at the cap;
    unordered, it may plan a bitmap scan of the whole run for a cursor's OR condition.
    """
    inner = stmt.order_by(*order).limit(COUNT_CAP + 1).subquery()
    return int(s.scalar(select(func.count()).select_from(inner)))


@dataclass(frozen=True)
class ClassScore:
    """One class's score of a picture, with the detector that gave it."""

    voc_class: str
    probability: float
    threshold: float
    margin: float
    present: bool
    detector_id: int
    detector_ap: float | None
    detector_active: bool
    job_id: int | None
    training: dict[str, Any]  # the settings that matter to a reader: arch, init, image size, epochs, seed


@dataclass(frozen=True)
class Sighting:
    """The same picture (same sha256) in another run."""

    run_id: int
    image_id: int
    folder: str
    rel_path: str
    created: datetime | None


@dataclass(frozen=True)
class PictureDetail:
    image_id: int
    run_id: int
    folder: str
    rel_path: str
    sha256: str
    scores: list[ClassScore]  # most above its threshold first
    elsewhere: list[Sighting] = field(default_factory=list)
    labels: list[LabelRecord] = field(default_factory=list)  # what people said of its classes (the latest word on each)


TRAINING_KEYS = ("arch", "init", "image_size", "epochs", "batch_size", "lr", "seed")
MAX_SIGHTINGS = 50


def training_of(job: TrainJob | None) -> dict[str, Any]:
    """The settings a reader of a detector wants (:data:`TRAINING_KEYS`), its ``init`` saying which start it began from."""
    if job is None:
        return {}
    return {**{k: job.config[k] for k in TRAINING_KEYS if k in job.config}, "init": how_started(job)}


def picture(s: Session, image_id: int) -> PictureDetail | None:
    """A scored picture: every class's probability beside its threshold and detector, and the runs that saw the same file."""
    image = s.get(ScoredImage, image_id)
    if image is None:
        return None
    rows = s.execute(
        select(Score, Detector, TrainJob)
        .join(Detector, Detector.id == Score.detector_id)
        .outerjoin(TrainJob, TrainJob.id == Detector.job_id)
        .where(Score.image_id == image_id)
        .order_by((Score.probability - Detector.threshold).desc())
    ).all()
    scores = [
        ClassScore(
            sc.voc_class,
            sc.probability,
            d.threshold,
            sc.probability - d.threshold,
            sc.present,
            d.id,
            d.ap,
            d.active,
            d.job_id,
            training_of(job),
        )
        for sc, d, job in rows
    ]
    others = s.execute(
        select(ScoredImage.run_id, ScoredImage.id, ScoredImage.folder, ScoredImage.rel_path, ScoreRun.created_at)
        .join(ScoreRun, ScoreRun.id == ScoredImage.run_id)
        .where(ScoredImage.sha256 == image.sha256, ScoredImage.id != image.id)
        .order_by(ScoredImage.run_id.desc(), ScoredImage.id)
        .limit(MAX_SIGHTINGS)
    ).all()
    elsewhere = [Sighting(r.run_id, r.id, r.folder, r.rel_path, as_utc(r.created_at)) for r in others]
    labels = latest_labels(s, sha256=image.sha256)
    return PictureDetail(image.id, image.run_id, image.folder, image.rel_path, image.sha256, scores, elsewhere, labels)


def recorded_file(s: Session, image_id: int) -> tuple[str, str, str] | None:
    """(folder, relative path, sha256) of a scored picture: the only files the web app reads."""
    row = s.execute(select(ScoredImage.folder, ScoredImage.rel_path, ScoredImage.sha256).where(ScoredImage.id == image_id)).first()
    return tuple(row) if row else None


@dataclass(frozen=True)
class Disagreement:
    """A picture two runs scored (the same sha256) whose detectors of one class disagree on whether it is present."""

    image_id: int
    other_image_id: int
    folder: str
    rel_path: str
    probability: float
    present: bool
    detector_id: int
    other_probability: float
    other_present: bool
    other_detector_id: int


MAX_COMPARED = 10_000  # a comparison pages through at most this many disagreements (offset paging)


def disagreements(s: Session, run_id: int, other_run_id: int, voc_class: str, *, limit: int = PAGE, offset: int = 0) -> list[Disagreement]:
    """The pictures of ``run_id`` that ``other_run_id`` also scored, where their ``voc_class`` detectors disagree, widest gap first.

    What to look at before trusting a new detector: score a sample folder with the active one,
    activate the new one (``vocfleet detectors activate``), score the folder again and compare the
    two runs (and activate the old one again if the new one is worse).

    Raises:
        ValueError: a limit outside 1..MAX_PAGE, or an offset past MAX_COMPARED.
    """
    if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= MAX_COMPARED:
        raise ValueError(f"limit={limit}, offset={offset}: limit between 1 and {MAX_PAGE}, offset between 0 and {MAX_COMPARED}")
    a, b = aliased(Score), aliased(Score)
    ia, ib = aliased(ScoredImage), aliased(ScoredImage)
    stmt = (
        select(ia.id, ib.id, ia.folder, ia.rel_path, a.probability, a.present, a.detector_id, b.probability, b.present, b.detector_id)
        .select_from(a)
        .join(ia, ia.id == a.image_id)
        .join(ib, (ib.sha256 == ia.sha256) & (ib.run_id == other_run_id))
        .join(b, (b.image_id == ib.id) & (b.voc_class == voc_class))
        .where(a.run_id == run_id, a.voc_class == voc_class, a.present != b.present)
        .order_by(func.abs(a.probability - b.probability).desc(), ia.id, ib.id)
        .limit(limit)
        .offset(offset)
    )
    return [Disagreement(*row) for row in s.execute(stmt)]
