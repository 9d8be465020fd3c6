"""Turn a user's request into validated training configs before anything is written."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vocfleet.model import VOC_CLASSES, ConfigError, check_class
from vocfleet.model.config import MAX_EPOCHS, START_CLASS, TrainConfig, check_init, eval_fold
from vocfleet.worker.executor import executor

log = logging.getLogger(__name__)


def parse_classes(spec: str) -> list[str]:
    """``all`` or a comma list of VOC class names (validated, de-duplicated, in the given order)."""
    if spec.strip() == "all":
        return list(VOC_CLASSES)
    names = [c.strip() for c in spec.split(",") if c.strip()]
    if not names:
        raise ConfigError("--classes is empty: give class names separated by commas, or 'all'")
    return list(dict.fromkeys(check_class(c) for c in names))


def resolve_eval_split(root, train_split: str, eval_split: str) -> str:
    """``auto`` picks the VOC convention: ``test`` if present, else ``val`` after ``train``, else a hold-out."""
    from vocfleet.model.data import has_split

    if eval_split != "auto":
        return eval_split
    if train_split != "test" and has_split(root, "test") and train_split in ("train", "trainval"):
        return "test"
    if train_split == "train" and has_split(root, "val"):
        return "val"
    return "holdout"


def build_configs(classes: Iterable[str], **options: Any) -> list[TrainConfig]:
    """Validate everything a job will need before anything is written.

    Raises:
        ConfigError: with one line naming the bad input and the fix.
    """
    from vocfleet.model.data import check_voc_root, read_class_list

    roots = options.pop("voc_root")
    roots = [roots] if isinstance(roots, str) else list(roots)
    if not roots:
        raise ConfigError("--voc-root is missing: pass the VOCdevkit/VOC2007 folder (or set VOCFLEET_VOC_ROOT)")
    root = check_voc_root(roots[0])
    options["more_roots"] = tuple(str(check_voc_root(r)) for r in roots[1:])  # training pictures only; evaluation is the first folder's
    options["eval_split"] = resolve_eval_split(root, options.get("train_split", "train"), options.get("eval_split", "auto"))
    options["init"] = check_init(options.get("init", "scratch"))
    init = options["init"]
    if options.get("start") == "new":  # --init is the new start's (checked below); the class jobs begin from the start
        options["init"] = "scratch"
    classes = list(classes)
    if classes:  # every setting checked before any weights are read or timed
        TrainConfig(voc_class=classes[0], voc_root=str(root), **options)
    device = options.get("device", "auto")
    if device.startswith("cuda") and not executor().fleet:
        # Embedded: the jobs run on this machine, so its GPUs decide now (in a fleet, the workers' do).
        import torch

        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            found = torch.cuda.device_count()
            raise ConfigError(f"--device {device}: this machine has {found or 'no'} CUDA device{'s' if found != 1 else ''}; use --device auto or cpu")
    if init != "scratch":
        from vocfleet.model.net import build_model  # torch: only for weights to read

        # A state-dict file or the ImageNet weights (found or downloaded) read now: ConfigError unless they fit, before anything is queued.
        build_model(init, arch=options.get("arch", "resnet50"))
    configs = []
    for voc_class in classes:
        cfg = TrainConfig(voc_class=voc_class, voc_root=str(root), **options)
        for folder in (root, *map(Path, cfg.more_roots)):
            read_class_list(folder, voc_class, cfg.train_split)  # raises on a missing list or a malformed line
        if cfg.eval_split != "holdout" and eval_fold(cfg.eval_split) is None:
            read_class_list(root, voc_class, cfg.eval_split)
        configs.append(cfg)
    return configs


def parse_start(spec: str, classes: int = 1) -> str | int | None:
    """``--start``: None for ``none``, ``new``, or a start job's id; ``auto``: ``new`` for ``classes`` of two or more, else None.

    Raises:
        ConfigError: anything else.
    """
    text = spec.strip().lower()
    if text == "auto":
        text = "new" if classes > 1 else "none"
    if text in ("none", "new"):
        return None if text == "none" else text
    if text.isdigit() and 0 < int(text) < 2**63:
        return int(text)
    raise ConfigError(f"--start {spec!r}: 'auto', 'none', 'new' (queue a start first) or the id of a start job")


def start_config(first: TrainConfig, *, init: str, epochs: int, lr: float, augment_policy: str) -> TrainConfig:
    """A shared start for class jobs like ``first``: the same network, pictures, size and optimiser, on all 20 labels for ``epochs``
    at peak rate ``lr``, from ``init``, augmented by ``augment_policy``."""
    if not 1 <= epochs <= MAX_EPOCHS:
        raise ConfigError(f"--start-epochs {epochs}: must be between 1 and {MAX_EPOCHS}")
    alone = {"balance": "none", "aux_classes": False, "mixup": 0.0, "label_smoothing": 0.0}  # what a start never takes from a class job
    return first.with_(voc_class=START_CLASS, epochs=epochs, lr=lr, init=init, start=None, augment_policy=augment_policy, **alone)
