"""The one frozen dataclass of training settings, stored whole in the job row and every checkpoint."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import ConfigError, check_class

MIN_IMAGE_SIZE = 32  # ResNet-50 downsamples 32x: below this the last stage sees less than one pixel
MAX_IMAGE_SIZE = 1024
MAX_EPOCHS = 1000
MAX_BATCH = 4096
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

OPTIMIZERS = ("adamw", "sgd")
BALANCE = ("sampler", "pos_weight", "none")
DIFFICULT = ("exclude", "positive", "negative")
SCHEDULES = ("onecycle", "constant")
# resnet50: the product. resnet50-lowres: the same network and weights without the stem's max pool, so
# small pictures keep a 4x larger map to the end (64 px: 4x4 instead of 2x2) at 4x the compute.
# tiny: the same torchvision ResNet code at 1/8 width and one block per stage (~0.1 M parameters),
# for tests and smoke runs of the whole path in seconds.
ARCHS = ("resnet50", "resnet50-lowres", "tiny")
RESNET50_WEIGHTS = ("resnet50", "resnet50-lowres")  # the archs whose state dict is ResNet-50's
# The class of a shared start job: one network learning all 20 VOC labels, that class jobs start from.
START_CLASS = "all"
FOLD_BY = ("label", "image")
# --augment-policy (model/augment.py's POLICIES): the origin's scale, flip and rotation, or "strong" (a wider
# zoom, shifts and a colour jitter), for a long schedule on few pictures; "erase": strong and random erasing.
AUGMENT_POLICIES = ("origin", "strong", "erase")


def check_init(init: str) -> str:
    """Validate an ``--init`` value without loading anything heavy."""
    if init in ("scratch", "imagenet"):
        return init
    if not Path(init).expanduser().is_file():
        raise ConfigError(f"--init {init!r}: not 'scratch', 'imagenet' or an existing state-dict file")
    return str(Path(init).expanduser().resolve())


def check_start_fits(start: TrainConfig, cfg: TrainConfig, start_job_id: int | str) -> None:
    """A class job may begin from ``start`` only if no picture it is judged on was in the start's training.

    The same network, first folder, training split and evaluation split (with a start, evaluation
    pictures are chosen by image alone, so labels cannot move them); the job may train on further
    folders the start did not (a labels export, another year: more for this job, nothing new for the
    start), but not lack one the start trained on.

    Raises:
        ConfigError: another network, VOC folder, training split or evaluation split (one line naming it).
    """
    for name in ("arch", "voc_root", "train_split", "eval_split", "fold_by") + (("eval_fraction",) if cfg.eval_split == "holdout" else ()):
        ours, its = getattr(cfg, name), getattr(start, name)
        if ours != its:
            why = "its network does not fit" if name == "arch" else "pictures this job is judged on could be in the start's training"
            setting = name.replace("_", "-")
            raise ConfigError(f"--start {start_job_id}: the start has {setting} {its!r}, this job {ours!r} ({why}); use the same, or --start new")
    if lacking := [r for r in start.more_roots if r not in cfg.more_roots]:
        raise ConfigError(
            f"--start {start_job_id}: the start also trained on {', '.join(lacking)}, this job does not "
            "(pictures this job is judged on could be in the start's training); give it as a further --voc-root too, or --start new"
        )


_FOLD = re.compile(r"fold:(\d+)/(\d+)")


def eval_fold(eval_split: str) -> tuple[int, int] | None:
    """``fold:F/K`` as (F, K); None for a list name or ``holdout``.

    Raises:
        ConfigError: a malformed fold (K from 2 to 20, F from 0 to K - 1).
    """
    if not eval_split.startswith("fold:"):
        return None
    m = _FOLD.fullmatch(eval_split)
    if not m or not (2 <= int(m[2]) <= 20 and 0 <= int(m[1]) < int(m[2])):
        raise ConfigError(f"--eval-split {eval_split!r}: fold:F/K evaluates on fold F of K (K from 2 to 20, F from 0 to K-1), e.g. fold:0/4")
    return int(m[1]), int(m[2])


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (infrastructure paths excluded).

    ``eval_split`` is a list name (``val``, ``test``) or ``holdout``: a fixed, seed-independent
    ``eval_fraction`` of the training split that is never trained on (for roots with one split);
    or ``fold:F/K``: fold F of K of the training split (k-fold evaluation: every image evaluated
    once over the K jobs), stratified by the class's label with ``fold_by="label"``, or cut by the
    image id alone with ``fold_by="image"``, the same pictures for every class (what a shared start
    needs: it trains on every class's labels, so no class may evaluate on its pictures).
    ``val_fraction`` of the remaining training images is held out to pick the threshold and the
    best epoch. ``aux_classes`` trains with the other 19 classes' labels of the same training
    images as auxiliary targets; the saved detector keeps only its own class's logit.

    ``more_roots``: further VOC year folders whose ``train_split`` pictures are trained on too (the
    usual VOC2007+2012 trainval); evaluation is always ``voc_root``'s (its split, hold-out or fold),
    and a picture id found in two folders is taken from the first.

    ``voc_class="all"`` (:data:`START_CLASS`) is a shared start: one network trained on all 20
    labels of every training picture (the evaluation pictures left out), saved as ``start.pt``.
    ``start`` names the key of the start job a class job begins from (its network, and its
    class's row of the start's head); the job's ``init`` is then the start's, not its own.
    """

    voc_class: str
    voc_root: str
    train_split: str = "train"
    eval_split: str = "holdout"
    eval_fraction: float = 0.25
    val_fraction: float = 0.15
    arch: str = "resnet50"
    image_size: int = 224
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    schedule: str = "onecycle"
    init: str = "scratch"
    zero_init_residual: bool = True
    ema: float = 0.95
    augment: bool = True
    augment_policy: str = "origin"
    balance: str = "sampler"
    aux_classes: bool = False
    label_smoothing: float = 0.0
    mixup: float = 0.0
    drop_path: float = 0.0
    progressive_resize: float = 0.0
    difficult: str = "exclude"
    start: str | None = None
    fold_by: str = "label"
    more_roots: tuple[str, ...] = ()
    seed: int = 0
    max_batches: int | None = None
    device: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:  # noqa: C901 - one flat list of checks, one per setting, each with its one-line refusal
        object.__setattr__(self, "more_roots", tuple(self.more_roots))  # a JSON list read back from a row
        if self.voc_root in self.more_roots or len(set(self.more_roots)) < len(self.more_roots):
            raise ConfigError(f"--voc-root {self.voc_root} {' '.join(self.more_roots)}: a folder is given twice; give each VOC year folder once")
        if self.voc_class != START_CLASS:
            object.__setattr__(self, "voc_class", check_class(self.voc_class))  # frozen: normalised once, here
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise ConfigError(f"--epochs {self.epochs}: must be between 1 and {MAX_EPOCHS}")
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError(f"--image-size {self.image_size}: ResNet-50 needs {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px (64 or more recommended)")
        if not 2 <= self.batch_size <= MAX_BATCH:
            raise ConfigError(f"--batch-size {self.batch_size}: must be between 2 (batch norm needs two samples) and {MAX_BATCH}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 10):
            raise ConfigError(f"--lr {self.lr}: must be a number above 0 and at most 10")
        if not (math.isfinite(self.weight_decay) and 0 <= self.weight_decay <= 1):
            raise ConfigError(f"--weight-decay {self.weight_decay}: must be between 0 and 1")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed {self.seed}: must be between 0 and 2**63 - 1")
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"--device {self.device!r}: use auto, cpu, cuda or cuda:N")
        for name, value, valid in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("balance", self.balance, BALANCE),
            ("difficult", self.difficult, DIFFICULT),
            ("schedule", self.schedule, SCHEDULES),
            ("arch", self.arch, ARCHS),
            ("fold-by", self.fold_by, FOLD_BY),
            ("augment-policy", self.augment_policy, AUGMENT_POLICIES),
        ):
            if value not in valid:
                raise ConfigError(f"--{name} {value!r}: only {', '.join(valid)} are supported")
        eval_fold(self.eval_split)  # a malformed fold:F/K says so now
        for name in ("eval_fraction", "val_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be between 0 and 1")
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 0.5):
            raise ConfigError(f"--label-smoothing {self.label_smoothing}: must be at least 0 (off) and below 0.5")
        if not (math.isfinite(self.mixup) and 0 <= self.mixup <= 10):
            raise ConfigError(f"--mixup {self.mixup}: the Beta(a, a) parameter must be between 0 (off) and 10")
        if not (math.isfinite(self.drop_path) and 0 <= self.drop_path < 1):
            raise ConfigError(f"--drop-path {self.drop_path}: the last block's drop probability must be at least 0 (off) and below 1")
        if not (math.isfinite(self.progressive_resize) and 0 <= self.progressive_resize < 1):
            raise ConfigError(f"--progressive-resize {self.progressive_resize}: the first epoch's share of --image-size must be at least 0 (off) and below 1")
        if self.progressive_resize and self.progressive_resize * self.image_size < MIN_IMAGE_SIZE:
            first = self.progressive_resize * self.image_size
            raise ConfigError(
                f"--progressive-resize {self.progressive_resize}: the first epoch would train at {first:.0f} px, below {MIN_IMAGE_SIZE}; raise it"
            )
        if (self.label_smoothing or self.mixup) and self.aux_classes:
            raise ConfigError("--label-smoothing and --mixup do not combine with --aux-classes yet: drop one of them")
        if not (math.isfinite(self.ema) and 0 <= self.ema < 1):
            raise ConfigError(f"--ema {self.ema}: the decay must be at least 0 (off) and below 1")
        if self.init == "imagenet" and self.arch not in RESNET50_WEIGHTS:
            raise ConfigError(f"--init imagenet: ImageNet weights exist for ResNet-50 only, not --arch {self.arch}; use --init scratch or --arch resnet50")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError(f"--max-batches {self.max_batches}: must be at least 1")
        self._check_start()

    @property
    def is_start(self) -> bool:
        """A shared start job (all 20 labels), not one class's detector."""
        return self.voc_class == START_CLASS

    def _check_start(self) -> None:
        if self.is_start:
            if self.start is not None:
                raise ConfigError("a start job cannot itself begin from a start: give it --init scratch, imagenet or PATH")
            if self.aux_classes or self.balance != "none":
                raise ConfigError("a start job learns all 20 labels of every picture: no --aux-classes or --balance")
        elif self.start is not None and self.init != "scratch":
            raise ConfigError(f"--init {self.init} with a start: the start's network is where the job begins; give --init to the start instead")
        if (self.is_start or self.start is not None) and eval_fold(self.eval_split) is not None and self.fold_by != "image":
            why = "the start trains on every class's pictures"
            raise ConfigError(f"--eval-split {self.eval_split} with a start needs folds cut by image (--fold-by image): {why}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        # Stored before a setting existed: the value it ran with then (EMA arrived as the default in 0.3).
        data = {"ema": 0.0, **data}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)
