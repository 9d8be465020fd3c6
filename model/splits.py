"""Training data as the loop sees it: the train/val/eval splits of one class and the batches fed to the device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import VOC_CLASSES, ConfigError
from .augment import host_to_device
from .config import TrainConfig, eval_fold
from .data import (
    DecodedImages,
    check_voc_root,
    decoded_cache,
    every_class_labels,
    label_digest,
    role_labels,
    split_ids,
    start_labels,
    training_sources,
)
from .events import CacheProgress, Progress


@dataclass
class SplitData:
    """Images of one role (train, val or eval) as rows of a decoded array, with 0/1 labels."""

    decoded: DecodedImages
    rows: np.ndarray
    labels: np.ndarray
    # (N, 20) labels of every VOC class (1, 0, or -1 where unknown) for auxiliary supervision.
    aux: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def positives(self) -> int:
        return int(self.labels.sum())


def fingerprint(*splits: SplitData) -> str:
    """sha256 of the image ids and 0/1 labels of ``splits`` together, in id order.

    The same pictures with the same labels give the same fingerprint wherever the data lives
    (another path, a link, a copy); a changed label or a picture more or less changes it.
    Cheap: ids and labels only, no pixels.
    """
    return label_digest((split.decoded.ids[row], int(label)) for split in splits for row, label in zip(split.rows, split.labels, strict=True))


def prepare_splits(cfg: TrainConfig, cache_dir: Path, progress: Progress | None = None) -> tuple[SplitData, SplitData, SplitData, list[str]]:
    """Read the lists, build or open the decoded caches, and return train, val and eval splits.

    Returns:
        (train, val, eval, skipped) where ``skipped`` lists ids named by a list but missing or
        unreadable (reported, never fatal).
    """
    root = check_voc_root(cfg.voc_root)

    def cache_progress(done: int, total: int) -> None:
        if progress:
            progress(CacheProgress(done, total))

    def decode(split: str) -> DecodedImages:
        return decoded_cache(root, split_ids(root, split, cfg.voc_class), cfg.image_size, cache_dir, progress=cache_progress)

    train_labels, eval_labels = role_labels(cfg, root)
    _, train_ids, more = training_sources(cfg)
    train_dec = decoded_cache(root, train_ids, cfg.image_size, cache_dir, progress=cache_progress, more=more)
    in_training_split = cfg.eval_split == "holdout" or eval_fold(cfg.eval_split) is not None
    eval_dec = train_dec if in_training_split else decode(cfg.eval_split)

    skipped = sorted(set(train_dec.bad) | set(eval_dec.bad))

    # Every class's labels of the training pictures (people's word, further folders), as a start learns them; only training images use them.
    aux_labels = every_class_labels(cfg, root)[0] if cfg.aux_classes else None

    def to_split(decoded: DecodedImages, labels: dict[str, int], ids: list[str], aux: bool = False) -> SplitData:
        index = decoded.index()
        keep = [i for i in ids if i in index and decoded.ok[index[i]]]
        matrix = None
        if aux and aux_labels is not None:
            unknown = [-1.0] * len(VOC_CLASSES)  # difficult-only or not listed: masked out of the loss
            matrix = np.array([aux_labels.get(i, unknown) for i in keep], dtype=np.float32).reshape(len(keep), len(VOC_CLASSES))
        return SplitData(decoded, np.array([index[i] for i in keep], dtype=np.int64), np.array([labels[i] for i in keep], dtype=np.float32), matrix)

    # Validation: a seeded, stratified part of the training images (threshold and best epoch).
    rng = np.random.default_rng(cfg.seed)
    train_ids = sorted(train_labels)
    val_ids: list[str] = []
    for want in (0, 1):
        group = [i for i in train_ids if train_labels[i] == want]
        n_val = max(1, round(len(group) * cfg.val_fraction)) if len(group) > 1 else 0
        val_ids += list(rng.choice(group, size=n_val, replace=False)) if n_val else []
    val_set = set(val_ids)
    train = to_split(train_dec, train_labels, [i for i in train_ids if i not in val_set], aux=True)
    val = to_split(train_dec, train_labels, sorted(val_set))
    evaluation = to_split(eval_dec, eval_labels, sorted(eval_labels))
    for name, split in (("training", train), ("validation", val), ("evaluation", evaluation)):
        if split.positives == 0 or split.positives == len(split):
            raise ConfigError(f"class {cfg.voc_class!r}: the {name} part has {split.positives} positives of {len(split)} images; use a larger VOC split")
    return train, val, evaluation, skipped


def prepare_start_splits(cfg: TrainConfig, cache_dir: Path, progress: Progress | None = None) -> tuple[SplitData, SplitData, list[str]]:
    """A start job's training and validation parts: every training picture no class evaluates on, with its 20 labels.

    Validation (``val_fraction``, seeded) picks the best epoch by mean AP over the classes.

    Returns:
        (train, val, skipped); each split's ``aux`` holds the (N, 20) labels, -1 where unknown,
        and ``labels`` whether any class is present.
    """
    root = check_voc_root(cfg.voc_root)
    labels = start_labels(cfg, root)

    def cache_progress(done: int, total: int) -> None:
        if progress:
            progress(CacheProgress(done, total))

    _, ids, more = training_sources(cfg)
    decoded = decoded_cache(root, ids, cfg.image_size, cache_dir, progress=cache_progress, more=more)
    index = decoded.index()
    keep = [i for i in labels if i in index and decoded.ok[index[i]]]
    rng = np.random.default_rng(cfg.seed)
    val_set = set(rng.choice(keep, size=max(1, round(len(keep) * cfg.val_fraction)), replace=False)) if keep else set()

    def to_split(ids: list[str]) -> SplitData:
        matrix = np.array([labels[i] for i in ids], dtype=np.float32).reshape(len(ids), len(VOC_CLASSES))
        return SplitData(decoded, np.array([index[i] for i in ids], dtype=np.int64), (matrix == 1).any(1).astype(np.float32), matrix)

    train, val = to_split([i for i in keep if i not in val_set]), to_split(sorted(val_set))
    if len(train) < 2 * cfg.batch_size or len(val) < 2:
        found = f"{len(train)} training and {len(val)} validation pictures in split {cfg.train_split!r}"
        raise ConfigError(f"start: {found}; use a larger VOC split or a smaller --batch-size")
    return train, val, sorted(decoded.bad)


class BatchFeeder:
    """Yields uint8 (B, H, W, 3) batches on the device from rows of the decoded array.

    On a GPU with room to spare the whole split is uploaded once and indexed there; otherwise each
    batch is gathered into pinned memory and copied without blocking.
    """

    def __init__(self, split: SplitData, device: torch.device, *, upload: bool | None = None):
        """``upload``: keep the split on the GPU (None: when it takes under a quarter of free memory)."""
        self.split = split
        self.device = device
        self.on_device: torch.Tensor | None = None
        if device.type == "cuda" and upload is not False:
            nbytes = len(split.rows) * int(np.prod(split.decoded.images.shape[1:]))
            free, _total = torch.cuda.mem_get_info(device)
            if upload or nbytes < free * 0.25:
                self._sorted_rows = np.sort(split.rows)
                self.on_device = torch.from_numpy(np.ascontiguousarray(split.decoded.images[self._sorted_rows])).to(device)
        self.labels = torch.from_numpy(split.aux if split.aux is not None else split.labels).to(device)

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions`` index ``split.rows``/``split.labels``. No host-device sync on a GPU."""
        rows = self.split.rows[positions]
        if self.on_device is not None:
            both = host_to_device(torch.from_numpy(np.stack([positions, np.searchsorted(self._sorted_rows, rows)])), self.device)
            return self.on_device[both[1]], self.labels[both[0]]
        # Sorted gather reads the memory map sequentially; order inside a batch does not matter.
        order = np.argsort(rows, kind="stable")
        host = torch.from_numpy(np.ascontiguousarray(self.split.decoded.images[rows[order]]))
        return host_to_device(host, self.device), self.labels[host_to_device(torch.from_numpy(positions[order]), self.device)]


class RepeatFeeder:
    """One batch already on the device, handed out for every step: a training step's cost without a dataset.

    For timing (``submit --dry-run``, bench/train_efficiency.py); the positions asked for are ignored.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels, self.device = images, labels, images.device

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels


def epoch_positions(split: SplitData, *, balance: str, generator: torch.Generator) -> np.ndarray:
    """The order of training samples for one epoch: a permutation, or a class-balanced draw."""
    n = len(split)
    if balance == "sampler":
        pos = split.labels == 1
        weights = torch.from_numpy(np.where(pos, 0.5 / pos.sum(), 0.5 / (~pos).sum()))
        return torch.multinomial(weights, n, replacement=True, generator=generator).numpy()
    return torch.randperm(n, generator=generator).numpy()
