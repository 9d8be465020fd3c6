"""``submit --dry-run``: how long each job would take, before anything is queued.

Each job's rate (training images per second) comes from the latest epochs recorded at its shape
(network and image size), or, where none are, from a few training steps timed on this machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vocfleet.db.estimates import Shape, shape, training_rates
from vocfleet.db.listing import read_connection
from vocfleet.model.config import TrainConfig, eval_fold


@dataclass(frozen=True)
class Rate:
    """Training images per second at one shape, and where the figure comes from."""

    arch: str
    image_size: int
    images_per_s: float
    source: str


@dataclass(frozen=True)
class JobEstimate:
    """One job's images per epoch and seconds in all."""

    voc_class: str
    epochs: int
    image_size: int
    train_images: int
    seconds: float  # to a tenth: a tiny network's job can take under a second


@dataclass(frozen=True)
class Estimate:
    jobs: list[JobEstimate]
    rates: list[Rate]

    @property
    def total_seconds(self) -> float:
        return round(sum(j.seconds for j in self.jobs), 1)


def job_images(cfg: TrainConfig) -> tuple[int, int, int]:
    """(training images per epoch, validation images, evaluation images) of a job, from its lists alone."""
    from vocfleet.model.data import split_ids, training_sources

    root, ids, more = training_sources(cfg)
    listed, further = len(ids), sum(len(i) for _, i in more)  # evaluation comes from the first folder only
    fold = eval_fold(cfg.eval_split)
    if cfg.eval_split == "holdout" or fold is not None:  # held out of the training split
        evaluated = round(listed * cfg.eval_fraction) if fold is None else round(listed / fold[1])
        pool = listed - evaluated + further
    else:
        evaluated, pool = (0 if cfg.is_start else len(split_ids(root, cfg.eval_split, cfg.voc_class))), listed + further
    val = round(pool * cfg.val_fraction)
    train = pool - val
    if cfg.max_batches:
        train = min(train, cfg.max_batches * cfg.batch_size)
    return train, val, evaluated


def estimate(configs: list[TrainConfig], on_timing: Callable[[TrainConfig], None] = lambda cfg: None) -> Estimate:
    """Each job's time, one after another; ``on_timing`` is told before steps are timed here (seconds).

    From recorded epochs it reads the database alone (no torch: a dry run answers at once); only a
    shape never trained before is timed here, which needs torch.
    """
    with read_connection() as conn:
        recorded = training_rates(conn)
    rates: dict[Shape, Rate] = {}
    jobs = []
    for cfg in configs:
        key = shape(cfg.to_dict())
        if key not in rates:
            if key in recorded:
                rate, n = recorded[key]
                source = f"{n} earlier epoch(s) at {cfg.image_size} px in the database"
            else:
                from vocfleet.model.engine import measure_rate, resolve_device

                on_timing(cfg)
                rate = measure_rate(cfg.image_size, cfg.batch_size, cfg.device, arch=cfg.arch)
                source = f"timed steps on this machine's {resolve_device(cfg.device).type}"
            rates[key] = Rate(cfg.arch, cfg.image_size, rate, source)
        rate = rates[key].images_per_s
        train, val, evaluated = job_images(cfg)
        # A forward pass costs about a third of a training step: validation every epoch, evaluation once.
        seconds = cfg.epochs * (train + val / 3) / rate + (val + evaluated) / (3 * rate)
        jobs.append(JobEstimate(cfg.voc_class, cfg.epochs, cfg.image_size, train, round(seconds, 1)))
    return Estimate(jobs, list(rates.values()))
