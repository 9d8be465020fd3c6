"""Infrastructure settings, read from ``VOCFLEET_*`` environment variables."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from vocfleet.model import VocfleetError


def shown(url: str) -> str:
    """A database or broker URL as messages show it: where it is, without the user and password."""
    return url.split("@")[-1]


class SettingsError(VocfleetError, ValueError):
    """A ``VOCFLEET_*`` variable holds a value that cannot be used."""

    exit_code = 2


def read_only_sqlite(path: Path) -> str | None:
    """A read-only ``file:`` URI for an existing SQLite file whose folder cannot be written (a read-only mount, a backup); else None.

    SQLite in WAL mode writes a ``-shm`` file beside the database even to read; where the folder
    refuses it, the file is opened immutable: nothing can change it while the folder is read-only.
    """
    from urllib.parse import quote

    if path.is_file() and not os.access(path.parent, os.W_OK):
        return f"file:{quote(str(path.absolute()))}?mode=ro&immutable=1"
    return None


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///PATH`` URL names; None for other databases and in-memory SQLite."""
    path = url.split("///", 1)[-1].split("?", 1)[0] if url.startswith("sqlite") else ""
    return Path(path) if path and path != ":memory:" else None


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "vocfleet"


@dataclass(frozen=True)
class Settings:
    """Where vocfleet keeps its state and which servers it talks to.

    Attributes:
        data_dir: root for the SQLite database, artifacts and the decoded-image cache.
        database_url: SQLAlchemy URL; SQLite file under ``data_dir`` unless set.
        broker_url: Celery broker; ``None`` means the embedded default (local executor).
        artifact_root: checkpoints and plots: a local folder, or ``s3://bucket/prefix`` that every
            worker of a fleet reaches (a local folder must then be one shared filesystem).
        s3_endpoint_url: the S3 endpoint for MinIO, Ceph or a test server (None: AWS's).
        cache_dir: decoded-image cache, local to each host.
        score_roots: folders workers may read when scoring (empty: no restriction).
        score_compile: ``torch.compile`` the detectors when scoring (None: on a GPU only).
        decode_threads: threads decoding images while scoring (None: up to 8, one per core).
        visibility_timeout: seconds before Redis hands an unacknowledged message out again.
        metrics_port: where a worker or the scheduler serves Prometheus metrics (None: nowhere).
        metrics_bind: the address it listens on (127.0.0.1 unless set: metrics are not for the world).
        web_token: the secret that ``vocfleet serve --allow-actions`` asks of requests that change
            something (activate, cancel, retry); None: no actions.
        web_password: a password every request to ``vocfleet serve`` must give (HTTP basic auth,
            as Flower's); None: none asked (the server listens on 127.0.0.1 unless told otherwise).
    """

    data_dir: Path
    database_url: str
    database_is_default: bool  # no VOCFLEET_DATABASE_URL: the SQLite file in data_dir
    broker_url: str | None
    artifact_root: str
    cache_dir: Path
    score_roots: tuple[Path, ...]
    heartbeat_seconds: float
    stale_seconds: float
    score_compile: bool | None = None
    decode_threads: int | None = None
    s3_endpoint_url: str | None = None
    visibility_timeout: float = 3600.0
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"
    web_token: str | None = None
    web_password: str | None = None

    def own_paths(self) -> tuple[Path, ...]:
        """What vocfleet keeps and no file a person names may replace or sit inside: the data folder,
        the cache, a local artifact store, the SQLite file and its ``-wal``, ``-shm`` and ``-journal``."""
        paths = [self.data_dir, self.cache_dir]
        if "://" not in self.artifact_root:
            paths.append(Path(self.artifact_root))
        db = sqlite_file(self.database_url)
        if db is not None:
            paths += [db, *(db.with_name(db.name + end) for end in ("-wal", "-shm", "-journal"))]
        return tuple(paths)


def get_settings() -> Settings:
    """Read the settings from the environment (cheap; called where needed, never cached)."""
    env = os.environ
    data_dir = Path(env.get("VOCFLEET_DATA_DIR") or _default_data_dir()).expanduser().resolve()
    roots = tuple(Path(p).expanduser().resolve() for p in env.get("VOCFLEET_SCORE_ROOTS", "").split(os.pathsep) if p)
    return Settings(
        data_dir=data_dir,
        database_url=env.get("VOCFLEET_DATABASE_URL") or f"sqlite:///{data_dir / 'vocfleet.db'}",
        database_is_default=not env.get("VOCFLEET_DATABASE_URL"),
        broker_url=_broker(env.get("VOCFLEET_BROKER_URL") or None),
        artifact_root=_artifact_root(env.get("VOCFLEET_ARTIFACT_ROOT"), data_dir),
        cache_dir=Path(env.get("VOCFLEET_CACHE_DIR") or data_dir / "cache").expanduser().resolve(),
        score_roots=roots,
        heartbeat_seconds=_seconds("VOCFLEET_HEARTBEAT_SECONDS", env.get("VOCFLEET_HEARTBEAT_SECONDS", "10"), 0.05),
        stale_seconds=_seconds("VOCFLEET_STALE_SECONDS", env.get("VOCFLEET_STALE_SECONDS", "120"), 0),
        score_compile=_switch("VOCFLEET_SCORE_COMPILE", env.get("VOCFLEET_SCORE_COMPILE", "auto")),
        decode_threads=_count("VOCFLEET_DECODE_THREADS", env.get("VOCFLEET_DECODE_THREADS")),
        s3_endpoint_url=_endpoint(env.get("VOCFLEET_S3_ENDPOINT_URL") or None),
        visibility_timeout=_seconds("VOCFLEET_VISIBILITY_TIMEOUT", env.get("VOCFLEET_VISIBILITY_TIMEOUT", "3600"), 1),
        metrics_port=_port("VOCFLEET_METRICS_PORT", env.get("VOCFLEET_METRICS_PORT")),
        metrics_bind=env.get("VOCFLEET_METRICS_BIND") or "127.0.0.1",
        web_token=env.get("VOCFLEET_WEB_TOKEN") or None,
        web_password=env.get("VOCFLEET_WEB_PASSWORD") or None,
    )


# Celery brokers by URL scheme (kombu's transports that a fleet would use).
BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "sqs", "memory")


def _broker(value: str | None) -> str | None:
    """A broker URL whose scheme Celery can use, or None (the embedded default)."""
    if value is not None and value.partition("://")[0] not in BROKER_SCHEMES:
        raise SettingsError(
            f"VOCFLEET_BROKER_URL={value!r}: use redis://host:6379/0 (or another of {', '.join(BROKER_SCHEMES)}), or unset it for the embedded default"
        )
    return value


def _endpoint(value: str | None) -> str | None:
    """An http(s) URL with a host, or None."""
    if value is None:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is not a number
        ok = False
    if not ok:
        raise SettingsError(f"VOCFLEET_S3_ENDPOINT_URL={value!r}: use an http(s) URL such as http://localhost:9000")
    return value


def _artifact_root(value: str | None, data_dir: Path) -> str:
    """A URL (``s3://bucket/prefix``) as given; a local folder made absolute (default: ``<data dir>/artifacts``)."""
    if value and "://" in value and not value.startswith("file://"):
        if not value.startswith("s3://"):
            raise SettingsError(f"VOCFLEET_ARTIFACT_ROOT={value!r}: use a local folder or s3://bucket/prefix (MinIO, Ceph and AWS speak S3)")
        if not value[5:].strip("/"):
            raise SettingsError(f"VOCFLEET_ARTIFACT_ROOT={value!r}: name a bucket, as in s3://bucket/prefix")
        return value.rstrip("/")
    return str(Path((value or "").removeprefix("file://") or data_dir / "artifacts").expanduser().resolve())


MAX_SECONDS = 7 * 86400.0  # a week: longer waits are typos, and past about 1e9 a thread's sleep overflows


def _seconds(name: str, value: str, low: float) -> float:
    """A finite number of seconds, from ``low`` to a week."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not low <= seconds <= MAX_SECONDS:
        raise SettingsError(f"{name}={value!r}: use a number of seconds from {low:g} to {MAX_SECONDS:g} (a week)")
    return seconds


def _count(name: str, value: str | None) -> int | None:
    """A positive whole number, or None when unset."""
    if value is None or not value.strip():
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise SettingsError(f"{name}={value!r}: use a whole number of at least 1")
    return n


def _port(name: str, value: str | None) -> int | None:
    """A TCP port (1-65535), or None when unset."""
    port = _count(name, value)
    if port is not None and port > 65535:
        raise SettingsError(f"{name}={value!r}: use a port from 1 to 65535")
    return port


def _switch(name: str, value: str) -> bool | None:
    """``auto`` -> None, ``on``/``1``/``true`` -> True, ``off``/``0``/``false`` -> False."""
    v = value.strip().lower()
    if v in ("auto", ""):
        return None
    if v in ("on", "1", "true", "yes"):
        return True
    if v in ("off", "0", "false", "no"):
        return False
    raise SettingsError(f"{name}={value!r}: use auto, on or off")
