"""The values training hands across layers: one epoch's record and the progress events of ``fit``.

``EpochRecord`` is written once here; the engine makes it, ``db.training.record_epoch`` stores
it and ``db.models.EpochMetric`` has one column per field (a test holds them together). Progress
callbacks receive one of the small event classes below; ``match`` on the class, not on a key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: its losses, validation AP, learning rate and speed."""

    epoch: int
    train_loss: float
    val_loss: float
    val_ap: float
    lr: float
    seconds: float
    images_per_s: float

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        """Every field but ``epoch``: the float columns of ``epoch_metrics``."""
        return tuple(f.name for f in fields(cls) if f.name != "epoch")

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints (``torch.load(weights_only=True)`` reads no classes) and JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        return cls(epoch=int(d["epoch"]), **{k: float(d[k]) for k in cls.metric_names()})


@dataclass(frozen=True)
class CacheProgress:
    """The decode-once cache: ``done`` of ``total`` images decoded."""

    done: int
    total: int


@dataclass(frozen=True)
class BatchProgress:
    """Batch ``batch`` of ``batches`` finished in ``epoch``."""

    epoch: int
    batch: int
    batches: int


@dataclass(frozen=True)
class EpochFinished:
    """An epoch finished and its resume state is on disk."""

    record: EpochRecord
    epochs: int


@dataclass(frozen=True)
class FitResumed:
    """Training resumed from ``last.pt``: the epochs it holds, the last of which a killed worker may never have recorded."""

    history: tuple[EpochRecord, ...]


@dataclass(frozen=True)
class FitWarning:
    """Something the user should see that did not stop training (an unreadable ``last.pt``)."""

    message: str


@dataclass(frozen=True)
class FitFinished:
    """The detector is saved; ``metrics`` are its evaluation figures."""

    metrics: dict[str, Any]


Event = CacheProgress | BatchProgress | EpochFinished | FitResumed | FitWarning | FitFinished
Progress = Callable[[Event], None]
