"""``vocfleet doctor``: is this host ready to be part of the fleet? One line per check, in order."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vocfleet.db.settings import Settings, get_settings, shown
from vocfleet.worker.executor import executor

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn (worth knowing, not fatal) or FAIL
    detail: str


def _database(settings: Settings) -> Check:
    from vocfleet import __version__
    from vocfleet.db.session import check_schema

    where = shown(settings.database_url)
    revision = check_schema()  # SchemaMismatch, or the driver's error: reported by run_checks
    return Check("database", OK, f"{where}: schema {revision}, which vocfleet {__version__} runs on")


def _broker(settings: Settings) -> Check:
    if not settings.broker_url:
        return Check("broker", OK, "none: the embedded default (vocfleet run)")
    from vocfleet.worker.dispatch import ask_broker

    where = shown(settings.broker_url)
    exc = ask_broker(settings.broker_url)
    if exc is not None:
        return Check("broker", FAIL, f"{where} does not answer ({' '.join(str(exc).split())})")
    return Check("broker", OK, f"{where} answers")


def _artifacts(settings: Settings) -> Check:
    from vocfleet.model.artifacts import ArtifactStore

    store = ArtifactStore.from_settings(settings)
    if store.remote:
        store.check()
    else:
        root = Path(store.root)
        probe = root / f".vocfleet-probe-{uuid.uuid4().hex}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"probe")
            probe.unlink()
        except OSError as exc:
            return Check("artifacts", FAIL, f"cannot write {root}: {exc.strerror}")
    return Check("artifacts", OK, f"{store.root} takes a write")


def _score_roots(settings: Settings) -> Check:
    if not settings.score_roots:
        fleet = executor(settings).fleet
        return Check("score roots", WARN if fleet else OK, "none set: workers refuse to score in a fleet (set VOCFLEET_SCORE_ROOTS)" if fleet else "any folder")
    bad = [str(r) for r in settings.score_roots if not (r.is_dir() and os.access(r, os.R_OK | os.X_OK))]
    if bad:
        return Check("score roots", FAIL, f"not a readable folder here: {', '.join(bad)}")
    return Check("score roots", OK, ", ".join(str(r) for r in settings.score_roots))


def _voc_root(_settings: Settings, root: str | None) -> Check:
    if not root:
        return Check("VOC root", OK, "VOCFLEET_VOC_ROOT not set (each submit passes --voc-root)")
    from vocfleet.model.data import check_voc_root

    return Check("VOC root", OK, str(check_voc_root(root)))


def _gpus(_settings: Settings) -> Check:
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda
        return Check("GPUs", WARN, f"none usable by torch {torch.__version__} (built for CUDA {built or 'none'}): training and scoring run on the CPU")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check("GPUs", OK, f"{len(names)}: {', '.join(names)} (CUDA {torch.version.cuda})")


def _workers(settings: Settings) -> Check:
    from datetime import timedelta

    from vocfleet import __version__
    from vocfleet.db.session import session_scope
    from vocfleet.db.workers import worker_records

    if not executor(settings).fleet:
        return Check("workers", OK, "none needed: the embedded default")
    with session_scope() as s:
        rows = worker_records(s, timedelta(seconds=settings.stale_seconds))
    if not rows:
        return Check("workers", WARN, "no live worker: queued work waits until one starts (vocfleet worker)")
    versions = sorted({r.version for r in rows})
    other = [v for v in versions if v != __version__]
    detail = f"{len(rows)} live, version {', '.join(versions)}"
    return Check("workers", WARN if other else OK, detail + (f" (this host runs {__version__})" if other else ""))


CHECKS: list[tuple[str, Callable[[Settings], Check] | None]] = [
    ("database", _database),
    ("broker", _broker),
    ("artifacts", _artifacts),
    ("score roots", _score_roots),
    ("VOC root", None),
    ("GPUs", _gpus),
    ("workers", _workers),
]


def run_checks(voc_root: str | None = None) -> list[Check]:
    """Every check, each reduced to one line; a check that raises fails with the error's first line.

    ``voc_root``: a VOC folder to check (``--voc-root``, or ``VOCFLEET_VOC_ROOT`` as for submit).
    """
    settings = get_settings()
    out = []
    for name, check in CHECKS:
        if name == "workers" and out and out[0].status == FAIL:
            out.append(Check(name, FAIL, "not checked: the database is not usable"))
            continue
        try:
            out.append(check(settings) if check is not None else _voc_root(settings, voc_root))
        except Exception as exc:  # noqa: BLE001 - each check says what went wrong, the next still runs
            reason = " ".join(str(getattr(exc, "orig", exc)).split()) or exc.__class__.__name__
            out.append(Check(name, FAIL, reason[:300]))
    return out
