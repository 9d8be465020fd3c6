"""``vocfleet serve``: the web app and the JSON API over the results database.

Every page is a template over the same data its ``/api/`` twin returns, and that data comes from
``db/`` functions the CLI uses too (runs, results, the registry, the gallery): no SQL here. The app
changes nothing unless it was started with an actions token; thumbnails are made only of files a
run recorded, read with scoring's no-link checks, and cached per picture and size.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import FastAPI, Query, Request
from fastapi import Path as FastPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vocfleet import __version__
from vocfleet.db import gallery as gallery_db
from vocfleet.db import views as web_db
from vocfleet.db.claims import cancel_work
from vocfleet.db.models import JobStatus, TrainJob
from vocfleet.db.registry import activate_usable
from vocfleet.db.results import RESULT_COLUMNS, ResultQuery, error_rows, export_csv, export_json
from vocfleet.db.session import session_scope
from vocfleet.db.settings import get_settings
from vocfleet.db.states import MAX_ID
from vocfleet.db.training import retry_job
from vocfleet.model import VocfleetError
from vocfleet.model.artifacts import ArtifactStore
from vocfleet.model.thumbnails import SIZES, cached_thumbnail
from vocfleet.worker.dispatch import enqueue

log = logging.getLogger(__name__)

PLACEHOLDER = (
    "<svg xmlns='http://www.w3.org/2000/svg' width='160' height='160' viewBox='0 0 160 160'>"
    "<rect width='160' height='160' fill='#eee'/><text x='80' y='76' font-family='sans-serif' font-size='13' "
    "text-anchor='middle' fill='#777'>picture gone</text><text x='80' y='96' font-family='sans-serif' "
    "font-size='13' text-anchor='middle' fill='#777'>or changed</text></svg>"
)


# Query parameters shared by the gallery's page and its API (module level: FastAPI resolves them by name).
Prob = Annotated[float | None, Query(ge=0.0, le=1.0)]
Limit = Annotated[int, Query(ge=1, le=gallery_db.MAX_PAGE)]
ClassParam = Annotated[str | None, Query(alias="class", max_length=32)]
ClassNeeded = Annotated[str, Query(alias="class", max_length=32)]
ErrorLimit = Annotated[int, Query(ge=1, le=10000)]
Offset = Annotated[int, Query(ge=0, le=gallery_db.MAX_COMPARED)]
RowId = Annotated[int, FastPath(ge=1, le=MAX_ID)]  # a larger id is a 422 that names it, not the driver's overflow
OtherRun = Annotated[int, Query(ge=1, le=MAX_ID)]


class Problem(VocfleetError):
    """A request the app refuses: one line and an HTTP status (JSON under /api/, a page elsewhere)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.http_status = status


@cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("vocfleet.scheduler.web", "templates"), autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["pct"] = lambda x: "" if x is None else f"{100 * x:.0f}%"
    env.filters["num"] = lambda x, d=3: "" if x is None else f"{x:.{d}f}"
    env.filters["when"] = lambda t: "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")
    return env


def plain(value: Any) -> Any:
    """Dataclasses, enums and datetimes as JSON values."""
    if isinstance(value, gallery_db.Cursor):
        return value.encode()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _form_prob(name: str, text: str | None) -> float | None:
    """A probability from a form field: blank is none; anything else must be a number in [0, 1]."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise Problem(400, f"{name}={text!r}: a probability between 0 and 1")
    return value


def _classes(text: str | None) -> tuple[str, ...]:
    return tuple(c for c in (text or "").replace(" ", ",").split(",") if c)


class _JSON(JSONResponse):
    """JSON that any stored text can be written in: a name or tag that is not UTF-8 (stored before such
    input was refused) is escaped (``\\udcff``) instead of failing every page that lists it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def create_app(*, actions_token: str | None = None, hosts: tuple[str, ...] = ()) -> FastAPI:
    """The app; ``actions_token``: allow activate, cancel and retry to requests that carry it (else read-only).

    ``hosts``: the names a request's Host header may give (any, when empty). Without a password a
    server answers only to the names it was started for, so a page elsewhere cannot read it through
    a name that resolves to this host (DNS rebinding).
    """
    app = FastAPI(  # no docs page: it loads from a CDN
        title="vocfleet", version=__version__, docs_url=None, redoc_url=None, openapi_url="/openapi.json", default_response_class=_JSON
    )
    settings = get_settings()
    store = ArtifactStore.from_settings(settings)

    if hosts:

        @app.middleware("http")
        async def _host(request: Request, call_next) -> Response:
            try:  # the stdlib's URL parser: a port, [::1]:8000 and case handled as a browser sends them
                name = urlsplit("//" + request.headers.get("host", "")).hostname or ""
            except ValueError:
                name = ""
            if name not in hosts:
                return Response(f"vocfleet: this server answers to {', '.join(hosts)}, not {name!r}", 421)
            return await call_next(request)

    if settings.web_password is not None:

        @app.middleware("http")
        async def _password(request: Request, call_next) -> Response:
            """HTTP basic auth on every request (any user name), as compose puts Flower behind a password."""
            scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
            try:
                given = base64.b64decode(encoded, validate=True).decode().partition(":")[2] if scheme.lower() == "basic" else ""
            except ValueError:
                given = ""
            if not secrets.compare_digest(given.encode(), settings.web_password.encode()):
                return Response("vocfleet: this server asks for a password", 401, headers={"WWW-Authenticate": 'Basic realm="vocfleet"'})
            return await call_next(request)

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = (
            _templates().get_template(template).render(version=__version__, actions=actions_token is not None, path=request.url.path, status=status, **context)
        )
        return HTMLResponse(html.encode("utf-8", "backslashreplace"), status_code=status)  # text stored by older versions may not be UTF-8

    @app.exception_handler(VocfleetError)
    async def _problem(request: Request, exc: VocfleetError) -> Response:
        """Every error for a person, in one place: its line and its status (JSON under /api/, a page elsewhere)."""
        if request.url.path.startswith("/api/"):
            return _JSON({"error": str(exc)}, status_code=exc.http_status)
        return page(request, "error.html", exc.http_status, message=str(exc), title=f"error {exc.http_status}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        value = first.get("input")
        shown = f"={value!r}" if value is not None and not isinstance(value, dict) else ""
        return await _problem(request, Problem(400, f"{where}{shown}: {first.get('msg', 'invalid')}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        return await _problem(request, Problem(exc.status_code, f"{request.url.path}: {message}"))

    def _run(run_id: int) -> web_db.RunView:
        with session_scope() as s:
            view = web_db.run_view(s, run_id)
        if view is None:
            raise Problem(404, f"run {run_id}: no such run (see /api/runs)")
        return view

    def _gallery(run_id: int, voc_class: str | None, also: str | None, without: str | None, min_prob, max_prob, folder, after, limit):
        view = _run(run_id)
        cls = voc_class or (view.classes[0].voc_class if view.classes else None)
        if cls is None:
            return view, None, None
        known = {c.voc_class for c in view.classes}
        for name in (cls, *_classes(also), *_classes(without)):
            if name not in known:
                raise Problem(400, f"class={name!r}: run {run_id} scored {', '.join(sorted(known)) or 'no class'}")
        try:
            cursor = gallery_db.Cursor.decode(after) if after else None
            q = gallery_db.GalleryQuery(run_id, cls, _classes(also), _classes(without), min_prob, max_prob, folder or None, cursor, limit)
            with session_scope() as s:
                return view, q, gallery_db.gallery_page(s, q)
        except ValueError as exc:
            raise Problem(400, str(exc)) from None

    # ---- pages ----------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/runs")

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page(request: Request) -> HTMLResponse:
        with session_scope() as s:
            runs = web_db.run_list(s)
        return page(request, "runs.html", title="Scoring runs", runs=runs)

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(
        request: Request,
        run_id: RowId,
        voc_class: ClassParam = None,
        also: str | None = None,
        without: str | None = None,
        min: str | None = None,  # the query parameter's name; a form's empty field is ""
        max: str | None = None,
        folder: str | None = None,
        after: str | None = None,
        limit: Limit = gallery_db.PAGE,
    ) -> HTMLResponse:
        view, q, result = _gallery(run_id, voc_class, also, without, _form_prob("min", min), _form_prob("max", max), folder, after, limit)
        params = {k: v for k, v in request.query_params.items() if k != "after"}
        next_url = f"/runs/{run_id}?{urlencode({**params, 'after': result.next.encode()})}" if result and result.next else None
        first_url = f"/runs/{run_id}?{urlencode(params)}" if after else None
        with session_scope() as s:
            others = [r for r in web_db.run_list(s) if r.run_id != run_id]
        return page(request, "run.html", title=f"Run {run_id}", run=view, q=q, result=result, next_url=next_url, first_url=first_url, other_runs=others)

    def _compare(run_id: int, other: int, voc_class: str, offset: int, limit: int) -> tuple[web_db.RunView, list[gallery_db.Disagreement]]:
        view, _ = _run(run_id), _run(other)
        if voc_class not in {c.voc_class for c in view.classes}:
            raise Problem(400, f"class={voc_class!r}: run {run_id} scored {', '.join(c.voc_class for c in view.classes) or 'no class'}")
        try:
            with session_scope() as s:
                return view, gallery_db.disagreements(s, run_id, other, voc_class, limit=limit, offset=offset)
        except ValueError as exc:
            raise Problem(400, str(exc)) from None

    @app.get("/runs/{run_id}/compare", response_class=HTMLResponse, include_in_schema=False)
    def compare_page(request: Request, run_id: RowId, other: OtherRun, voc_class: ClassNeeded, offset: Offset = 0) -> HTMLResponse:
        view, rows = _compare(run_id, other, voc_class, offset, gallery_db.PAGE)
        following = urlencode({"other": other, "class": voc_class, "offset": offset + len(rows)})
        more = f"/runs/{run_id}/compare?{following}" if len(rows) == gallery_db.PAGE else None
        with session_scope() as s:
            runs = web_db.run_list(s)
        title = f"Run {run_id} against run {other}"
        return page(request, "compare.html", title=title, run=view, other=other, voc_class=voc_class, rows=rows, more=more, runs=runs)

    @app.get("/runs/{run_id}/errors", response_class=HTMLResponse, include_in_schema=False)
    def errors_page(request: Request, run_id: RowId, limit: ErrorLimit = 500) -> HTMLResponse:
        view = _run(run_id)
        with session_scope() as s:
            errors = error_rows(s, run_id, limit)
        return page(request, "errors.html", title=f"Run {run_id}: files not scored", run=view, errors=errors)

    @app.get("/pictures/{image_id}", response_class=HTMLResponse, include_in_schema=False)
    def picture_page(request: Request, image_id: RowId) -> HTMLResponse:
        return page(request, "picture.html", title="Picture", p=_picture(image_id))

    @app.get("/detectors", response_class=HTMLResponse, include_in_schema=False)
    def detectors_page(request: Request) -> HTMLResponse:
        with session_scope() as s:
            classes = web_db.registry(s)
        return page(request, "detectors.html", title="Detectors", classes=classes)

    @app.get("/detectors/{detector_id}", response_class=HTMLResponse, include_in_schema=False)
    def detector_page(request: Request, detector_id: RowId) -> HTMLResponse:
        return page(request, "detector.html", title=f"Detector {detector_id}", d=_detector(detector_id))

    @app.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(request: Request) -> HTMLResponse:
        with session_scope() as s:
            jobs = web_db.job_list(s)
        return page(request, "jobs.html", title="Training jobs", jobs=jobs)

    @app.get("/thumbs/{image_id}.jpg", include_in_schema=False)
    def thumb(image_id: RowId, size: int = 160) -> Response:
        if size not in SIZES:
            raise Problem(400, f"size={size}: one of {', '.join(map(str, SIZES))}")
        with session_scope() as s:
            recorded = gallery_db.recorded_file(s, image_id)
        if recorded is None:
            raise Problem(404, f"picture {image_id}: no such picture in any run")
        jpeg = cached_thumbnail(settings.cache_dir, *recorded, size)
        if jpeg is None:  # gone, unreadable, a link out of its folder, or changed since it was scored
            return Response(PLACEHOLDER, media_type="image/svg+xml", headers={"X-Vocfleet-Placeholder": "1", "Cache-Control": "no-store"})
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/detectors/{detector_id}/{kind}.png", include_in_schema=False)
    def plot(detector_id: RowId, kind: str) -> Response:
        d = _detector(detector_id)
        location = d.plots.get(kind)
        data = store.read_bytes(location) if location else None
        if data is None:
            raise Problem(404, f"detector {detector_id}: no {kind} plot")
        return Response(data, media_type="image/png")

    # ---- the JSON API ---------------------------------------------------------------------------

    def _picture(image_id: int) -> gallery_db.PictureDetail:
        with session_scope() as s:
            p = gallery_db.picture(s, image_id)
        if p is None:
            raise Problem(404, f"picture {image_id}: no such picture in any run")
        return p

    def _detector(detector_id: int) -> web_db.DetectorView:
        with session_scope() as s:
            d = web_db.detector_view(s, detector_id)
        if d is None:
            raise Problem(404, f"detector {detector_id}: no such detector (see /api/detectors)")
        return d

    @app.get("/api/runs", tags=["runs"])
    def api_runs() -> list[dict[str, Any]]:
        """Every scoring run, newest first, with its progress."""
        with session_scope() as s:
            return plain(web_db.run_list(s))

    @app.get("/api/runs/{run_id}", tags=["runs"])
    def api_run(run_id: RowId) -> dict[str, Any]:
        """A run: its progress, and per class the detector used and how many pictures have the class."""
        return plain(_run(run_id))

    @app.get("/api/runs/{run_id}/gallery", tags=["runs"])
    def api_gallery(
        run_id: RowId,
        voc_class: ClassParam = None,
        also: Annotated[str | None, Query(description="classes that must be present too, comma-separated")] = None,
        without: Annotated[str | None, Query(description="classes that must be absent, comma-separated")] = None,
        min: Prob = None,
        max: Prob = None,
        folder: Annotated[str | None, Query(description="only files under this folder")] = None,
        after: Annotated[str | None, Query(description="the previous page's 'next'")] = None,
        limit: Limit = gallery_db.PAGE,
    ) -> dict[str, Any]:
        """A page of the pictures where a class is present (or, with min/max, whose probability is in a range), highest first."""
        _, q, result = _gallery(run_id, voc_class, also, without, min, max, folder, after, limit)
        if result is None:
            return {"class": None, "pictures": [], "next": None}
        return {"class": q.voc_class, "pictures": plain(result.tiles), "next": plain(result.next)}

    @app.get("/api/runs/{run_id}/compare", tags=["runs"])
    def api_compare(run_id: RowId, other: OtherRun, voc_class: ClassNeeded, offset: Offset = 0, limit: Limit = gallery_db.PAGE) -> dict[str, Any]:
        """The pictures both runs scored (same sha256) where their detectors of a class disagree, widest gap first (offset paging)."""
        _, rows = _compare(run_id, other, voc_class, offset, limit)
        return {"class": voc_class, "pictures": plain(rows), "next_offset": offset + len(rows) if len(rows) == limit else None}

    @app.get("/api/runs/{run_id}/errors", tags=["runs"])
    def api_errors(run_id: RowId, limit: ErrorLimit = 500) -> dict[str, Any]:
        """The files a run could not score, with the reason for each."""
        view = _run(run_id)
        with session_scope() as s:
            return {"total": view.error_files, "errors": error_rows(s, run_id, limit)}

    @app.get("/api/runs/{run_id}/export", tags=["runs"])
    def api_export(run_id: RowId, format: Annotated[str, Query(pattern="^(jsonl|csv)$")] = "jsonl") -> StreamingResponse:
        """Every score of a run, streamed (JSON lines or CSV) in the order of ``vocfleet results --format``."""
        _run(run_id)
        columns = list(RESULT_COLUMNS)
        return StreamingResponse(_export(run_id, columns, format), media_type="text/csv" if format == "csv" else "application/x-ndjson")

    @app.get("/api/pictures/{image_id}", tags=["pictures"])
    def api_picture(image_id: RowId) -> dict[str, Any]:
        """A picture: every class's probability beside its threshold and detector, and the other runs that scored the same file."""
        return plain(_picture(image_id))

    @app.get("/api/detectors", tags=["detectors"])
    def api_detectors() -> list[dict[str, Any]]:
        """The registry, class by class: the active detector and every earlier one, with why each is or is not active."""
        with session_scope() as s:
            return plain(web_db.registry(s))

    @app.get("/api/detectors/{detector_id}", tags=["detectors"])
    def api_detector(detector_id: RowId) -> dict[str, Any]:
        """A detector: its metrics beside always-absent, training settings, decision, and its job's epochs."""
        return plain(_detector(detector_id))

    @app.get("/api/jobs", tags=["jobs"])
    def api_jobs() -> list[dict[str, Any]]:
        """Every training job with its live epoch progress."""
        with session_scope() as s:
            return plain(web_db.job_list(s))

    def _act(request: Request, what: str, change: Callable[[], str]) -> dict[str, Any]:
        if actions_token is None:
            raise Problem(403, f"{what}: this server is read-only (start it with --allow-actions)")
        given = request.headers.get("x-vocfleet-token", "")
        if not secrets.compare_digest(given.encode(), actions_token.encode()):
            raise Problem(403, f"{what}: wrong or missing X-Vocfleet-Token header")
        return {"done": change()}

    @app.post("/api/detectors/{detector_id}/activate", tags=["actions"])
    def api_activate(request: Request, detector_id: RowId) -> dict[str, Any]:
        """Make a detector its class's active one (needs --allow-actions and the token)."""

        def change() -> str:
            done = activate_usable(store, detector_id, reason="activated in the web app")  # the CLI's checks: 409 if the file is gone or changed
            if done is None:
                raise Problem(404, f"detector {detector_id}: no such detector")
            return f"detector {detector_id} is the active {done[0].voc_class} detector"

        return _act(request, f"activate detector {detector_id}", change)

    @app.post("/api/jobs/{job_id}/cancel", tags=["actions"])
    def api_cancel(request: Request, job_id: RowId) -> dict[str, Any]:
        """Cancel a queued or running training job (needs --allow-actions and the token)."""

        def change() -> str:
            with session_scope() as s:
                now, asked = cancel_work(s, TrainJob, [job_id])
            if not (now or asked):
                raise Problem(409, f"job {job_id}: not queued or running (or no such job)")
            return f"job {job_id}: " + ("cancelled" if now else "its worker stops it within a few batches")

        return _act(request, f"cancel job {job_id}", change)

    @app.post("/api/jobs/{job_id}/retry", tags=["actions"])
    def api_retry(request: Request, job_id: RowId) -> dict[str, Any]:
        """Queue a failed or cancelled job again; it resumes from its last checkpoint (needs --allow-actions and the token)."""

        def change() -> str:
            with session_scope() as s:
                outcome = retry_job(s, job_id)
            if outcome is None:
                raise Problem(404, f"job {job_id}: no such job")
            if outcome != JobStatus.queued:
                raise Problem(409, f"job {job_id}: {outcome}, not retried (only failed or cancelled jobs are)")
            if settings.broker_url:
                enqueue(TrainJob, [job_id])
            return f"job {job_id}: queued again; resumes from its last checkpoint" + ("" if settings.broker_url else " (vocfleet run runs it)")

        return _act(request, f"retry job {job_id}", change)

    return app


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
