"""Questions asked of scoring results, answered by SQL and streamed: memory stays flat at any size.

Every query here returns an iterator over rows read in batches (a server-side cursor on
PostgreSQL), so an export of twenty million scores holds a few thousand rows at a time. About 300
lines: the query builder and the exports that must share its exact ordering stay in one module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import groupby
from typing import Any, BinaryIO

from sqlalchemy import Select, String, case, func, literal, or_, select
from sqlalchemy.orm import Session, aliased

from .models import Detector, FileError, Score, ScoredImage, ScoreRun
from .records import ResultRow
from .states import SORTS

BATCH = 5000  # rows per fetch


@dataclass(frozen=True)
class ResultQuery:
    """What to read of the scores.

    Attributes:
        run_ids: the runs; several (or ``None``: every run) give the newest score of each file and
            class among them.
        voc_class, min_prob, present, image: filters (image: path relative to its folder, or sha256).
        also, without: only pictures where these classes are present too, or absent ("dog, not person").
        sort: ``image`` (image by image, in the order they were recorded; within an image the
            classes most above their threshold first), ``probability`` or ``margin`` (probability
            minus the detector's threshold), both highest first.
        limit: at most this many rows.
    """

    run_ids: tuple[int, ...] | None
    voc_class: str | None = None
    min_prob: float | None = None
    present: bool | None = None
    image: str | None = None
    sort: str = "image"
    limit: int | None = None
    also: tuple[str, ...] = ()
    without: tuple[str, ...] = ()


def class_present(image_id, voc_class: str):
    """Whether the picture has ``voc_class``, asked per candidate row (a scalar subquery on the primary key).

    Written so, the database checks the few pictures the ordered index scan reaches before the page
    is full; as EXISTS, PostgreSQL turns it into a join over every score of the class (seconds at a
    million pictures).
    """
    other = aliased(Score)
    found = select(other.present).where(other.image_id == image_id, other.voc_class == voc_class).limit(1).scalar_subquery()
    return func.coalesce(found, False)


def _select(q: ResultQuery) -> Select:
    margin = (Score.probability - Detector.threshold).label("margin")
    stmt = (
        select(
            ScoredImage.id.label("image_id"),
            ScoredImage.run_id,
            ScoredImage.folder,
            ScoredImage.rel_path,
            ScoredImage.sha256,
            Score.voc_class,
            Score.probability,
            Detector.threshold,
            margin,
            Score.present,
            Score.detector_id,
        )
        .join(Score, Score.image_id == ScoredImage.id)
        .join(Detector, Detector.id == Score.detector_id)
    )
    if q.run_ids is not None:
        runs = list(q.run_ids)
        stmt = stmt.where(Score.run_id == runs[0]) if len(runs) == 1 else stmt.where(Score.run_id.in_(runs))
    if q.voc_class:
        stmt = stmt.where(Score.voc_class == q.voc_class)
    if q.min_prob is not None:
        stmt = stmt.where(Score.probability >= q.min_prob)
    if q.present is not None:
        stmt = stmt.where(Score.present.is_(q.present))
    for cls in q.also:
        stmt = stmt.where(class_present(Score.image_id, cls).is_(True))
    for cls in q.without:
        stmt = stmt.where(class_present(Score.image_id, cls).is_(False))
    if q.image:
        stmt = stmt.where(or_(ScoredImage.rel_path == q.image, ScoredImage.sha256 == q.image))
        if q.run_ids is not None:  # the same runs, said of the image: lets the planner start from (run, path)
            stmt = stmt.where(ScoredImage.run_id.in_(list(q.run_ids)))
    return stmt


def _statement(q: ResultQuery) -> tuple[Select, Callable[[str], Any]]:
    """The query, ordered and limited, and a lookup of its columns by name."""
    if q.sort not in SORTS:
        raise ValueError(f"sort {q.sort!r}: one of {', '.join(SORTS)}")
    stmt = _select(q)
    across = q.run_ids is None or len(q.run_ids) > 1
    if across:
        # Across runs: the newest score of each file and class (a window, so every database agrees).
        newest = func.row_number().over(partition_by=(_full_path(), Score.voc_class), order_by=Score.run_id.desc())
        inner = stmt.add_columns(newest.label("newest")).subquery()
        stmt = select(*[c for c in inner.c if c.name != "newest"]).where(inner.c.newest == 1)
        col = inner.c.__getitem__
    else:
        col = stmt.selected_columns.__getitem__
    if q.sort == "image" and not across:
        # Image by image as recorded: on PostgreSQL a merge of two index scans and an incremental
        # sort within each image, so the first rows come at once even for twenty million.
        stmt = stmt.order_by(col("image_id"), col("margin").desc())
    elif q.sort == "image":  # across runs a file's newest scores come from different runs: by path
        stmt = stmt.order_by(col("folder"), col("rel_path"), col("margin").desc())
    elif q.sort == "probability" or (q.voc_class and not across):
        # One class of one run is one detector, one threshold: margin order is probability order,
        # which the (run, class, present, probability, image) index gives without sorting.
        stmt = stmt.order_by(col("probability").desc(), col("image_id"))
    else:
        stmt = stmt.order_by(col("margin").desc(), col("image_id"))
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    return stmt, col


# Output names of the result columns, and the query columns they come from.
RESULT_COLUMNS = {
    "image": "rel_path",
    "class": "voc_class",
    "probability": "probability",
    "present": "present",
    "run": "run_id",
    "margin": "margin",
    "threshold": "threshold",
    "folder": "folder",
    "detector": "detector_id",
    "sha256": "sha256",
}


def iter_results(s: Session, q: ResultQuery) -> Iterator[ResultRow]:
    """The scores ``q`` asks for, in its order, read in batches."""
    stmt, _ = _statement(q)
    for r in s.execute(stmt.execution_options(yield_per=BATCH)):
        yield ResultRow(r.rel_path, r.folder, r.voc_class, r.probability, r.threshold, r.margin, bool(r.present), r.detector_id, r.sha256, r.run_id, r.image_id)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _as_text(expr) -> Any:
    """A text column safe in a spreadsheet: a leading = + - @ tab or CR gets a quote (formula injection)."""
    first = func.substr(expr, 1, 1)
    return case((first.in_(_FORMULA_START), literal("'") + expr), else_=expr)


_REALS = ("probability", "margin", "threshold")


def _exact(e):
    """A REAL as text that reads back as the same double. SQLite writes 15 significant digits
    (0.5031665563583374 became 0.503166556358337, under the threshold it equals); 17 always do."""
    return func.printf("%!.17g", e)


def _export_select(stmt: Select, col, columns: list[str], text: bool, sqlite: bool) -> list:
    exprs = []
    for name in columns:
        c = col(RESULT_COLUMNS[name])
        if text and name == "image":  # folders are absolute paths and classes VOC names: neither starts a formula
            c = _as_text(c)
        if sqlite and name in _REALS:  # PostgreSQL writes the shortest exact text itself
            c = _exact(c) if text else func.json(_exact(c))
        exprs.append(c)
    return exprs


def export_csv(s: Session, q: ResultQuery, columns: list[str], out: BinaryIO) -> None:
    """The rows of ``q`` as CSV with a header, written to ``out`` as they are read.

    On PostgreSQL the server writes the CSV (``COPY (SELECT ...) TO STDOUT``) and it is passed
    through; on SQLite the query builds each line. Text that a spreadsheet would run as a formula
    is quoted, as :mod:`vocfleet.scheduler.output` does.
    """
    stmt, col = _statement(q)
    postgres = s.get_bind().dialect.name == "postgresql"
    exprs = _export_select(stmt, col, columns, text=True, sqlite=not postgres)
    exprs = [case((e, "True"), else_="False") if name == "present" else e for name, e in zip(columns, exprs, strict=True)]
    stmt = stmt.with_only_columns(*[e.label(name) for name, e in zip(columns, exprs, strict=True)], maintain_column_froms=True)
    if postgres:
        _copy_out(s, stmt, "FORMAT csv, HEADER", out)
        return
    # SQLite writes each line itself (text always quoted, as CSV allows): a Python csv writer
    # would spend more time than the query.
    fields = []
    for name, e in zip(columns, exprs, strict=True):
        if name in ("image", "folder", "class", "sha256"):
            fields.append(literal('"') + func.replace(e, '"', '""') + literal('"'))
        else:
            fields.append(func.coalesce(func.cast(e, String), ""))
    line = fields[0]
    for f in fields[1:]:
        line = line + literal(",") + f
    stmt = stmt.with_only_columns(line.label("line"), maintain_column_froms=True)
    out.write((",".join(columns) + "\n").encode())
    for part in s.execute(stmt.execution_options(yield_per=BATCH)).partitions():
        out.write("".join(r[0] + "\n" for r in part).encode())


def export_json(s: Session, q: ResultQuery, columns: list[str], out: BinaryIO, *, lines: bool) -> None:
    """The rows of ``q`` as JSON objects built by the database: JSON Lines, or one streamed array."""
    stmt, col = _statement(q)
    postgres = s.get_bind().dialect.name == "postgresql"
    pairs = []
    for name, e in zip(columns, _export_select(stmt, col, columns, text=False, sqlite=not postgres), strict=True):
        if name == "present" and not postgres:  # SQLite stores booleans as 0/1: say true/false as JSON does
            e = func.json(case((e, "true"), else_="false"))
        pairs += [literal(name), e]
    obj = func.json_build_object(*pairs) if postgres else func.json_object(*pairs)
    stmt = stmt.with_only_columns(obj.label("row"), maintain_column_froms=True)
    out.write(b"" if lines else b"[\n")
    if postgres:
        # One column of JSON, which never holds a raw newline, \x01 or \x02: CSV with those as
        # quote and delimiter writes it untouched (text format would double its backslashes).
        _copy_out(s, stmt, "FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02'", out, separator=None if lines else b",\n")
    else:
        first = True
        for part in s.execute(stmt.execution_options(yield_per=BATCH)).partitions():
            text = (b"\n" if lines else b",\n").join(r[0].encode() for r in part)
            out.write(text if first else (b"\n" if lines else b",\n") + text)
            first = False
        if lines and not first:
            out.write(b"\n")
    out.write(b"" if lines else b"\n]\n")


def _copy_out(s: Session, stmt: Select, options: str, out: BinaryIO, separator: bytes | None = None) -> None:
    """``COPY (stmt) TO STDOUT WITH (options)`` on the session's connection, passed to ``out`` as it comes.

    ``separator``: lines are joined with it instead of ending in newlines (a JSON array's commas).
    """
    sql = str(stmt.compile(dialect=s.get_bind().dialect, compile_kwargs={"literal_binds": True}))
    raw = s.connection().connection.driver_connection
    state = {"pending": b"", "first": True}

    def emit(data: bytes) -> None:
        if separator is None:
            out.write(data)
            return
        head, _, state["pending"] = (state["pending"] + data).rpartition(b"\n")
        if head:
            out.write((b"" if state["first"] else separator) + head.replace(b"\n", separator))
            state["first"] = False

    with raw.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT WITH ({options})") as copy:
        # The server sends a message per row: gathered into ~1 MB writes, not one write each.
        chunk, size = [], 0
        for data in copy:
            chunk.append(data)
            size += len(data)
            if size >= 1 << 20:
                emit(b"".join(chunk))
                chunk, size = [], 0
        emit(b"".join(chunk))
    if state["pending"]:
        out.write((b"" if state["first"] else separator) + state["pending"])


def iter_by_image(s: Session, q: ResultQuery, top: int = 3) -> Iterator[dict[str, Any]]:
    """One row per image: the classes present, and the ``top`` classes by how far above their threshold."""
    rows = iter_results(s, replace(q, sort="image", limit=None))
    count = 0
    for (folder, image), group in groupby(rows, key=lambda r: (r.folder, r.image)):
        group = list(group)  # one image's classes: at most one per detector
        yield {
            "image": image,
            "folder": folder,
            "present": [r.voc_class for r in group if r.present],
            "top": [{"class": r.voc_class, "probability": r.probability} for r in group[:top]],
            "sha256": group[0].sha256,
            "run": max(r.run for r in group),
        }
        count += 1
        if q.limit is not None and count >= q.limit:
            return


def _full_path():
    """A file's path as folder and relative path joined: a picture scored by a run of its folder and by a run of a
    subfolder is one picture (``/p`` + ``a/x.jpg`` and ``/p/a`` + ``x.jpg``)."""
    return ScoredImage.folder + "/" + ScoredImage.rel_path


def summary_rows(s: Session, run_ids: tuple[int, ...] | None) -> list[dict[str, Any]]:
    """Per class: images scored, images present, mean probability (one GROUP BY).

    Across runs (several, or ``None``: all) each file counts once, by its newest score, as
    :func:`iter_results` lists them: a folder scored twice, or a folder and then its subfolder,
    does not count a picture twice.
    """
    if run_ids is not None and len(run_ids) == 1:
        rows = select(Score.voc_class, Score.present, Score.probability).where(Score.run_id == run_ids[0]).subquery()
    else:
        newest = func.row_number().over(partition_by=(_full_path(), Score.voc_class), order_by=Score.run_id.desc()).label("newest")
        ranked = select(Score.voc_class, Score.present, Score.probability, newest).join(ScoredImage, ScoredImage.id == Score.image_id)
        if run_ids is not None:
            ranked = ranked.where(Score.run_id.in_(list(run_ids)))
        ranked = ranked.subquery()
        rows = select(ranked.c.voc_class, ranked.c.present, ranked.c.probability).where(ranked.c.newest == 1).subquery()
    stmt = select(
        rows.c.voc_class,
        func.count().label("images"),
        func.sum(case((rows.c.present, 1), else_=0)).label("present"),
        func.avg(rows.c.probability).label("mean_probability"),
    ).group_by(rows.c.voc_class)
    out = []
    for r in s.execute(stmt.order_by(rows.c.voc_class)):
        present = int(r.present or 0)
        out.append({"class": r.voc_class, "images": r.images, "present": present, "present_rate": present / r.images, "mean_probability": r.mean_probability})
    return out


def iter_errors(s: Session, run_id: int, limit: int | None = None) -> Iterator[dict[str, Any]]:
    q = select(FileError).where(FileError.run_id == run_id).order_by(FileError.folder, FileError.rel_path).limit(limit)
    for e in s.scalars(q.execution_options(yield_per=BATCH)):
        yield {"file": e.rel_path, "folder": e.folder, "reason": e.reason}


def error_rows(s: Session, run_id: int, limit: int | None = None) -> list[dict[str, Any]]:
    return list(iter_errors(s, run_id, limit))


def image_scores(s: Session, image_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Every class's score of some images, most above its threshold first."""
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in image_ids}
    q = (
        select(Score.image_id, Score.voc_class, Score.probability, Score.present, (Score.probability - Detector.threshold).label("margin"))
        .join(Detector, Detector.id == Score.detector_id)
        .where(Score.image_id.in_(image_ids))
        .order_by(Score.image_id, (Score.probability - Detector.threshold).desc())
    )
    for r in s.execute(q):
        out[r.image_id].append({"class": r.voc_class, "probability": r.probability, "present": r.present})
    return out


def runs_have_class(s: Session, run_ids: tuple[int, ...] | None, voc_class: str) -> bool:
    """Whether any of the runs (None: any run) scored ``voc_class``."""
    q = select(ScoreRun.classes) if run_ids is None else select(ScoreRun.classes).where(ScoreRun.id.in_(run_ids))
    return any(voc_class in classes for classes in s.scalars(q))
