"""The detector registry: recording a finished job's detector, promotion, activation by hand, and the records listed.

One detector per class is active, enforced by a partial unique index and, on PostgreSQL, a
per-class advisory lock held by whoever changes it (:func:`lock_class`). Each detector's
``metrics`` hold the promotion decision made when it finished and every change by hand since.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from vocfleet.model import ConfigError
from vocfleet.model.config import TrainConfig
from vocfleet.model.events import EpochRecord

from .models import Detector, EpochMetric, EvaluationPicture, TrainJob, utcnow
from .records import Change, DetectorRecord
from .states import as_utc

if TYPE_CHECKING:
    from vocfleet.model.artifacts import ArtifactStore
    from vocfleet.model.engine import FitResult


def record_detector(s: Session, job: TrainJob, result: FitResult) -> Detector:
    """Add the detector a finished job trained; whether it becomes active is the job's ``promote`` policy.

    ``if-better`` (the default): active only if its AP is at least the active detector's, when both
    were judged on the same pictures with the same labels (the data fingerprint). On the same
    pictures with other labels (people corrected some), the active detector's AP is computed again
    from its stored probabilities against the new job's labels, and compared with that. Otherwise
    the APs do not compare, and the new one becomes active. ``always`` / ``never``: as they say. The
    decision and both APs are stored in the detector's ``metrics["promotion"]``.
    """
    metrics = dict(result.metrics)
    metrics.update(val=result.val_metrics, best_epoch=result.best_epoch, skipped_images=result.skipped_images, plots=result.plots)
    lock_class(s, job.voc_class)
    current = s.scalar(select(Detector).where(Detector.voc_class == job.voc_class, Detector.active.is_(True)).with_for_update())
    promote, decision = _promotion(s, job, metrics, current, result.pictures)
    if current is not None and (note := _other_training_data(metrics, current)):
        decision["decision"] += f"; {note}"
    metrics["promotion"] = decision
    if promote and current is not None:
        current.active = False
        s.flush()  # one active detector per class, enforced by a unique index
    detector = Detector(
        voc_class=job.voc_class,
        job_id=job.id,
        checkpoint_path=result.checkpoint,
        sha256=result.sha256,
        threshold=float(result.threshold),
        ap=float(result.metrics["ap"]),
        metrics=metrics,
        active=promote,
    )
    s.add(detector)
    s.flush()
    if result.pictures:  # where it is right and wrong, for its page (one insert of every row)
        rows = [{"detector_id": detector.id, "picture": pic, "label": label, "probability": p} for pic, label, p in result.pictures]
        s.execute(insert(EvaluationPicture), rows)
    if promote and current is not None:  # the replaced detector's history says by which, and why
        _add_event(current, {"at": utcnow().isoformat(timespec="seconds"), "event": "replaced", "by": detector.id, "reason": decision["decision"]})
    return detector


def _promotion(
    s: Session, job: TrainJob, metrics: dict[str, Any], current: Detector | None, pictures: list[tuple[str, bool, float]]
) -> tuple[bool, dict[str, Any]]:
    policy = job.promote or "if-better"
    decision: dict[str, Any] = {"policy": policy, "ap": metrics["ap"], "active_id": None, "active_ap": None}
    if current is None:
        return policy != "never", decision | {"decision": "first detector of its class" if policy != "never" else "kept inactive (--promote never)"}
    decision.update(active_id=current.id, active_ap=current.ap)
    if policy != "if-better":
        return policy == "always", decision | {"decision": f"--promote {policy}"}
    if not _same_evaluation(s, current, job, metrics):
        again = _ap_on_these_labels(s, current, pictures)
        if again is None:
            return True, decision | {"decision": "promoted: the active detector was evaluated on other pictures or labels, the APs do not compare"}
        decision["active_ap_these_labels"] = again
        same = "on the same pictures with these labels"
        if metrics["ap"] >= again:
            why = f"AP at least the active detector's {same} ({again:.3f}; {current.ap:.3f} on its own labels)"
            return True, decision | {"decision": f"promoted: {why}"}
        return False, decision | {"decision": f"kept detector {current.id} active: {same} its AP {again:.3f} is higher ({current.ap:.3f} on its own labels)"}
    if metrics["ap"] >= current.ap:
        return True, decision | {"decision": "promoted: AP at least the active detector's"}
    return False, decision | {"decision": f"kept detector {current.id} active: its AP {current.ap:.3f} is higher"}


def _ap_on_these_labels(s: Session, current: Detector, pictures: list[tuple[str, bool, float]]) -> float | None:
    """The active detector's AP on the new job's evaluation labels, from its own stored probabilities,
    where it was judged on exactly the same pictures; None otherwise (or where it kept none: before 0.11)."""
    from vocfleet.model.metrics import average_precision

    if not pictures:
        return None
    stored = dict(s.execute(select(EvaluationPicture.picture, EvaluationPicture.probability).where(EvaluationPicture.detector_id == current.id)).all())
    if len(stored) != len(pictures) or any(pic not in stored for pic, _, _ in pictures):
        return None
    return average_precision([stored[pic] for pic, _, _ in pictures], [int(label) for _, label, _ in pictures])


def _other_training_data(metrics: dict[str, Any], current: Detector) -> str | None:
    """A note when the new detector trained on other pictures or labels than the active one (their training fingerprints differ)."""
    ours, theirs = metrics.get("train_fingerprint"), current.metrics.get("train_fingerprint")
    if ours and theirs and ours != theirs:
        return f"trained on other pictures or labels than detector {current.id} (train_data {ours[:12]}, its {theirs[:12]})"
    return None


def lock_class(s: Session, voc_class: str) -> None:
    """Hold the class's detector lock until the transaction ends, so one active detector per class holds under concurrency.

    Two transactions that both find no active detector would otherwise both insert one (row
    locks cannot lock a row that does not exist). PostgreSQL: a transaction-scoped advisory lock
    keyed by the class. SQLite serialises writers itself.
    """
    if s.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"vocfleet.detectors.{voc_class}".encode()) - 2**31  # a signed 32-bit key
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _same_evaluation(s: Session, current: Detector, job: TrainJob, metrics: dict[str, Any]) -> bool:
    """Were both detectors judged on the same pictures with the same labels? By the data fingerprint, never by a path.

    A detector from before fingerprints (0.5.0) is compared by its evaluation split and the real
    path of its VOC root, links resolved.
    """
    ours, theirs = metrics.get("eval_fingerprint"), current.metrics.get("eval_fingerprint")
    if ours and theirs:
        return ours == theirs
    current_job = s.get(TrainJob, current.job_id) if current.job_id else None
    if current_job is None or current.metrics.get("split") != metrics.get("split"):
        return False
    roots = [j.config.get("voc_root") for j in (current_job, job)]
    return None not in roots and os.path.realpath(roots[0]) == os.path.realpath(roots[1])


def activate_detector(s: Session, detector_id: int, reason: str | None = None) -> tuple[Detector, Detector | None] | None:
    """Make a detector its class's active one (the one before it is returned too, itself if it was already
    active, None if its class had none); None if there is no such detector.

    The change is recorded in both detectors' history (``metrics["events"]``): when, which
    detector replaced which, and ``reason``.
    """
    detector = s.get(Detector, detector_id)
    if detector is None:
        return None
    lock_class(s, detector.voc_class)
    s.refresh(detector, with_for_update=True)
    before = s.scalar(select(Detector).where(Detector.voc_class == detector.voc_class, Detector.active.is_(True)).with_for_update())
    if before is detector:  # already active: nothing changes, nothing is recorded
        return detector, detector
    at = utcnow().isoformat(timespec="seconds")
    if before is not None:
        before.active = False
        _add_event(before, {"at": at, "event": "deactivated", "by": detector.id, "reason": reason})
        s.flush()
    detector.active = True
    _add_event(detector, {"at": at, "event": "activated", "replaced": before.id if before is not None else None, "reason": reason})
    return detector, before


def activate_usable(store: ArtifactStore, detector_id: int, reason: str | None) -> tuple[Detector, Detector | None] | None:
    """``activate_detector`` after what the CLI and the web app both check: the detector's file is
    there with its recorded sha256 (one whose file is gone or changed would fail every scoring run).
    Two short transactions: fetching a file from object storage holds no lock.

    Returns:
        As ``activate_detector``; None if there is no such detector.
    Raises:
        DetectorUnavailable: the file is gone or changed; the detector is not activated.
    """
    from vocfleet.model import DetectorUnavailable

    from .session import session_scope

    with session_scope() as s:
        found = detector_file(s, detector_id)
    if found is None:
        return None
    try:
        store.local_copy(*found)
    except DetectorUnavailable as exc:
        raise DetectorUnavailable(f"detector {detector_id} not activated: {exc}") from None
    with session_scope() as s:
        return activate_detector(s, detector_id, reason)


def _add_event(detector: Detector, event: dict[str, Any]) -> None:
    """Append to a detector's history (a new dict: the JSON column is not tracked for in-place changes)."""
    detector.metrics = {**detector.metrics, "events": [*detector.metrics.get("events", []), event]}


def detector_records(s: Session, include_inactive: bool = False, ids: list[int] | None = None) -> list[DetectorRecord]:
    """Detectors (active ones unless ``include_inactive``; ``ids``: just these, active or not) by class and id: metrics and how each was trained."""
    q = select(Detector, TrainJob).outerjoin(TrainJob, TrainJob.id == Detector.job_id).order_by(Detector.voc_class, Detector.id)
    if ids is not None:
        q = q.where(Detector.id.in_(ids))
    elif not include_inactive:
        q = q.where(Detector.active.is_(True))
    from vocfleet.model.artifacts import resolve

    from .settings import get_settings

    root = get_settings().artifact_root
    where = lambda location: resolve(root, location)  # rows hold locations relative to the store; no client opened
    plot = lambda m, k: where(p) if (p := m.get("plots", {}).get(k)) else None
    records = []
    for d, job in s.execute(q):
        m, cfg = d.metrics, (_as_run(job.config) if job is not None else {})
        created = as_utc(d.created_at)
        records.append(
            DetectorRecord(
                detector_id=d.id,
                voc_class=d.voc_class,
                job_id=d.job_id,
                active=d.active,
                ap=d.ap,
                ap11=m.get("ap11"),
                auc=m.get("auc"),
                accuracy=m.get("accuracy"),
                always_absent=m.get("baseline_accuracy"),
                f1=m.get("f1"),
                threshold=d.threshold,
                pos_rate=m["positives"] / max(m["images"], 1) if "positives" in m else None,
                eval_images=m.get("images"),
                split=m.get("split"),
                eval_fingerprint=m.get("eval_fingerprint"),
                train_fingerprint=m.get("train_fingerprint"),
                created=created,
                arch=cfg.get("arch"),
                image_size=cfg.get("image_size"),
                epochs=cfg.get("epochs"),
                init=how_started(job),
                start_job_id=job.start_job_id if job is not None else None,
                batch_size=cfg.get("batch_size"),
                lr=cfg.get("lr"),
                ema=cfg.get("ema"),
                seed=cfg.get("seed"),
                decision=decision(m),
                changes=changes(created.isoformat(timespec="seconds") if created else "", m),
                name=job.name if job is not None else None,
                tags=(job.tags if job is not None else None) or {},
                note=job.note if job is not None else None,
                checkpoint=where(d.checkpoint_path),
                curves=plot(m, "curves"),
                pr_curve=plot(m, "pr"),
            )
        )
    return records


def how_started(job: TrainJob | None) -> str | None:
    """Where a detector's training began: ``start job N`` (a shared start), or its ``--init`` (scratch, imagenet, a file)."""
    if job is None:
        return None
    if job.start_job_id is not None:
        return f"start job {job.start_job_id}"
    if job.config.get("start"):  # its start's row was deleted since
        return f"start {job.config['start'][:12]}"
    return job.config.get("init")


def changes(created: str, metrics: dict[str, Any]) -> list[Change]:
    """Every decision about one detector, oldest first: its promotion when its job finished, then each
    change by hand or by a newer detector's promotion (the history is appended to, never rewritten)."""
    said = [Change(created, metrics["promotion"]["decision"])] if metrics.get("promotion", {}).get("decision") else []
    return said + [Change(e["at"], _event_text(e)) for e in metrics.get("events") or []]


def _event_text(e: dict[str, Any]) -> str:
    why = f": {e['reason']}" if e.get("reason") else ""
    if e["event"] == "activated":
        replaced = f", replacing detector {e['replaced']}" if e.get("replaced") else ""
        return f"activated by hand{replaced}{why}"
    if e["event"] == "replaced":  # by a newer detector's promotion when its job finished
        return f"replaced by detector {e['by']}{why}"
    return f"deactivated: detector {e['by']} activated by hand{why}"


def decision(metrics: dict[str, Any]) -> str | None:
    """Why a detector is (or is not) active: its latest change (by hand, or replaced by a newer one), else its promotion decision."""
    said = metrics.get("promotion", {}).get("decision")
    events = metrics.get("events") or []
    if not events:
        return said
    return f"{_event_text(events[-1])} (at {events[-1]['at']})"


def active_detectors(s: Session, classes: list[str] | None = None) -> list[Detector]:
    """The active detector of each class (of ``classes`` when given), by class name."""
    q = select(Detector).where(Detector.active.is_(True)).order_by(Detector.voc_class)
    if classes is not None:
        q = q.where(Detector.voc_class.in_(classes))
    return list(s.scalars(q))


def detector_file(s: Session, detector_id: int) -> tuple[str, str] | None:
    """A detector's checkpoint location (relative to the store) and sha256; None if there is no such detector."""
    row = s.execute(select(Detector.checkpoint_path, Detector.sha256).where(Detector.id == detector_id)).first()
    return (row[0], row[1]) if row is not None else None


def export_metadata(s: Session, detector_id: int) -> dict[str, Any] | None:
    """What an exported file says of the detector it holds: class, threshold, AP, evaluation data, job, checksum."""
    det = s.get(Detector, detector_id)
    if det is None:
        return None
    return {
        "detector": det.id,
        "class": det.voc_class,
        "threshold": det.threshold,
        "ap": det.ap,
        "eval_split": det.metrics.get("split"),
        "eval_fingerprint": det.metrics.get("eval_fingerprint"),
        "train_fingerprint": det.metrics.get("train_fingerprint"),
        "job": det.job_id,
        "checkpoint_sha256": det.sha256,
    }


def active_fingerprints(s: Session, classes: list[str]) -> dict[str, tuple[int, str | None, str | None]]:
    """class -> (active detector id, its train fingerprint, its eval fingerprint), for the classes that have an active detector."""
    rows = s.execute(select(Detector.voc_class, Detector.id, Detector.metrics).where(Detector.voc_class.in_(classes), Detector.active.is_(True)))
    return {r.voc_class: (r.id, r.metrics.get("train_fingerprint"), r.metrics.get("eval_fingerprint")) for r in rows}


def other_data_notes(s: Session, planned: dict[str, tuple[str, str]], promote: str) -> list[str]:
    """One line per class whose new job will train or be judged on other pictures or labels than the class's active detector.

    ``planned``: class -> the (train, eval) fingerprints the new job will record.
    """
    notes = []
    for voc_class, (det_id, train_fp, eval_fp) in sorted(active_fingerprints(s, list(planned)).items()):
        ours_train, ours_eval = planned[voc_class]
        said = []
        if train_fp and train_fp != ours_train:
            said.append(f"trains on other pictures or labels (train_data {ours_train[:12]}, its {train_fp[:12]})")
        if eval_fp and eval_fp != ours_eval:
            then = "; --promote if-better will promote it without comparing AP" if promote == "if-better" else ""
            said.append(f"is judged on other pictures or labels (eval_data {ours_eval[:12]}, its {eval_fp[:12]}){then}")
        if said:
            notes.append(f"{voc_class}: unlike detector {det_id}, the active {voc_class} detector, this job {' and '.join(said)}")
    return notes


def backfill_fingerprints(cache_dir: Path) -> tuple[list[int], dict[int, str]]:
    """Give every detector trained before data fingerprints (0.5.0) one, computed from its job's settings
    (its evaluation split's ids and labels), so promotion compares data, not paths. Run by ``vocfleet db
    upgrade``: the one place old detectors are brought up to date, never inside a training job.

    Returns:
        (the ids given one, {id: why not} for those whose VOC root is gone or unreadable: promotion
        keeps comparing their real paths).
    """
    from .session import session_scope

    with session_scope() as s:
        rows = s.execute(select(Detector.id, Detector.metrics, TrainJob.config).join(TrainJob, TrainJob.id == Detector.job_id).order_by(Detector.id)).all()
    todo = [(r.id, r.config) for r in rows if not r.metrics.get("eval_fingerprint")]
    if not todo:
        return [], {}
    from vocfleet.model.splits import fingerprint, prepare_splits

    done, failed = [], {}
    for detector_id, config in todo:
        try:
            _, _, evaluation, _ = prepare_splits(TrainConfig.from_dict(config), cache_dir)
        except Exception as exc:  # noqa: BLE001 - its data may be gone; promotion then compares paths
            failed[detector_id] = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
            continue
        with session_scope() as s:
            det = s.get(Detector, detector_id, with_for_update=True)
            if det is not None and not det.metrics.get("eval_fingerprint"):
                det.metrics = {**det.metrics, "eval_fingerprint": fingerprint(evaluation)}
        done.append(detector_id)
    return done, failed


# Settings a comparison leaves out: where the data is and how the job ran, not what was trained.
_NOT_SETTINGS = {"voc_root", "device", "compile", "num_workers"}


def _as_run(config: dict[str, Any]) -> dict[str, Any]:
    """A stored job config with every setting it ran with: one stored before a setting existed reads as that setting's old value, not as None."""
    try:
        return TrainConfig.from_dict(config).to_dict()
    except (ConfigError, TypeError):  # a config this version cannot read: compared as stored
        return dict(config)


def detector_comparison(s: Session, detector_ids: list[int]) -> tuple[list[DetectorRecord], dict[str, list[Any]], dict[int, list[EpochRecord]]]:
    """Detectors side by side: their records, the training settings that differ, and each one's epochs.

    Returns:
        (rows in the order asked, setting -> one value per detector (only settings that differ),
        detector id -> its job's epoch records).
    Raises:
        ValueError: an id with no detector.
    """
    by_id = {r.detector_id: r for r in detector_records(s, ids=detector_ids)}
    if missing := [i for i in detector_ids if i not in by_id]:
        raise ValueError(f"no detector {', '.join(map(str, missing))}: see 'vocfleet detectors --all'")
    rows = [by_id[i] for i in detector_ids]
    configs = []
    for d in s.scalars(select(Detector).where(Detector.id.in_(detector_ids))):
        job = s.get(TrainJob, d.job_id) if d.job_id is not None else None
        configs.append((d.id, _as_run(job.config) if job is not None else {}))
    config_of = dict(configs)
    keys = sorted({k for _, c in configs for k in c} - _NOT_SETTINGS)
    differ = {k: [config_of[i].get(k) for i in detector_ids] for k in keys if len({repr(config_of[i].get(k)) for i in detector_ids}) > 1}
    return rows, differ, detector_epochs(s, {i: by_id[i].job_id for i in detector_ids})


def detector_epochs(s: Session, jobs: dict[int, int | None]) -> dict[int, list[EpochRecord]]:
    """Detector id -> the epoch records of the job that trained it (``jobs``: detector id -> job id; none where the job is gone)."""
    out: dict[int, list[EpochRecord]] = {}
    for detector_id, job_id in jobs.items():
        q = select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
        rows = s.scalars(q) if job_id is not None else []
        out[detector_id] = [EpochRecord(e.epoch, e.train_loss, e.val_loss, e.val_ap, e.lr, e.seconds, e.images_per_s) for e in rows]
    return out
