"""Infrastructure settings, read from ``VOCFLEET_*`` environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
        artifact_root: checkpoints and plots; must be shared by every worker in a fleet.
        cache_dir: decoded-image cache, local to each host.
        score_roots: folders workers may read when scoring (empty: no restriction).
    """

    data_dir: Path
    database_url: str
    broker_url: str | None
    artifact_root: Path
    cache_dir: Path
    score_roots: tuple[Path, ...]
    heartbeat_seconds: float
    stale_seconds: float


def get_settings() -> Settings:
    """Read the settings from the environment (cheap; called where needed, never cached)."""
    env = os.environ
    data_dir = Path(env.get("VOCFLEET_DATA_DIR") or _default_data_dir()).expanduser().resolve()
    roots = tuple(
        Path(p).expanduser().resolve() for p in env.get("VOCFLEET_SCORE_ROOTS", "").split(os.pathsep) if p
    )
    return Settings(
        data_dir=data_dir,
        database_url=env.get("VOCFLEET_DATABASE_URL") or f"sqlite:///{data_dir / 'vocfleet.db'}",
        broker_url=env.get("VOCFLEET_BROKER_URL") or None,
        artifact_root=Path(env.get("VOCFLEET_ARTIFACT_ROOT") or data_dir / "artifacts").expanduser().resolve(),
        cache_dir=Path(env.get("VOCFLEET_CACHE_DIR") or data_dir / "cache").expanduser().resolve(),
        score_roots=roots,
        heartbeat_seconds=float(env.get("VOCFLEET_HEARTBEAT_SECONDS", "10")),
        stale_seconds=float(env.get("VOCFLEET_STALE_SECONDS", "120")),
    )
