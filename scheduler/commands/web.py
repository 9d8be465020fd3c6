"""vocfleet serve: the web app and JSON API over the results database."""

from __future__ import annotations

import click

from vocfleet.db.settings import get_settings
from vocfleet.model import ConfigError

from .base import database

MIN_TOKEN = 16


@click.command()
@click.option("--host", default="127.0.0.1", help="The address to listen on (127.0.0.1: this host only; 0.0.0.0: every interface).")
@click.option("--port", default=8000, type=click.IntRange(1, 65535), help="The port to listen on.")
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Let requests that carry VOCFLEET_WEB_TOKEN (header X-Vocfleet-Token) activate detectors, cancel and retry jobs.",
)
def serve(host: str, port: int, allow_actions: bool) -> None:
    """Serve a web app and a JSON API over the results database (runs, galleries, pictures, detectors).

    Pages at http://HOST:PORT/, the API under /api/ (schema at /openapi.json, docs at /api/docs).
    Read-only unless --allow-actions; thumbnails are cached in VOCFLEET_CACHE_DIR.
    """
    try:
        import uvicorn

        from vocfleet.scheduler.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"vocfleet serve needs the web extra ({exc.name} is missing): pip install 'vocfleet[web]'") from None
    token = get_settings().web_token if allow_actions else None
    if allow_actions and (token is None or len(token) < MIN_TOKEN):
        raise ConfigError(
            f"--allow-actions needs a secret of at least {MIN_TOKEN} characters in VOCFLEET_WEB_TOKEN: export VOCFLEET_WEB_TOKEN=$(openssl rand -hex 16)"
        )
    with database(read=True):  # the schema checked (or, on the embedded default, created) before the first request
        pass
    click.echo(f"vocfleet: serving http://{host}:{port}/ ({'actions allowed with the token' if token else 'read-only'}); Ctrl-C stops", err=True)
    uvicorn.run(create_app(actions_token=token), host=host, port=port, log_level="warning")


COMMANDS = [serve]
