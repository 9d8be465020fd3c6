"""The JSON API under ``/api/``: the records ``db/`` returns, typed, so ``/openapi.json`` describes every answer.

Reads take the request's one transaction; the actions (activate, cancel, retry) call the CLI's own
functions, which keep their transactions short on purpose.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from vocfleet.db import gallery as gallery_db
from vocfleet.db import truth
from vocfleet.db import views as web_db
from vocfleet.db.claims import cancel_work
from vocfleet.db.models import JobStatus, TrainJob
from vocfleet.db.records import DetectorRecord, JobRecord, RunRecord
from vocfleet.db.registry import activate_usable
from vocfleet.db.results import RESULT_COLUMNS, ResultQuery, error_rows, export_csv, export_json
from vocfleet.db.session import session_scope
from vocfleet.db.training import retry_job
from vocfleet.worker.executor import executor

from .common import (
    DB,
    ClassNeeded,
    ClassParam,
    ErrorLimit,
    EvaluationId,
    GalleryFilter,
    Limit,
    Offset,
    OtherRun,
    Prob,
    Problem,
    RowId,
    Store,
    Tags,
    compare,
    compared_detectors,
    detector_or_404,
    gallery,
    picture_or_404,
    run_or_404,
    tagged,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)


class GalleryAnswer(_Out):
    voc_class: str | None = Field(serialization_alias="class")
    pictures: list[gallery_db.Tile]
    next: str | None = Field(description="the next page's 'after'; null on the last page")
    previous: str | None = Field(None, description="the previous page's 'before'; null on the first page")
    total: int = Field(0, description="pictures matching the filter (counted up to 10,000)")
    total_is_exact: bool = Field(True, description="false: more than 'total'")
    start: int | None = Field(None, description="the first picture's position among them (1-based); null past 10,000")


class CompareAnswer(_Out):
    voc_class: str = Field(serialization_alias="class")
    pictures: list[gallery_db.Disagreement]
    next_offset: int | None = Field(description="the next page's 'offset'; null on the last page")


class FileError(_Out):
    file: str
    folder: str
    reason: str


class ErrorsAnswer(_Out):
    total: int
    errors: list[FileError]


class Done(_Out):
    done: str


class ClassAnswer(_Out):
    voc_class: str = Field(serialization_alias="class")
    probability: float
    present: bool = Field(description="probability at or above the detector's threshold")
    threshold: float
    detector_id: int


class ScoreAnswer(_Out):
    sha256: str
    width: int
    height: int
    classes: list[ClassAnswer] = Field(description="every active detector's answer, the class most above its threshold first")


MAX_UPLOAD_BYTES = 32 * 1024 * 1024
_scorer_lock = threading.Lock()


def _scorer(request: Request, store, specs):
    """The app's picture scorer for the active detectors, made again when they change (loaded once each per process)."""
    from vocfleet.model.batcher import PictureScorer
    from vocfleet.model.engine import resolve_device
    from vocfleet.model.score import load_detectors

    key = tuple((d.id, d.sha256) for d in specs)
    with _scorer_lock:
        held = getattr(request.app.state, "scorer", None)
        if held is None or held[0] != key:
            device = resolve_device()
            held = (key, PictureScorer(load_detectors(specs, device, compile=False, store=store), device))
            request.app.state.scorer = held
    return held[1]


@router.get("/runs", tags=["runs"])
def api_runs(s: DB, tag: Tags = []) -> list[RunRecord]:  # noqa: B006 - FastAPI copies defaults per request
    """Every scoring run, newest first, with its progress (``tag=KEY=VALUE``, repeatable: only runs with every one)."""
    return tagged(web_db.run_list(s), tag)


@router.get("/runs/{run_id}", tags=["runs"])
def api_run(s: DB, run_id: RowId) -> web_db.RunView:
    """A run: its progress, and per class the detector used and how many pictures have the class."""
    return run_or_404(s, run_id)


@router.get("/runs/{run_id}/gallery", tags=["runs"])
def api_gallery(
    s: DB,
    run_id: RowId,
    voc_class: ClassParam = None,
    also: Annotated[str | None, Query(description="classes that must be present too, comma-separated")] = None,
    without: Annotated[str | None, Query(description="classes that must be absent, comma-separated")] = None,
    min: Prob = None,
    max: Prob = None,
    folder: Annotated[str | None, Query(description="only files under this folder")] = None,
    after: Annotated[str | None, Query(description="the previous page's 'next'")] = None,
    before: Annotated[str | None, Query(description="the next page's 'previous'")] = None,
    limit: Limit = gallery_db.PAGE,
) -> GalleryAnswer:
    """A page of the pictures where a class is present (or, with min/max, whose probability is in a range), highest first."""
    q, result = gallery(s, run_id, GalleryFilter(voc_class, also, without, min, max, folder), after, limit, before)
    if result is None:
        return GalleryAnswer(voc_class=None, pictures=[], next=None)
    cursors = {k: c.encode() if (c := getattr(result, k)) else None for k in ("next", "previous")}
    return GalleryAnswer(voc_class=q.voc_class, pictures=result.tiles, total=result.total, total_is_exact=result.total_is_exact, start=result.start, **cursors)


@router.get("/runs/{run_id}/compare", tags=["runs"])
def api_compare(s: DB, run_id: RowId, other: OtherRun, voc_class: ClassNeeded, offset: Offset = 0, limit: Limit = gallery_db.PAGE) -> CompareAnswer:
    """The pictures both runs scored (same sha256) where their detectors of a class disagree, widest gap first (offset paging)."""
    _, rows = compare(s, run_id, other, voc_class, offset, limit)
    return CompareAnswer(voc_class=voc_class, pictures=rows, next_offset=offset + len(rows) if len(rows) == limit else None)


@router.get("/runs/{run_id}/errors", tags=["runs"])
def api_errors(s: DB, run_id: RowId, limit: ErrorLimit = 500) -> ErrorsAnswer:
    """The files a run could not score, with the reason for each."""
    view = run_or_404(s, run_id)
    return ErrorsAnswer(total=view.error_files, errors=[FileError(**e) for e in error_rows(s, run_id, limit)])


_STREAMED = {200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}, "text/csv": {"schema": {"type": "string"}}}}}


@router.get("/runs/{run_id}/export", tags=["runs"], response_class=StreamingResponse, responses=_STREAMED)
def api_export(s: DB, run_id: RowId, format: Annotated[str, Query(pattern="^(jsonl|csv)$")] = "jsonl") -> StreamingResponse:
    """Every score of a run, streamed (JSON lines or CSV) in the order of ``vocfleet results --format``."""
    run_or_404(s, run_id)
    return StreamingResponse(_export(run_id, list(RESULT_COLUMNS), format), media_type="text/csv" if format == "csv" else "application/x-ndjson")


@router.get("/pictures/{image_id}", tags=["pictures"])
def api_picture(s: DB, image_id: RowId) -> gallery_db.PictureDetail:
    """A picture: every class's probability beside its threshold and detector, and the other runs that scored the same file."""
    return picture_or_404(s, image_id)


@router.get("/detectors", tags=["detectors"])
def api_detectors(s: DB) -> list[web_db.ClassRegistry]:
    """The registry, class by class: the active detector and every earlier one, with why each is or is not active."""
    return web_db.registry(s)


class DetectorsCompared(_Out):
    detectors: list[DetectorRecord]
    settings_that_differ: dict[str, list[Any]] = Field(description="setting -> one value per detector, in the order asked")


@router.get("/detectors/compare", tags=["detectors"])
def api_detectors_compare(s: DB, ids: Annotated[list[int], Query(description="the detectors, each as ids=N")] = []) -> DetectorsCompared:  # noqa: B006 - copied per request
    """Detectors side by side (2 to 12): their records and the training settings that differ; curves overlaid at /detectors/compare.png."""
    records, differ, _ = compared_detectors(s, ids)
    return DetectorsCompared(detectors=records, settings_that_differ=differ)


@router.get("/detectors/{detector_id}", tags=["detectors"])
def api_detector(s: DB, detector_id: RowId) -> web_db.DetectorView:
    """A detector: its metrics beside always-absent, training settings, decision, and its job's epochs."""
    return detector_or_404(s, detector_id)


@router.get("/detectors/{detector_id}/mistakes", tags=["detectors"])
def api_mistakes(s: DB, detector_id: RowId, limit: Annotated[int, Query(ge=1, le=truth.MAX_SHOWN)] = truth.SHOWN) -> truth.Mistakes:
    """Where a detector is right and wrong on its evaluation pictures: the counts at its threshold, its false
    positives (surest first), false negatives (least sure first) and true positives just above the threshold."""
    found = truth.mistakes(s, detector_id, limit)
    if found is None:
        raise Problem(404, f"detector {detector_id}: no such detector (see /api/detectors)")
    return found


@router.get("/jobs", tags=["jobs"])
def api_jobs(s: DB, tag: Tags = []) -> list[JobRecord]:  # noqa: B006 - FastAPI copies defaults per request
    """Every training job with its live epoch progress (``tag=KEY=VALUE``, repeatable: only jobs with every one)."""
    return tagged(web_db.job_list(s), tag)


@router.post(
    "/score",
    tags=["score"],
    openapi_extra={"requestBody": {"required": True, "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def api_score(request: Request, store: Store) -> ScoreAnswer:
    """Run one picture (the request's body: JPEG, PNG, WebP, BMP, GIF or TIFF, at most 32 MB) through every active
    detector: each class's probability, whether it is present, and the detector. Nothing is stored; requests that
    arrive together are scored in one batch."""
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > MAX_UPLOAD_BYTES:
            raise Problem(413, f"the picture is over {MAX_UPLOAD_BYTES // 2**20} MB: send a smaller one")
    if not data:
        raise Problem(400, "no picture: send its bytes as the request's body (curl --data-binary @photo.jpg)")
    from vocfleet.db.registry import active_detectors
    from vocfleet.model import DetectorUnavailable
    from vocfleet.model.decode import BadImage
    from vocfleet.model.score import DetectorSpec

    def score() -> ScoreAnswer:
        with session_scope() as s:
            specs = [DetectorSpec.of(d) for d in active_detectors(s)]
        if not specs:
            raise Problem(409, "no active detector yet: train some first (vocfleet submit, then vocfleet run)")
        try:
            scorer = _scorer(request, store, specs)
            decoded, probs = scorer.score(bytes(data))
        except BadImage as exc:
            raise Problem(400, f"not a picture vocfleet scores: {exc}") from None
        except DetectorUnavailable as exc:
            raise Problem(409, str(exc)) from None
        answers = []
        for d, raw in zip(scorer.detectors, probs, strict=True):
            p, present = d.spec.answer(raw)
            answers.append(ClassAnswer(voc_class=d.spec.voc_class, probability=p, present=present, threshold=d.spec.threshold, detector_id=d.spec.id))
        answers.sort(key=lambda a: a.threshold - a.probability)
        return ScoreAnswer(sha256=decoded.sha256, width=decoded.width, height=decoded.height, classes=answers)

    return await run_in_threadpool(score)


def _act(request: Request, what: str, change: Callable[[], str]) -> Done:
    token = request.app.state.actions_token
    if token is None:
        raise Problem(403, f"{what}: this server is read-only (start it with --allow-actions)")
    given = request.headers.get("x-vocfleet-token", "")
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise Problem(403, f"{what}: wrong or missing X-Vocfleet-Token header")
    return Done(done=change())


class LabelIn(_Out):
    voc_class: str = Field(alias="class", max_length=32)
    present: bool
    who: str = Field("web", max_length=200, description="who says so (kept with the label)")


def _say(request: Request, what: str, body: LabelIn, pictures: Callable[[Session], tuple[list[str], tuple[str, str] | None]]) -> Done:
    """Record a person's word on ``body``'s class for the pictures (sha256s) ``pictures`` finds, and where they were seen;
    an action (the token), all or nothing (one transaction; a lookup that fails stores nothing)."""
    from vocfleet.db.labels import add_label
    from vocfleet.model import ConfigError

    def change() -> str:
        with session_scope() as s:
            shas, seen = pictures(s)
            try:
                for sha in shas:
                    add_label(s, sha, body.voc_class, body.present, body.who, seen=seen)
            except ConfigError as exc:
                raise Problem(400, str(exc)) from None
        return f"{what}: {body.voc_class} {'present' if body.present else 'absent'}, said by {body.who}"

    return _act(request, f"label {what}", change)


def _scored(s: Session, image_id: int, also: str = "") -> str:
    """The sha256 of a picture a run scored (404 if none did)."""
    found = gallery_db.recorded_file(s, image_id)
    if found is None:
        raise Problem(404, f"picture {image_id}: no such picture in any run{also}")
    return found[2]


@router.post("/pictures/{image_id}/labels", tags=["actions"])
def api_label(request: Request, image_id: RowId, body: LabelIn) -> Done:
    """Say whether a class is in a picture (needs --allow-actions and the token); kept by the picture's sha256 with who
    and when, never overwriting: the latest word counts, earlier ones stay as its history."""
    return _say(request, f"picture {image_id}", body, lambda s: ([_scored(s, image_id)], None))


MAX_LABELLED = 500  # pictures one request may label: a gallery page is 48


class LabelsIn(LabelIn):
    pictures: list[int] = Field(min_length=1, max_length=MAX_LABELLED, description="the pictures' ids (as in a gallery)")


@router.post("/labels", tags=["actions"])
def api_label_many(request: Request, body: LabelsIn) -> Done:
    """Say whether a class is in several pictures at once, as chosen in a gallery (needs --allow-actions and the token):
    all of them or, if one is not a picture of any run, none."""
    found = lambda s: (list(dict.fromkeys(_scored(s, i, "; nothing labelled") for i in body.pictures)), None)  # copies of one content: one word
    return _say(request, f"{len(body.pictures)} picture(s)", body, found)


@router.post("/detectors/{detector_id}/evaluation/{picture}/labels", tags=["actions"])
def api_label_evaluation(request: Request, detector_id: RowId, picture: EvaluationId, body: LabelIn) -> Done:
    """Say whether a class is in one of a detector's evaluation pictures (needs --allow-actions and the token): kept by
    the file's sha256 like any label, with where it was seen, so `vocfleet labels export` can take it to training."""

    def found(s: Session) -> tuple[list[str], tuple[str, str] | None]:
        view = truth.evaluation_view(s, detector_id, picture)
        if view is None:
            raise Problem(404, f"detector {detector_id}: no evaluation picture {picture!r}")
        if view.sha256 is None:
            where = view.place[0] if view.place else "its VOC root"
            raise Problem(409, f"detector {detector_id}: evaluation picture {picture!r} is gone from {where}; nothing to label")
        return [view.sha256], view.place

    return _say(request, f"picture {picture}", body, found)


@router.post("/detectors/{detector_id}/activate", tags=["actions"])
def api_activate(request: Request, store: Store, detector_id: RowId) -> Done:
    """Make a detector its class's active one (needs --allow-actions and the token)."""

    def change() -> str:
        done = activate_usable(store, detector_id, reason="activated in the web app")  # the CLI's checks: 409 if the file is gone or changed
        if done is None:
            raise Problem(404, f"detector {detector_id}: no such detector")
        return f"detector {detector_id} is the active {done[0].voc_class} detector"

    return _act(request, f"activate detector {detector_id}", change)


@router.post("/jobs/{job_id}/cancel", tags=["actions"])
def api_cancel(request: Request, job_id: RowId) -> Done:
    """Cancel a queued or running training job (needs --allow-actions and the token)."""

    def change() -> str:
        with session_scope() as s:
            now, asked = cancel_work(s, TrainJob, [job_id])
        if not (now or asked):
            raise Problem(409, f"job {job_id}: not queued or running (or no such job)")
        return f"job {job_id}: " + ("cancelled" if now else "its worker stops it within a few batches")

    return _act(request, f"cancel job {job_id}", change)


@router.post("/jobs/{job_id}/retry", tags=["actions"])
def api_retry(request: Request, job_id: RowId) -> Done:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint (needs --allow-actions and the token)."""
    run_by = executor(request.app.state.settings)

    def change() -> str:
        with session_scope() as s:
            outcome = retry_job(s, job_id)
        if outcome is None:
            raise Problem(404, f"job {job_id}: no such job")
        if outcome != JobStatus.queued:
            raise Problem(409, f"job {job_id}: {outcome}, not retried (only failed or cancelled jobs are)")
        run_by.hand_over(TrainJob, [job_id])
        return f"job {job_id}: queued again; resumes from its last checkpoint" + ("" if run_by.fleet else " (vocfleet run runs it)")

    return _act(request, f"retry job {job_id}", change)


class _Closed(Exception):
    """The client went away: the export stops."""


class _Pipe:
    """A file-like sink for ``db.results``' exports, read as a generator: a few chunks in flight, so memory stays flat."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
        self.closed = threading.Event()

    def write(self, data: bytes) -> int:
        while not self.closed.is_set():
            try:
                self.chunks.put(bytes(data), timeout=0.5)
                return len(data)
            except queue.Full:
                continue
        raise _Closed


def _export(run_id: int, columns: list[str], fmt: str) -> Iterator[bytes]:
    """A run's scores as the CLI exports them (``vocfleet results --format csv|jsonl``: on PostgreSQL the server writes them), passed on as they come."""
    pipe = _Pipe()

    def produce() -> None:
        try:
            with session_scope() as s:
                q = ResultQuery(run_ids=(run_id,))
                if fmt == "csv":
                    export_csv(s, q, columns, pipe)
                else:
                    export_json(s, q, columns, pipe, lines=True)
            pipe.chunks.put(None)
        except _Closed:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which ends the response
            pipe.chunks.put(exc)

    threading.Thread(target=produce, daemon=True, name=f"export-run-{run_id}").start()
    try:
        while (chunk := pipe.chunks.get()) is not None:
            if isinstance(chunk, BaseException):
                log.error("export of run %d failed: %s", run_id, chunk)
                raise RuntimeError(f"export of run {run_id} failed: {chunk}") from chunk  # the connection drops: the client sees the body end short
            yield chunk
    finally:
        pipe.closed.set()
