"""What the pages and the API share: the request's session, the refusal type, the query parameters, and the lookups that 404.

A request gets one session (:func:`db_session`): one transaction for everything a page or an
answer reads. Settings, the artifact store and the actions token are the app's, set once by
``create_app`` on ``app.state``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi import Path as FastPath
from fastapi.responses import JSONResponse

from vocfleet.db import gallery as gallery_db
from vocfleet.db import views as web_db
from vocfleet.db.session import Session, session_scope
from vocfleet.db.states import MAX_ID
from vocfleet.model import VocfleetError
from vocfleet.model.artifacts import ArtifactStore

# Query parameters shared by the gallery's page and its API (module level: FastAPI resolves them by name).
Prob = Annotated[float | None, Query(ge=0.0, le=1.0)]
Limit = Annotated[int, Query(ge=1, le=gallery_db.MAX_PAGE)]
ClassParam = Annotated[str | None, Query(alias="class", max_length=32)]
ClassNeeded = Annotated[str, Query(alias="class", max_length=32)]
ErrorLimit = Annotated[int, Query(ge=1, le=10000)]
Offset = Annotated[int, Query(ge=0, le=gallery_db.MAX_COMPARED)]
RowId = Annotated[int, FastPath(ge=1, le=MAX_ID)]  # a larger id is a 422 that names it, not the driver's overflow
EvaluationId = Annotated[str, FastPath(max_length=64, pattern=r"^[\w.-]+$")]  # a VOC picture id (JPEGImages/<id>.jpg)
OtherRun = Annotated[int, Query(ge=1, le=MAX_ID)]


class Problem(VocfleetError):
    """A request the app refuses: one line and an HTTP status (JSON under /api/, a page elsewhere)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.http_status = status


class JSON(JSONResponse):
    """JSON that any stored text can be written in: a name or tag that is not UTF-8 (stored before such
    input was refused) is escaped (``\\udcff``) instead of failing every page that lists it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def db_session() -> Iterator[Session]:
    """The request's one transaction (committed after the answer is made, rolled back on an error)."""
    with session_scope() as s:
        yield s


def app_store(request: Request) -> ArtifactStore:
    return request.app.state.store


DB = Annotated[Session, Depends(db_session)]
Store = Annotated[ArtifactStore, Depends(app_store)]


def form_prob(name: str, text: str | None) -> float | None:
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


def class_list(text: str | None) -> tuple[str, ...]:
    return tuple(c for c in (text or "").replace(" ", ",").split(",") if c)


def run_or_404(s: Session, run_id: int) -> web_db.RunView:
    view = web_db.run_view(s, run_id)
    if view is None:
        raise Problem(404, f"run {run_id}: no such run (see /api/runs)")
    return view


def picture_or_404(s: Session, image_id: int) -> gallery_db.PictureDetail:
    p = gallery_db.picture(s, image_id)
    if p is None:
        raise Problem(404, f"picture {image_id}: no such picture in any run")
    return p


def detector_or_404(s: Session, detector_id: int) -> web_db.DetectorView:
    d = web_db.detector_view(s, detector_id)
    if d is None:
        raise Problem(404, f"detector {detector_id}: no such detector (see /api/detectors)")
    return d


@dataclass(frozen=True)
class GalleryFilter:
    """What a gallery shows: a class (the run's first when none), classes present too and absent
    (comma-separated), a probability range, a folder (a path, or one relative to the run's folder)."""

    voc_class: str | None = None
    also: str | None = None
    without: str | None = None
    min_prob: float | None = None
    max_prob: float | None = None
    folder: str | None = None


def form_filter(
    voc_class: ClassParam = None,
    also: str | None = None,
    without: str | None = None,
    min: str | None = None,  # the query parameter's name; a form's empty field is ""
    max: str | None = None,
    folder: str | None = None,
) -> GalleryFilter:
    """A gallery's filter from a page's query: the run page's form, and the picture page reached from it."""
    return GalleryFilter(voc_class, also, without, form_prob("min", min), form_prob("max", max), folder)


FormFilter = Annotated[GalleryFilter, Depends(form_filter)]


def gallery(
    s: Session,
    run_id: int,
    f: GalleryFilter,
    after: str | None,
    limit: int,
    before: str | None = None,
    scope: gallery_db.RunScope | None = None,
) -> tuple[gallery_db.GalleryQuery | None, gallery_db.GalleryPage | None]:
    """The query a run's gallery asks, and its page (neither where the run scored no class).

    ``scope``: the run's, where the caller has read the run already (else read here)."""
    scope = scope if scope is not None else gallery_db.run_scope(s, run_id)
    if scope is None:
        raise Problem(404, f"run {run_id}: no such run (see /api/runs)")
    cls = f.voc_class or (scope.classes[0] if scope.classes else None)
    if cls is None:
        return None, None
    for name in (cls, *class_list(f.also), *class_list(f.without)):
        if name not in scope.classes:
            raise Problem(400, f"class={name!r}: run {run_id} scored {', '.join(sorted(scope.classes)) or 'no class'}")
    try:
        cursor = gallery_db.Cursor.decode(after) if after else None
        back = gallery_db.Cursor.decode(before) if before else None
        folder = _in_run(scope, f.folder) if f.folder else None
        q = gallery_db.GalleryQuery(run_id, cls, class_list(f.also), class_list(f.without), f.min_prob, f.max_prob, folder, cursor, limit, back)
        return q, gallery_db.gallery_page(s, q, scope)
    except ValueError as exc:
        raise Problem(400, str(exc)) from None


def _in_run(scope: gallery_db.RunScope, folder: str) -> str:
    """A folder filter as given: a path, or one relative to the run's folder (``phone``, as tiles show paths)."""
    if folder.startswith("/"):
        return folder
    if len(scope.folders) != 1:
        raise Problem(400, f"folder={folder!r}: run {scope.run_id} scored {len(scope.folders)} folders; give the full path of one ({', '.join(scope.folders)})")
    return f"{scope.folders[0].rstrip('/')}/{folder.strip('/')}"


def compare(s: Session, run_id: int, other: int, voc_class: str, offset: int, limit: int) -> tuple[web_db.RunView, list[gallery_db.Disagreement]]:
    """A run, and the pictures it shares with ``other`` where their detectors of ``voc_class`` disagree."""
    view, _ = run_or_404(s, run_id), run_or_404(s, other)
    if voc_class not in {c.voc_class for c in view.classes}:
        raise Problem(400, f"class={voc_class!r}: run {run_id} scored {', '.join(c.voc_class for c in view.classes) or 'no class'}")
    try:
        return view, gallery_db.disagreements(s, run_id, other, voc_class, limit=limit, offset=offset)
    except ValueError as exc:
        raise Problem(400, str(exc)) from None


MAX_COMPARED_DETECTORS = 12


def compared_detectors(s: Session, ids: list[int]):
    """The detectors asked for, side by side: (records in the order asked, settings that differ, their epochs)."""
    from vocfleet.db.registry import detector_comparison

    ids = list(dict.fromkeys(ids))
    if not 2 <= len(ids) <= MAX_COMPARED_DETECTORS:
        raise Problem(400, f"ids={','.join(map(str, ids)) or '(none)'}: choose 2 to {MAX_COMPARED_DETECTORS} different detectors to compare")
    try:
        return detector_comparison(s, ids)
    except ValueError as exc:
        raise Problem(404, str(exc).replace("'vocfleet detectors --all'", "/detectors")) from None


Tags = Annotated[list[str], Query(alias="tag", description="KEY=VALUE, repeatable: only what carries every one")]


def tagged(records: list, tags: list[str]) -> list:
    """The records (runs, jobs) that carry every ``tag`` (``KEY=VALUE``), as ``--tag`` picks them in the CLI."""
    from vocfleet.db.states import parse_tag

    try:
        wanted = dict(parse_tag(t) for t in tags)
    except ValueError as exc:
        raise Problem(400, str(exc).replace("--tag ", "tag=")) from None
    return [r for r in records if all(r.tags.get(k) == v for k, v in wanted.items())]
