"""``vocfleet serve``: the web app and the JSON API over the results database, assembled.

The pages (``pages.py``) and the API (``api.py``) are routers over the same ``db/`` functions the
CLI uses (runs, results, the registry, the gallery): no SQL here. This module adds what every
request shares: the Host check, the password, and one handler for every refusal. The app changes
nothing unless it was started with an actions token; thumbnails are made only of files a run
recorded, read with scoring's no-link checks, and cached per picture and size.
"""

from __future__ import annotations

import base64
import secrets
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from vocfleet import __version__
from vocfleet.db.settings import get_settings
from vocfleet.model import VocfleetError
from vocfleet.model.artifacts import ArtifactStore

from . import api, pages
from .common import JSON, Problem


def create_app(*, actions_token: str | None = None, hosts: tuple[str, ...] = ()) -> FastAPI:
    """The app; ``actions_token``: allow activate, cancel and retry to requests that carry it (else read-only).

    ``hosts``: the names a request's Host header may give (any, when empty). Without a password a
    server answers only to the names it was started for, so a page elsewhere cannot read it through
    a name that resolves to this host (DNS rebinding).
    """
    app = FastAPI(  # no docs page: it loads from a CDN
        title="vocfleet", version=__version__, docs_url=None, redoc_url=None, openapi_url="/openapi.json", default_response_class=JSON
    )
    settings = get_settings()
    app.state.settings, app.state.store, app.state.actions_token = settings, ArtifactStore.from_settings(settings), actions_token

    _guard(app, hosts, settings.web_password)
    _handle_refusals(app)
    app.include_router(pages.router)
    app.include_router(api.router)
    return app


def _guard(app: FastAPI, hosts: tuple[str, ...], password: str | None) -> None:
    """The Host check (DNS rebinding) and the password, in front of every route."""
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

    if password is not None:

        @app.middleware("http")
        async def _password(request: Request, call_next) -> Response:
            """HTTP basic auth on every request (any user name), as compose puts Flower behind a password."""
            scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
            try:
                given = base64.b64decode(encoded, validate=True).decode().partition(":")[2] if scheme.lower() == "basic" else ""
            except ValueError:
                given = ""
            if not secrets.compare_digest(given.encode(), password.encode()):
                return Response("vocfleet: this server asks for a password", 401, headers={"WWW-Authenticate": 'Basic realm="vocfleet"'})
            return await call_next(request)


def _handle_refusals(app: FastAPI) -> None:
    """Every refusal for a person, in one place: one line and its status (JSON under /api/, a page elsewhere)."""

    @app.exception_handler(VocfleetError)
    async def _problem(request: Request, exc: VocfleetError) -> Response:
        """Every error for a person, in one place: its line and its status (JSON under /api/, a page elsewhere)."""
        if request.url.path.startswith("/api/"):
            return JSON({"error": str(exc)}, status_code=exc.http_status)
        return pages.page(request, "error.html", exc.http_status, message=str(exc), title=f"error {exc.http_status}")

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
