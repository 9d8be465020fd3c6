"""The pages: each a Jinja2 template over the records its ``/api/`` twin returns, read in the request's one transaction."""

from __future__ import annotations

import dataclasses
import hashlib
from functools import cache
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from vocfleet import __version__
from vocfleet.db import gallery as gallery_db
from vocfleet.db import truth
from vocfleet.db import views as web_db
from vocfleet.db.results import error_rows
from vocfleet.model import VOC_CLASSES
from vocfleet.model.thumbnails import SIZES, cached_thumbnail

from ..output import epoch_count
from .common import (
    DB,
    ClassNeeded,
    ErrorLimit,
    EvaluationId,
    FormFilter,
    Limit,
    Offset,
    OtherRun,
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

router = APIRouter(include_in_schema=False)

PLACEHOLDER = (
    "<svg xmlns='http://www.w3.org/2000/svg' width='160' height='160' viewBox='0 0 160 160'>"
    "<rect width='160' height='160' fill='#eee'/><text x='80' y='76' font-family='sans-serif' font-size='13' "
    "text-anchor='middle' fill='#777'>picture gone</text><text x='80' y='96' font-family='sans-serif' "
    "font-size='13' text-anchor='middle' fill='#777'>or changed</text></svg>"
)


@cache
def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("vocfleet.scheduler.web", "templates"), autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["epochs"] = epoch_count
    env.filters["pct"] = lambda x: "" if x is None else f"{100 * x:.0f}%"
    env.filters["num"] = lambda x, d=3: "" if x is None else f"{x:.{d}f}"
    env.filters["when"] = lambda t: "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")
    env.filters["query"] = lambda text: quote(str(text).encode("utf-8", "surrogateescape"), safe="=")  # text stored before it was checked too
    return env


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    actions = request.app.state.actions_token is not None
    html = templates().get_template(template).render(version=__version__, actions=actions, path=request.url.path, status=status, **context)
    return HTMLResponse(html.encode("utf-8", "backslashreplace"), status_code=status)  # text stored by older versions may not be UTF-8


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/runs")


@router.get("/api", response_class=HTMLResponse)
def api_page(request: Request) -> HTMLResponse:
    """The API for a person: each endpoint, what it answers and its parameters, read from the app's own OpenAPI schema."""
    endpoints = [
        {
            "method": method.upper(),
            "path": path,
            "summary": (op.get("description") or op.get("summary") or "").split("\n")[0],
            "params": [prm["name"] for prm in op.get("parameters", [])],
        }
        for path, ops in request.app.openapi()["paths"].items()
        for method, op in ops.items()
    ]
    return page(request, "api.html", title="API", endpoints=endpoints)


@router.get("/score", response_class=HTMLResponse)
def score_page(request: Request) -> HTMLResponse:
    """An upload form for POST /api/score."""
    return page(request, "score.html", title="Score a picture", origin=f"{request.url.scheme}://{request.url.netloc}")


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, s: DB, tag: Tags = []) -> HTMLResponse:  # noqa: B006 - FastAPI copies defaults per request
    return page(request, "runs.html", title="Scoring runs", runs=tagged(web_db.run_list(s), tag), tags=tag)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(
    request: Request,
    s: DB,
    run_id: RowId,
    f: FormFilter,
    after: str | None = None,
    before: str | None = None,
    limit: Limit = gallery_db.PAGE,
) -> HTMLResponse:
    view = run_or_404(s, run_id)
    q, result = gallery(s, run_id, f, after, limit, before, view.scope())
    params = {k: v for k, v in request.query_params.items() if k not in ("after", "before")}
    next_url = f"/runs/{run_id}?{urlencode({**params, 'after': result.next.encode()})}" if result and result.next else None
    previous_url = f"/runs/{run_id}?{urlencode({**params, 'before': result.previous.encode()})}" if result and result.previous else None
    first_url = f"/runs/{run_id}?{urlencode(params)}" if result and result.previous else None
    others = [r for r in web_db.run_list(s) if r.run_id != run_id]
    urls = {
        "next_url": next_url,
        "previous_url": previous_url,
        "first_url": first_url,
        "filter_query": urlencode({**params, "class": q.voc_class} if q else params),
    }
    return page(request, "run.html", title=f"Run {run_id}", run=view, q=q, result=result, other_runs=others, classes=VOC_CLASSES, **urls)


@router.get("/runs/{run_id}/compare", response_class=HTMLResponse)
def compare_page(request: Request, s: DB, run_id: RowId, other: OtherRun, voc_class: ClassNeeded, offset: Offset = 0) -> HTMLResponse:
    view, rows = compare(s, run_id, other, voc_class, offset, gallery_db.PAGE)
    following = urlencode({"other": other, "class": voc_class, "offset": offset + len(rows)})
    more = f"/runs/{run_id}/compare?{following}" if len(rows) == gallery_db.PAGE else None
    title = f"Run {run_id} against run {other}"
    return page(request, "compare.html", title=title, run=view, other=other, voc_class=voc_class, rows=rows, more=more, runs=web_db.run_list(s))


@router.get("/runs/{run_id}/errors", response_class=HTMLResponse)
def errors_page(request: Request, s: DB, run_id: RowId, limit: ErrorLimit = 500) -> HTMLResponse:
    view = run_or_404(s, run_id)
    return page(request, "errors.html", title=f"Run {run_id}: files not scored", run=view, errors=error_rows(s, run_id, limit))


@router.get("/pictures/{image_id}", response_class=HTMLResponse)
def picture_page(
    request: Request,
    s: DB,
    image_id: RowId,
    f: FormFilter,
) -> HTMLResponse:
    """A picture; reached from a gallery (its filter in the query), also the previous and next pictures of that filter."""
    p = picture_or_404(s, image_id)
    around = None
    if f.voc_class is not None:
        mine = next((c for c in p.scores if c.voc_class == f.voc_class), None)
        if mine is not None:
            here = gallery_db.Cursor(mine.present, mine.probability, image_id)
            # The picture before it, counted (the filter's total, and how many come before: its position);
            # the one after it, not counted again.
            scope = gallery_db.run_scope(s, p.run_id)
            q, before = gallery(s, p.run_id, f, None, 1, here.encode(), scope)
            after = gallery_db.gallery_page(s, dataclasses.replace(q, after=here, before=None, counted=False), scope) if q else None
            params = dict(request.query_params)
            link = lambda found: f"/pictures/{found.tiles[0].image_id}?{urlencode(params)}" if found and found.tiles else None
            position = (before.start + 1 if before.start else None) if before and before.tiles else 1
            total = f"{before.total:,}" if before.total_is_exact else f"more than {before.total:,}"
            around = {"previous": link(before), "next": link(after), "gallery": f"/runs/{p.run_id}?{urlencode(params)}", "where": (position, total)}
    return page(request, "picture.html", title="Picture", p=p, around=around)


@router.get("/detectors", response_class=HTMLResponse)
def detectors_page(
    request: Request,
    s: DB,
    sort: Annotated[str, Query(pattern="^(" + "|".join(web_db.REGISTRY_SORTS) + ")$")] = "newest",
    by_tag: Annotated[str | None, Query(alias="tag", max_length=200)] = None,
) -> HTMLResponse:
    """Every detector by class, the active one first, then sorted by a metric, a setting or a tag's value."""
    classes = web_db.registry(s, sort, by_tag or None)
    return page(request, "detectors.html", title="Detectors", classes=classes, sorts=web_db.REGISTRY_SORTS, sort=sort, by_tag=by_tag or "")


Ids = Annotated[list[int], Query(description="the detectors to compare, each as ids=N")]


@router.get("/detectors/compare", response_class=HTMLResponse)
def detectors_compare_page(request: Request, s: DB, ids: Ids = []) -> HTMLResponse:  # noqa: B006 - FastAPI copies defaults per request
    """Detectors side by side: metrics, the data each was judged on, the settings that differ, their curves overlaid."""
    records, differ, _ = compared_detectors(s, ids)
    query = urlencode([("ids", r.detector_id) for r in records])
    return page(request, "compare_detectors.html", title="Compare detectors", records=records, differ=differ, plot=f"/detectors/compare.png?{query}")


@router.get("/detectors/compare.png")
def detectors_compare_plot(s: DB, ids: Ids = []) -> Response:  # noqa: B006 - FastAPI copies defaults per request
    """Their training curves (loss, validation AP) and precision-recall curves overlaid, one colour each."""
    import io

    from vocfleet.model.plots import save_comparison_plot

    records, _, epochs = compared_detectors(s, ids)
    pictures = truth.judged(s, [r.detector_id for r in records])
    label = {r.detector_id: " ".join(str(x) for x in (r.detector_id, r.voc_class, r.name) if x) for r in records}
    buf = io.BytesIO()
    curves = {label[i]: e for i, e in epochs.items() if e}
    save_comparison_plot(buf, curves, title="detectors " + ", ".join(map(str, label)), pr={label[i]: pr for i, pr in pictures.items()})
    return Response(buf.getvalue(), media_type="image/png")


@router.get("/detectors/{detector_id}", response_class=HTMLResponse)
def detector_page(request: Request, s: DB, detector_id: RowId) -> HTMLResponse:
    view = detector_or_404(s, detector_id)
    return page(request, "detector.html", title=f"Detector {detector_id}", d=view, m=truth.mistakes(s, detector_id))


@router.get("/detectors/{detector_id}/pictures/{picture}.jpg")
def evaluation_thumb(request: Request, detector_id: RowId, picture: EvaluationId, size: int = 160) -> Response:
    """A thumbnail of one of a detector's evaluation pictures (its VOC root and the picture's id come from the database)."""
    _check_size(size)
    from vocfleet.db.session import session_scope

    with session_scope() as s:  # closed before the picture is read
        found = truth.evaluation_file(s, detector_id, picture)
    if found is None:
        raise Problem(404, f"detector {detector_id}: no evaluation picture {picture!r}")
    key = hashlib.sha256(f"{found[0]}/{found[1]}".encode()).hexdigest()  # the cache's key: the file was never hashed
    jpeg = cached_thumbnail(request.app.state.settings.cache_dir, *found, key, size, verify=False)
    return _thumbnail(jpeg)


@router.get("/detectors/{detector_id}/evaluation/{picture}", response_class=HTMLResponse)
def evaluation_page(request: Request, s: DB, detector_id: RowId, picture: EvaluationId) -> HTMLResponse:
    """One of a detector's evaluation pictures: its label, what the detector said, what people said; marked here (with actions on)."""
    view = truth.evaluation_view(s, detector_id, picture)
    if view is None:
        raise Problem(404, f"detector {detector_id}: no evaluation picture {picture!r}")
    return page(request, "evaluation.html", title=f"Detector {detector_id}: {picture}", e=view)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, s: DB, tag: Tags = []) -> HTMLResponse:  # noqa: B006 - FastAPI copies defaults per request
    made = web_db.detectors_of_jobs(s)
    return page(request, "jobs.html", title="Training jobs", jobs=tagged(web_db.job_list(s), tag), tags=tag, made=made)


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise Problem(400, f"size={size}: one of {', '.join(map(str, SIZES))}")


def _thumbnail(jpeg: bytes | None) -> Response:
    """The JPEG, or the placeholder where the picture is gone, unreadable, a link out of its folder, or changed since."""
    if jpeg is None:
        return Response(PLACEHOLDER, media_type="image/svg+xml", headers={"X-Vocfleet-Placeholder": "1", "Cache-Control": "no-store"})
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/thumbs/{image_id}.jpg")
def thumb(request: Request, image_id: RowId, size: int = 160) -> Response:
    _check_size(size)
    from vocfleet.db.session import session_scope

    with session_scope() as s:  # closed before the picture is read: a slow disk holds no transaction
        recorded = gallery_db.recorded_file(s, image_id)
    if recorded is None:
        raise Problem(404, f"picture {image_id}: no such picture in any run")
    jpeg = cached_thumbnail(request.app.state.settings.cache_dir, *recorded, size)
    return _thumbnail(jpeg)


@router.get("/detectors/{detector_id}/{kind}.png")
def plot(s: DB, store: Store, detector_id: RowId, kind: str) -> Response:
    location = detector_or_404(s, detector_id).plots.get(kind)
    data = store.read_bytes(location) if location else None
    if data is None:
        raise Problem(404, f"detector {detector_id}: no {kind} plot")
    return Response(data, media_type="image/png")
