"""One typed record per noun, as ``db/`` hands it to the CLI, the web app, its API and the reports.

Values, not text: times are datetimes, lists are lists, tags a dict, statuses enums. How a
record is shown (``2/5`` epochs, a short fingerprint, tags as ``k=v``) is the CLI's and the
templates' business; the API returns the record's fields as they are (FastAPI describes them in
``/openapi.json`` from these classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .states import JobStatus


@dataclass(frozen=True)
class JobRecord:
    """A training job with its live epoch progress (``vocfleet status``, ``/jobs``)."""

    job_id: int
    voc_class: str  # a VOC class, or "all" for a shared start
    status: JobStatus
    epochs_done: int
    epochs: int
    val_ap: float | None  # the latest epoch's validation AP
    attempts: int
    worker: str | None  # host:pid of the worker that holds or last held it
    heartbeat: datetime | None
    error: str | None  # the first line of why it failed, or what a queued job waits for
    created: datetime | None
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    start_job_id: int | None = None  # the shared start it begins from


@dataclass(frozen=True)
class RunRecord:
    """A scoring run with its counts, live while it runs (``vocfleet runs``, ``/runs``)."""

    run_id: int
    status: JobStatus
    folders: list[str]
    classes: list[str]
    files: int | None  # None until the scan has counted them
    scored: int
    errors: int
    created: datetime | None
    finished: datetime | None
    error: str | None  # the first line of why it failed
    reused: int = 0  # of ``scored``, pictures taken from earlier runs (same content), not decoded again
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    note: str | None = None

    @property
    def done_fraction(self) -> float | None:
        return (self.scored + self.errors) / self.files if self.files else None


@dataclass(frozen=True)
class ResultRow:
    """One score of a run (``vocfleet results``, the Python API): a picture, a class, and its detector's answer."""

    image: str  # the file's path relative to ``folder``
    folder: str  # the folder the run scored
    voc_class: str
    probability: float
    threshold: float  # the detector's
    margin: float  # probability - threshold: how far above (or below) the threshold
    present: bool  # probability >= threshold
    detector: int
    sha256: str
    run: int
    image_id: int

    def as_row(self) -> dict[str, Any]:
        """The fields under the names ``vocfleet results`` prints (``class`` for ``voc_class``)."""
        row = asdict(self)
        row["class"] = row.pop("voc_class")
        return row


@dataclass(frozen=True)
class Change:
    """One decision about a detector: its promotion when its job ended, or a change by hand or by a newer detector."""

    at: str  # ISO 8601, as recorded
    what: str


@dataclass(frozen=True)
class DetectorRecord:
    """A detector: how well it does beside always-absent, how it was trained, why it is or is not active."""

    detector_id: int
    voc_class: str
    job_id: int | None  # None once its job's row is deleted
    active: bool
    ap: float
    ap11: float | None  # VOC2007's 11-point AP
    auc: float | None
    accuracy: float | None
    always_absent: float | None  # the accuracy of never saying the class: what accuracy must beat
    f1: float | None
    threshold: float
    pos_rate: float | None  # share of the evaluation pictures that have the class
    eval_images: int | None
    split: str | None
    eval_fingerprint: str | None  # the ids and labels of the evaluation pictures (sha256)
    train_fingerprint: str | None
    created: datetime | None
    arch: str | None  # the network: resnet50, or tiny (tests and smoke runs)
    image_size: int | None
    epochs: int | None
    init: str | None  # where training began: scratch, imagenet, a file, or "start job N"
    start_job_id: int | None
    batch_size: int | None
    lr: float | None
    ema: float | None
    seed: int | None
    decision: str | None  # the latest change, else the promotion decision
    changes: list[Change]  # every decision, oldest first
    name: str | None
    tags: dict[str, str]
    note: str | None
    checkpoint: str  # where the file is: a path, or an object-storage URI
    curves: str | None  # the training-curves PNG
    pr_curve: str | None  # the precision-recall PNG

    @property
    def status(self) -> str:
        """``active`` or ``inactive``: what ``--status`` filters on."""
        return "active" if self.active else "inactive"


@dataclass(frozen=True)
class WorkerRecord:
    """A fleet worker: who it is, what it runs and holds, how long since it last said it is alive (``vocfleet workers``)."""

    name: str  # node name: queues, device and host
    host: str
    queues: list[str]
    version: str  # the vocfleet it runs
    device: str
    state: str  # live, stopped (it said so) or silent (no heartbeat within the stale window)
    holding: list[str]  # the running rows it claimed: "job 3", "shard 12"
    heartbeat_age_s: float | None  # seconds since its last heartbeat, by the database's clock
