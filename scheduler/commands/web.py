"""vocfleet serve: the web app and JSON API over the results database."""

from __future__ import annotations

import click

from vocfleet.db.settings import get_settings
from vocfleet.model import ConfigError

from .base import database

MIN_TOKEN = 16


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option("--host", default="127.0.0.1", help="The address to listen on (127.0.0.1: this host only; 0.0.0.0: every interface, with a password).")
@click.option("--port", default=8000, type=click.IntRange(1, 65535), help="The port to listen on.")
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Let requests that carry VOCFLEET_WEB_TOKEN (header X-Vocfleet-Token) activate detectors, cancel and retry jobs.",
)
@click.option("--no-password", is_flag=True, help="Listen beyond this host without VOCFLEET_WEB_PASSWORD: anyone who can reach the port reads everything.")
def serve(host: str, port: int, allow_actions: bool, no_password: bool) -> None:
    """Serve a web app and a JSON API over the results database (runs, galleries, pictures, detectors).

    Pages at http://HOST:PORT/, the API under /api/ (its schema at /openapi.json). Read-only unless
    --allow-actions; thumbnails are cached in VOCFLEET_CACHE_DIR.
    """
    try:
        import uvicorn

        from vocfleet.scheduler.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"vocfleet serve needs the web extra ({exc.name} is missing): pip install 'vocfleet[web]'") from None
    settings = get_settings()
    token = settings.web_token if allow_actions else None
    if allow_actions:
        check_token(token)
    loopback = host.strip("[]") in LOOPBACK
    if not loopback and settings.web_password is None and not no_password:
        raise ConfigError(
            f"--host {host}: every machine that reaches port {port} could read the results; set VOCFLEET_WEB_PASSWORD, "
            "or pass --no-password to serve them to all"
        )
    with database(read=True):  # the schema checked (or, on the embedded default, created) before the first request
        pass
    sock = _bound(host, port)  # bound before saying so: a port in use is one line, and "serving" is true when printed
    # On this host without a password, only requests naming it are answered (DNS rebinding); with one, or served to all, any.
    hosts = () if settings.web_password is not None or not loopback else tuple(dict.fromkeys((*LOOPBACK, host.strip("[]").lower())))
    if not loopback and settings.web_password is None:
        click.echo(f"vocfleet: warning: serving {host}:{port} with no password: anyone who reaches it reads every result", err=True)
    click.echo(f"vocfleet: serving http://{host}:{port}/ ({'actions allowed with the token' if token else 'read-only'}); Ctrl-C stops", err=True)
    server = uvicorn.Server(uvicorn.Config(create_app(actions_token=token, hosts=hosts), log_level="warning"))
    server.run(sockets=[sock])


def check_token(token: str | None) -> None:
    """A token for actions: at least 16 characters, no spaces, not one character repeated (guessable tokens are refused)."""
    if token is None or len(token) < MIN_TOKEN or token != token.strip() or " " in token or len(set(token)) < MIN_TOKEN // 2:
        raise ConfigError(
            f"--allow-actions needs a secret of at least {MIN_TOKEN} characters in VOCFLEET_WEB_TOKEN, not easily guessed and without spaces: "
            "export VOCFLEET_WEB_TOKEN=$(openssl rand -hex 16)"
        )


def _bound(host: str, port: int):
    """A listening socket on ``host``:``port``; one line if the address is taken or not this machine's."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); choose a free port or this machine's address") from None
    return sock


COMMANDS = [serve]
