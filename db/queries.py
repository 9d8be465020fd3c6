"""Read-only questions the CLI and reports ask about detectors (jobs and runs: ``listing.py``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Detector, TrainJob
from .states import as_utc


def detector_rows(s: Session, include_inactive: bool = False) -> list[dict[str, Any]]:
    """Detectors (active ones unless ``include_inactive``): evaluation metrics and how each was trained, as flat columns."""
    q = select(Detector, TrainJob).outerjoin(TrainJob, TrainJob.id == Detector.job_id).order_by(Detector.voc_class, Detector.id)
    if not include_inactive:
        q = q.where(Detector.active.is_(True))
    from vocfleet.model.artifacts import ArtifactStore

    from .settings import get_settings

    where = ArtifactStore.from_settings(get_settings()).resolve  # rows hold locations relative to the store
    plot = lambda m, k: where(p) if (p := m.get("plots", {}).get(k)) else None
    rows = []
    for d, job in s.execute(q):
        m, cfg = d.metrics, (job.config if job is not None else {})
        rows.append(
            {
                "id": d.id,
                "class": d.voc_class,
                "job": d.job_id,
                "active": d.active,
                "ap": d.ap,
                "ap11": m.get("ap11"),
                "auc": m.get("auc"),
                "accuracy": m.get("accuracy"),
                "always_absent": m.get("baseline_accuracy"),
                "f1": m.get("f1"),
                "threshold": d.threshold,
                "pos_rate": m["positives"] / max(m["images"], 1) if "positives" in m else None,
                "eval_images": m.get("images"),
                "split": m.get("split"),
                # The data fingerprint (ids and labels of the evaluation pictures), short as git shows a commit.
                "eval_data": (m.get("eval_fingerprint") or "")[:12] or None,
                "eval_fingerprint": m.get("eval_fingerprint"),
                "train_fingerprint": m.get("train_fingerprint"),
                "created": as_utc(d.created_at),
                "image_size": cfg.get("image_size"),
                "epochs": cfg.get("epochs"),
                "init": cfg.get("init"),
                "batch_size": cfg.get("batch_size"),
                "lr": cfg.get("lr"),
                "ema": cfg.get("ema", 0.0) if job is not None else None,
                "seed": cfg.get("seed"),
                "decision": decision(m),
                "checkpoint": where(d.checkpoint_path),
                "curves": plot(m, "curves"),
                "pr_curve": plot(m, "pr"),
            }
        )
    return rows


def decision(metrics: dict[str, Any]) -> str | None:
    """Why a detector is (or is not) active: the latest change by hand, else the promotion decision made when it finished."""
    said = metrics.get("promotion", {}).get("decision")
    events = metrics.get("events") or []
    if not events:
        return said
    e = events[-1]
    why = f": {e['reason']}" if e.get("reason") else ""
    if e["event"] == "activated":
        replaced = f", replacing detector {e['replaced']}" if e.get("replaced") else ""
        return f"activated by hand at {e['at']}{replaced}{why}"
    return f"deactivated at {e['at']}: detector {e['by']} activated by hand{why}"


def active_detectors(s: Session, classes: list[str] | None = None) -> list[Detector]:
    """The active detector of each class (of ``classes`` when given), by class name."""
    q = select(Detector).where(Detector.active.is_(True)).order_by(Detector.voc_class)
    if classes is not None:
        q = q.where(Detector.voc_class.in_(classes))
    return list(s.scalars(q))
