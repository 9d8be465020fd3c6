"""SQLAlchemy models: training jobs, their per-epoch metrics, and trained detectors."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    UniqueConstraint,
    exists,
    false,
    or_,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, aliased, mapped_column, relationship

from vocfleet.model.config import TrainConfig

from .states import JobStatus, utcnow

# JSON columns are JSONB on PostgreSQL (indexable, compact, operators for ad-hoc SQL), JSON text elsewhere.
_json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: _json, list[Any]: _json, datetime: DateTime(timezone=True)}


# Stored as plain strings (native_enum=False) so SQLite and PostgreSQL share one schema.
_status_type = Enum(JobStatus, native_enum=False, length=16, validate_strings=True, name="job_status")


class Claimable:
    """Columns of a unit of work that one worker at a time claims, heartbeats and finishes."""

    status: Mapped[JobStatus] = mapped_column(_status_type, default=JobStatus.queued, index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Last time it was handed to the broker; the scheduler re-sends rows queued too long (a broker
    # that restarted without persistence forgets its messages, the database does not).
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    worker_host: Mapped[str | None] = mapped_column(String(255))
    # A fresh token per claim: a worker that lost its claim (reaped, re-delivered) sees it change.
    claim_token: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)

    @classmethod
    def ready(cls) -> ColumnElement[bool]:
        """SQL: a queued row of this table may be claimed now (nothing it waits for). Every row, unless a table says otherwise."""
        return true()


class Labelled:
    """What a person calls a unit of work, to find it again (``--name``, ``--tag KEY=VALUE``, ``--note``)."""

    name: Mapped[str | None] = mapped_column(String(100), default=None)
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON, default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)


class TrainJob(Labelled, Claimable, Base):
    """One training job: one VOC class, one frozen config. The system of record for a job."""

    __tablename__ = "train_jobs"
    __table_args__ = (UniqueConstraint("key", name="uq_train_jobs_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique across databases: names the job's artifact folder (ids restart at 1 in every database).
    key: Mapped[str] = mapped_column(String(32), default=lambda: uuid.uuid4().hex)
    voc_class: Mapped[str] = mapped_column(String(32), index=True)
    config: Mapped[dict[str, Any]]
    epochs_done: Mapped[int] = mapped_column(default=0)
    latest_val_ap: Mapped[float | None]
    # When its detector becomes the class's active one: if-better (AP at least the active one's), always, never.
    promote: Mapped[str] = mapped_column(String(16), default="if-better")
    # The shared start this class job begins from; it is not claimed before that job has succeeded.
    start_job_id: Mapped[int | None] = mapped_column(ForeignKey("train_jobs.id", ondelete="SET NULL", name="fk_train_jobs_start_job_id"), index=True)
    # A start job's result: its start.pt, relative to the artifact store, and that file's sha256.
    start_file: Mapped[str | None] = mapped_column(Text)
    start_sha256: Mapped[str | None] = mapped_column(String(64))
    start_job: Mapped[TrainJob | None] = relationship(remote_side="TrainJob.id", foreign_keys=[start_job_id])

    epochs: Mapped[list[EpochMetric]] = relationship(back_populates="job", cascade="all, delete-orphan", order_by="EpochMetric.epoch")

    @property
    def total_epochs(self) -> int:
        return int(self.config.get("epochs", 0))

    @property
    def train_config(self) -> TrainConfig:
        """The stored config as the ``TrainConfig`` it ran with: a row stored before a setting existed reads
        as that setting's old value (``TrainConfig.from_dict``, the one place that knows them).

        Raises:
            ConfigError: a config this version cannot read.
        """
        return TrainConfig.from_dict(self.config)

    @classmethod
    def ready(cls) -> ColumnElement[bool]:
        """SQL: no start, or a start that has succeeded."""
        start = aliased(TrainJob)
        return or_(cls.start_job_id.is_(None), exists().where(start.id == cls.start_job_id, start.status == JobStatus.succeeded))

    def __repr__(self) -> str:
        return f"TrainJob(id={self.id}, class={self.voc_class!r}, status={self.status.value}, epochs={self.epochs_done}/{self.total_epochs})"


class EpochMetric(Base):
    """Metrics of one finished epoch of one job; (job, epoch) is unique so a retry never duplicates."""

    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_epoch_metrics_job_epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("train_jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]
    train_loss: Mapped[float]
    val_loss: Mapped[float]
    val_ap: Mapped[float]
    lr: Mapped[float]
    seconds: Mapped[float]
    images_per_s: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[TrainJob] = relationship(back_populates="epochs")

    def __repr__(self) -> str:
        return f"EpochMetric(job={self.job_id}, epoch={self.epoch}, loss={self.train_loss:.4f}, val_ap={self.val_ap:.4f})"


class Detector(Base):
    """A trained detector: its checkpoint, evaluation metrics and decision threshold."""

    __tablename__ = "detectors"
    __table_args__ = (
        # One active detector per class, enforced by the database itself.
        Index(
            "uq_detectors_active_class",
            "voc_class",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    voc_class: Mapped[str] = mapped_column(String(32), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("train_jobs.id", ondelete="SET NULL"), unique=True, nullable=True)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float]
    ap: Mapped[float]
    metrics: Mapped[dict[str, Any]]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Detector(id={self.id}, class={self.voc_class!r}, ap={self.ap:.3f}, active={self.active})"


class EvaluationPicture(Base):
    """One picture a detector was judged on: whether its class is there, and the detector's probability.

    Written with the detector; its false positives (absent, highest probability first), false
    negatives (present, lowest first) and the pictures near its threshold are read by the index.
    """

    __tablename__ = "evaluation_pictures"
    __table_args__ = (Index("ix_evaluation_pictures_ranked", "detector_id", "label", "probability"),)

    detector_id: Mapped[int] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"), primary_key=True)
    picture: Mapped[str] = mapped_column(String(64), primary_key=True)  # its VOC id: JPEGImages/<picture>.jpg under the job's VOC root
    label: Mapped[bool] = mapped_column(Boolean)
    probability: Mapped[float]

    def __repr__(self) -> str:
        return f"EvaluationPicture(detector={self.detector_id}, picture={self.picture!r}, label={self.label}, p={self.probability:.3f})"


class PictureLabel(Base):
    """A person's word that a class is (or is not) in a picture, found by its content: it follows the file wherever it moves.

    Appended to, never overwritten: the latest row of a (picture, class) is what counts, the rest is its history.
    """

    __tablename__ = "picture_labels"
    __table_args__ = (Index("ix_picture_labels_sha256_class", "sha256", "voc_class", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    voc_class: Mapped[str] = mapped_column(String(32))
    present: Mapped[bool] = mapped_column(Boolean)
    who: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where the person saw it, for a picture no run scored (a detector's evaluation picture); None otherwise.
    folder: Mapped[str | None] = mapped_column(Text, default=None)
    rel_path: Mapped[str | None] = mapped_column(Text, default=None)

    def __repr__(self) -> str:
        return f"PictureLabel(id={self.id}, sha256={self.sha256[:12]}, class={self.voc_class!r}, present={self.present}, who={self.who!r})"


class ScoreRun(Labelled, Claimable, Base):
    """One request to score folders with a set of detectors.

    Claimed first by the worker that scans the folders into :class:`ScoreShard` rows; once
    ``scanned``, the run stays ``running`` with no claim while workers score its shards, and ends
    when its last shard does. Counts are the sum of its shards' work, added chunk by chunk.
    """

    __tablename__ = "score_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    folders: Mapped[list[Any]]
    classes: Mapped[list[Any]]
    detector_ids: Mapped[list[Any]]
    batch_size: Mapped[int] = mapped_column(default=64)
    shard_size: Mapped[int] = mapped_column(default=2000)
    scanned: Mapped[bool] = mapped_column(Boolean, default=False)
    total_files: Mapped[int | None]
    scored_images: Mapped[int] = mapped_column(default=0)
    error_files: Mapped[int] = mapped_column(default=0)
    # class -> pictures where it is present, kept as chunks land (a run's page at a million pictures)
    class_counts: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)
    reused: Mapped[int] = mapped_column(default=0, server_default="0")  # pictures taken from earlier runs, not decoded again
    fresh: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # score --fresh: reuse nothing

    def __repr__(self) -> str:
        return f"ScoreRun(id={self.id}, status={self.status.value}, scored={self.scored_images}, errors={self.error_files}, total={self.total_files})"


class ScoreShard(Claimable, Base):
    """A slice of a run's scan: up to ``shard_size`` files, scored by one worker at a time.

    ``files`` holds ``[folder index, path relative to that folder, reason or null]`` in scan
    order; a reason marks a file the scan already knows cannot be scored (a link out of the
    folder, a device, a name that is not UTF-8).
    """

    __tablename__ = "score_shards"
    __table_args__ = (UniqueConstraint("run_id", "number", name="uq_score_shards_run_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("score_runs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    files: Mapped[list[Any]] = mapped_column(deferred=True)  # up to shard_size paths: loaded only when asked for
    total_files: Mapped[int]
    scored_images: Mapped[int] = mapped_column(default=0)
    error_files: Mapped[int] = mapped_column(default=0)

    def __repr__(self) -> str:
        return f"ScoreShard(id={self.id}, run={self.run_id}, number={self.number}, status={self.status.value}, files={self.total_files})"


class RunFile:
    """A file one scoring run saw: the folder it was asked to score and the path relative to it."""

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("score_runs.id", ondelete="CASCADE"), index=True)
    folder: Mapped[str] = mapped_column(Text)
    rel_path: Mapped[str] = mapped_column(Text)


class ScoredImage(RunFile, Base):
    """An image a run scored: where it was, and size plus content hash to recognise a renamed copy."""

    __tablename__ = "scored_images"
    __table_args__ = (
        UniqueConstraint("run_id", "folder", "rel_path", name="uq_scored_images_run_path"),
        # results --image NAME, and (PostgreSQL, pattern ops) the gallery's folder filter: rel_path LIKE 'sub/%'
        Index("ix_scored_images_run_rel_path", "run_id", "rel_path", postgresql_ops={"rel_path": "text_pattern_ops"}),
        Index("ix_scored_images_run_order", "run_id", "id"),  # a run's images in the order they were recorded
    )

    size_bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int]
    height: Mapped[int]
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)  # when scored: with the size, a later run knows the file unchanged unread

    def __repr__(self) -> str:
        return f"ScoredImage(id={self.id}, run={self.run_id}, path={self.rel_path!r})"


class Score(Base):
    """One probability per (image, detector); the image belongs to one run, so this is unique per run too.

    Kept lean for bulk writes (tens of thousands of rows per second): each foreign key costs a
    lookup per inserted row, so only the image is one (deleting an image deletes its scores);
    ``run_id`` and ``detector_id`` are plain columns (detectors are deactivated, never deleted).
    """

    __tablename__ = "scores"
    # One class of one run, present or not, most probable first, in the gallery's order to the last
    # column: results --class X --present --limit N reads N index entries, and a gallery's count or a
    # picture's place in it reads the index alone; per-run queries use its first column.
    __table_args__ = (Index("ix_scores_gallery", "run_id", "voc_class", "present", "probability", "image_id"),)

    # The key is (image, detector): no surrogate id, no second unique index to maintain.
    image_id: Mapped[int] = mapped_column(ForeignKey("scored_images.id", ondelete="CASCADE"), primary_key=True)
    detector_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    run_id: Mapped[int]
    voc_class: Mapped[str] = mapped_column(String(32))
    probability: Mapped[float]
    present: Mapped[bool] = mapped_column(Boolean)

    def __repr__(self) -> str:
        return f"Score(image={self.image_id}, class={self.voc_class!r}, p={self.probability:.3f})"


class FileError(RunFile, Base):
    """A file a run saw but could not score, with the reason."""

    __tablename__ = "file_errors"
    __table_args__ = (UniqueConstraint("run_id", "folder", "rel_path", name="uq_file_errors_run_path"),)

    reason: Mapped[str] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"FileError(run={self.run_id}, path={self.rel_path!r}, reason={self.reason!r})"


class Worker(Base):
    """A fleet worker as it says itself: where, which queues, which vocfleet, which device, and its heartbeat.

    ``vocfleet workers`` lists them; what each holds is read from the rows of work it claimed.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # the Celery node name, as on the rows it claims
    host: Mapped[str] = mapped_column(String(200))
    queues: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    device: Mapped[str] = mapped_column(String(100))
    pid: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)


# One row, written by 'vocfleet db upgrade': the oldest schema revision whose code may still run on this database.
schema_compat = Table("schema_compat", Base.metadata, Column("oldest_code", String(32), nullable=False))
