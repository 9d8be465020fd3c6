"""Training and evaluation loops: ``train_one_epoch``, ``evaluate``, and the ``fit`` (a class's detector) and
``fit_start`` (a shared start on all 20 labels) that a task calls; both run the same epoch loop, ``_train``."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import VOC_CLASSES, ConfigError
from .artifacts import sha256_file
from .augment import NoAugment, TrainAugment, host_to_device, preprocess_eval
from .checkpoint import load_checkpoint, save_checkpoint
from .config import MIN_IMAGE_SIZE, START_CLASS, TrainConfig
from .events import BatchProgress, EpochFinished, EpochRecord, FitFinished, FitResumed, FitWarning, Progress
from .metrics import average_precision, binary_report, choose_threshold
from .net import AuxLoss, MaskedBCE, SelectLogit, add_stochastic_depth, build_model, single_logit_state, training_autocast
from .splits import BatchFeeder, RepeatFeeder, SplitData, epoch_positions, fingerprint, prepare_splits, prepare_start_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` hands back: the detector file, its threshold and its metrics.

    Attributes:
        checkpoint: path of ``detector.pt`` (single-logit weights, config, threshold, metrics).
        sha256: of that file; scoring refuses a checkpoint that no longer matches.
        threshold: decision threshold chosen on validation (max F1).
        metrics: evaluation split report (:func:`vocfleet.model.metrics.binary_report`) plus ``split``.
        val_metrics: the same report on the validation part.
        best_epoch: the epoch whose weights were kept (best validation AP).
        history: one :class:`EpochRecord` per epoch (losses, validation AP, learning rate, speed).
        skipped_images: ids named by a list but missing or unreadable.
        resumed_from: epochs already done when this call started.
        plots: PNG paths (``curves``, ``pr``).
        pictures: every evaluation picture as (VOC id, has the class, probability): where it is right and wrong.
    """

    checkpoint: str
    sha256: str
    threshold: float
    metrics: dict[str, Any]
    val_metrics: dict[str, Any]
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)
    resumed_from: int = 0
    plots: dict[str, str] = field(default_factory=dict)
    pictures: list[tuple[str, bool, float]] = field(default_factory=list)


class Stopped(Exception):
    """``should_stop`` asked the run to stop (cancelled, or the job was claimed elsewhere)."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def demo_image_size(device: torch.device | None = None) -> int:
    """The side ``make demo`` trains at on this host: 224 px (ResNet-50's own) on a CUDA device of 8 GiB or more,
    else 64 px (what a CPU trains in about an hour; bench/RESULTS.md, issue 33)."""
    device = device or resolve_device()
    if device.type != "cuda":
        return 64
    return 224 if torch.cuda.get_device_properties(device).total_memory >= 8 << 30 else 64


class SoftTargets:
    """Mixup (each batch blended with itself shuffled, labels alike; weight ~ Beta(a, a)) and label smoothing (0/1 -> e/2, 1 - e/2).

    A start's unknown labels (-1, :class:`~vocfleet.model.net.MaskedBCE`) stay unknown: a blend of
    an unknown with anything is unknown, and smoothing leaves them alone.
    """

    def __init__(self, mixup: float, smoothing: float):
        self.mixup, self.smoothing = mixup, smoothing

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        unknown = labels < 0
        if self.mixup:
            seed = int(torch.randint(2**62, (1,), generator=generator))
            lam = float(np.random.default_rng(seed).beta(self.mixup, self.mixup))
            order = host_to_device(torch.randperm(len(labels), generator=generator), x.device)
            x = x.mul(lam).add_(x[order], alpha=1 - lam)
            labels = labels * lam + labels[order] * (1 - lam)
            unknown = unknown | unknown[order]
        if self.smoothing:
            labels = labels * (1 - self.smoothing) + self.smoothing / 2
        return x, labels.masked_fill(unknown, -1.0)


def epoch_image_size(cfg: TrainConfig, epoch: int) -> int | None:
    """The side epoch ``epoch`` trains at under ``--progressive-resize F``: F x the image size at the first
    epoch, growing linearly to the full size at the last, in steps of 8 px; None: the full size (evaluation always is)."""
    if not cfg.progressive_resize or cfg.epochs == 1:
        return None
    share = cfg.progressive_resize + (1 - cfg.progressive_resize) * (epoch - 1) / (cfg.epochs - 1)
    size = max(MIN_IMAGE_SIZE, round(cfg.image_size * share / 8) * 8)
    return size if size < cfg.image_size else None


def train_one_epoch(
    model: nn.Module,
    feeder: BatchFeeder,
    positions: np.ndarray,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: nn.Module,
    augment: Callable[..., torch.Tensor],
    batch_size: int,
    generator: torch.Generator,
    max_batches: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    ema: AveragedModel | None = None,
    bf16: bool | None = None,
    soft: SoftTargets | None = None,
    size: int | None = None,
) -> dict[str, float]:
    """One pass over ``positions``; ``ema``, if given, is updated after every step; ``soft`` mixes and smooths each batch;
    ``size``, if given, is the side the augmented batches are shrunk to (progressive resizing).

    ``bf16``: bfloat16 autocast on or off; None (what jobs use) leaves it to :func:`~vocfleet.model.net.bf16_training`.

    Returns:
        ``loss`` (mean over samples), ``images``, ``seconds``, ``images_per_s``.
    """
    model.train()
    device = feeder.device
    n_batches = len(positions) // batch_size  # drop the ragged last batch: batch norm needs > 1 sample
    if max_batches:
        n_batches = min(n_batches, max_batches)
    total = torch.zeros((), device=device)
    autocast = training_autocast(device, bf16)
    start = time.perf_counter()
    for b in range(n_batches):
        images, labels = feeder.batch(positions[b * batch_size : (b + 1) * batch_size])
        x = augment(images, generator)
        if soft is not None:
            x, labels = soft(x, labels, generator)
        if size is not None:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        with autocast:
            logits = model(x).squeeze(1)
        loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.detach() * len(labels)  # no .item(): no host-device sync inside the step
        if on_batch:
            on_batch(b + 1, n_batches)
    images = n_batches * batch_size
    loss_value = float(total) / max(images, 1)  # the one sync of the epoch
    seconds = time.perf_counter() - start
    return {"loss": loss_value, "images": images, "seconds": seconds, "images_per_s": images / max(seconds, 1e-9)}


@torch.inference_mode()
def predict_uint8(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Probabilities for uint8 (N, H, W, 3) images, through the shared eval preprocessing."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(chunk))
        x = preprocess_eval(host_to_device(batch, device) if batch.device.type == "cpu" else batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(torch.sigmoid(model(x).float().squeeze(1)))
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


def predict_split(model: nn.Module, split: SplitData, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Probabilities for a split's pictures, in ``split.rows`` order: (N,) for one logit, (N, K) for K.

    The rows are read from the decoded array in sorted order (sequential reads of the memory map).
    """
    rows = split.rows
    order = np.argsort(rows, kind="stable")
    probs = predict_uint8(model, split.decoded.images[rows[order]], device, batch_size)
    out = np.empty_like(probs)
    out[order] = probs
    return out


def evaluate(model: nn.Module, split: SplitData, device: torch.device, batch_size: int = 256) -> dict[str, Any]:
    """Probabilities, loss and AP of ``model`` on one split.

    Returns:
        ``probs`` (numpy, in ``split.rows`` order), ``loss`` (unweighted BCE), ``ap``.
    """
    probs = predict_split(model, split, device, batch_size)
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    loss = float(-np.mean(split.labels * np.log(p) + (1 - split.labels) * np.log(1 - p)))
    return {"probs": probs, "loss": loss, "ap": average_precision(probs, split.labels.astype(int))}


def _make_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # No weight decay on batch-norm and bias parameters (standard for ResNet training).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, fused=fused or None)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


def _make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    if cfg.schedule == "constant":
        return None
    total = max(cfg.epochs * steps_per_epoch, 1)
    # OneCycleLR divides by (pct_start * total - 1): a warm-up of exactly one step (4 steps in all) would divide by zero.
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.25 if total != 4 else 0.3)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Seeded per epoch, so a run resumed at epoch k draws exactly what an uninterrupted run draws.
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _resume_state(path: Path, device: torch.device, emit: Progress) -> dict | None:
    """``last.pt``'s contents, or None: absent, or unreadable (truncated, corrupt), then set aside as ``last.pt.bad``.

    A bad file is said in the log and to ``progress`` (a ``warning`` event), and training starts
    over rather than failing the job for good on every retry.
    """
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path, device)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways (RuntimeError, EOFError, UnpicklingError, ...)
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        message = f"{path} is unreadable ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}); set aside as {bad.name}, training from epoch 1"
        log.warning(message)
        emit(FitWarning(message))
        return None


@dataclass
class _Trained:
    """What the shared epoch loop hands back: the network to keep (the EMA's, if any) at its best epoch."""

    net: nn.Module
    best_epoch: int
    history: list[EpochRecord]
    resumed_from: int


def _train(  # noqa: C901 - the epoch loop with resume, EMA, best epoch and stop requests, read top to bottom as in torchvision
    cfg: TrainConfig,
    model: nn.Module,
    train: SplitData,
    val_score: Callable[[nn.Module], dict[str, Any]],
    *,
    loss_fn: nn.Module,
    device: torch.device,
    out_dir: Path,
    emit: Progress,
    should_stop: Callable[[], bool] | None,
    job_key: str | None,
) -> _Trained:
    """The epochs of one job, whatever its head: train, validate (``val_score(net)`` -> ``loss``, ``ap``), keep the best, checkpoint, resume.

    Resumes from ``out_dir/last.pt`` when it was written by this job with this config; the best
    epoch's weights go to ``best.pt`` and are loaded into the returned ``net`` at the end.
    """
    if cfg.drop_path:
        add_stochastic_depth(model, cfg.drop_path)
    # With --ema, validation, the best epoch and the saved network use the weights' moving average.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    net = ema.module if ema is not None else model
    steps = len(train) // cfg.batch_size
    if steps == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images of {cfg.voc_class!r}")
    steps = min(steps, cfg.max_batches or steps)
    optimizer = _make_optimizer(cfg, model, device)
    scheduler = _make_scheduler(cfg, optimizer, steps)
    augment = TrainAugment.policy(cfg.augment_policy, reuse_output=True) if cfg.augment else NoAugment()  # each batch is done with before the next
    soft = SoftTargets(cfg.mixup, cfg.label_smoothing) if cfg.mixup or cfg.label_smoothing else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    step_model = torch.compile(model) if cfg.compile else model

    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    start_epoch, best = 1, {"ap": -1.0, "epoch": 0}
    history: list[EpochRecord] = []
    state = _resume_state(last_path, device, emit)
    if state is not None:
        if state.get("job_key") != job_key:
            log.warning("ignoring %s: written by another job (key %s, this job %s)", last_path, state.get("job_key"), job_key)
        elif TrainConfig.from_dict(state["config"]) == cfg:  # through from_dict: a setting added since reads as its old value
            model.load_state_dict(state["model"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            start_epoch, best = state["epoch"] + 1, state["metrics"]["best"]
            history = [EpochRecord.from_dict(h) for h in state["metrics"]["history"]]
            log.info("resuming %s from epoch %d", cfg.voc_class, state["epoch"])
        else:
            log.warning("ignoring %s: written for a different config", last_path)
    resumed_from = start_epoch - 1
    if resumed_from:
        emit(FitResumed(tuple(history)))
    feeder = BatchFeeder(train, device)
    # A start draws every picture once per epoch: a balanced sampler needs one label to balance.
    balance = "none" if cfg.is_start else cfg.balance

    def on_batch(b: int, n: int) -> None:
        if should_stop and should_stop():
            raise Stopped(f"stopped in epoch {epoch}, batch {b}")
        emit(BatchProgress(epoch, b, n))

    for epoch in range(start_epoch, cfg.epochs + 1):
        gen = _epoch_generator(cfg.seed, epoch)
        positions = epoch_positions(train, balance=balance, generator=gen)
        stats = train_one_epoch(
            step_model,
            feeder,
            positions,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=loss_fn,
            augment=augment,
            batch_size=cfg.batch_size,
            generator=gen,
            max_batches=cfg.max_batches,
            on_batch=on_batch,
            ema=ema,
            soft=soft,
            size=epoch_image_size(cfg, epoch),
        )
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"training loss became {stats['loss']} in epoch {epoch}: lower --lr")
        ev = val_score(net)
        record = EpochRecord(
            epoch=epoch,
            train_loss=stats["loss"],
            val_loss=ev["loss"],
            val_ap=ev["ap"],
            lr=optimizer.param_groups[0]["lr"],
            seconds=stats["seconds"],
            images_per_s=stats["images_per_s"],
        )
        history.append(record)
        if ev["ap"] > best["ap"]:
            best = {"ap": ev["ap"], "epoch": epoch}
            save_checkpoint(best_path, {"model": net.state_dict(), "epoch": epoch, "config": cfg.to_dict()})
        save_checkpoint(
            last_path,
            {
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "epoch": epoch,
                "config": cfg.to_dict(),
                "metrics": {"history": [h.as_dict() for h in history], "best": best},
                "job_key": job_key,
            },
        )
        emit(EpochFinished(record, cfg.epochs))
    net.load_state_dict(load_checkpoint(best_path, device)["model"])
    return _Trained(net, best["epoch"], history, resumed_from)


def fit(
    cfg: TrainConfig,
    *,
    out_dir: Path,
    cache_dir: Path,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    job_key: str | None = None,
    start_weights: Path | None = None,
) -> FitResult:
    """Train one detector; resume from ``out_dir/last.pt`` if an earlier attempt left one.

    Args:
        cfg: the training settings.
        out_dir: this job's folder: ``last.pt`` (resume state), ``detector.pt`` (the result).
        cache_dir: the decoded-image cache shared by every job on this machine.
        progress: called with each event of :mod:`vocfleet.model.events` (cache, batch, epoch, warning, done).
        should_stop: polled between batches; returning True raises :class:`Stopped`.
        job_key: the job's unique key, written into ``last.pt``; a ``last.pt`` with another key
            (another job, another database) is never resumed from.
        start_weights: the ``start.pt`` of the start job ``cfg.start`` names (a local copy): the
            network starts from it, with its class's row of the start's head as the one logit.
    Returns:
        A :class:`FitResult`.
    """
    if cfg.is_start:
        raise ConfigError("a start job trains with fit_start, not fit")
    if (cfg.start is None) != (start_weights is None):
        raise ConfigError(f"class {cfg.voc_class!r}: start {cfg.start!r} needs its start.pt, and start.pt needs a start")
    emit = progress or (lambda _event: None)
    device = resolve_device(cfg.device)
    train, val, evaluation, skipped = prepare_splits(cfg, cache_dir, progress)
    log.info(
        "class %s: %d train (%d pos), %d val (%d pos), %d eval (%d pos), %d skipped",
        cfg.voc_class,
        len(train),
        train.positives,
        len(val),
        val.positives,
        len(evaluation),
        evaluation.positives,
        len(skipped),
    )
    torch.manual_seed(cfg.seed)
    index = VOC_CLASSES.index(cfg.voc_class)
    head = index if cfg.aux_classes else 0
    init = str(start_weights) if start_weights is not None else cfg.init
    from_start = index if start_weights is not None else None  # its class's row of the start's head; another file's head is never a class's
    model = build_model(init, outputs=len(VOC_CLASSES) if cfg.aux_classes else 1, zero_init_residual=cfg.zero_init_residual, arch=cfg.arch, head=from_start)
    pos_weight = None
    if cfg.balance == "pos_weight":
        pos_weight = torch.tensor((len(train) - train.positives) / train.positives, device=device)
    loss_fn = AuxLoss(head, pos_weight) if cfg.aux_classes else nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def detector_of(net: nn.Module) -> nn.Module:
        return SelectLogit(net, head) if cfg.aux_classes else net

    run = _train(
        cfg,
        model.to(device),
        train,
        lambda net: evaluate(detector_of(net), val, device),
        loss_fn=loss_fn,
        device=device,
        out_dir=out_dir,
        emit=emit,
        should_stop=should_stop,
        job_key=job_key,
    )
    # The detector is the best epoch on validation; its threshold comes from validation too.
    net, detector = run.net, detector_of(run.net)
    val_ev = evaluate(detector, val, device)
    threshold = choose_threshold(val_ev["probs"], val.labels)
    eval_ev = evaluate(detector, evaluation, device)
    metrics = binary_report(eval_ev["probs"], evaluation.labels, threshold)
    metrics["split"] = cfg.eval_split
    # Which pictures and labels it was judged and trained on, wherever they live: promotion compares these, never paths.
    metrics["eval_fingerprint"], metrics["train_fingerprint"] = fingerprint(evaluation), fingerprint(train, val)
    val_metrics = binary_report(val_ev["probs"], val.labels, threshold)
    final_state = single_logit_state(net.state_dict(), head) if cfg.aux_classes else net.state_dict()
    final_path = out_dir / "detector.pt"
    save_checkpoint(
        final_path,
        {
            "model": final_state,
            "epoch": run.best_epoch,
            "config": cfg.to_dict(),
            "metrics": {"eval": metrics, "val": val_metrics, "history": [h.as_dict() for h in run.history]},
            "threshold": threshold,
        },
    )
    from .plots import save_training_plots  # matplotlib only where plots are made

    plots = save_training_plots(
        out_dir,
        run.history,
        eval_ev["probs"],
        evaluation.labels,
        title=cfg.voc_class,
        ap=metrics["ap"],
        best_epoch=run.best_epoch,
        balance=cfg.balance,
    )
    result = FitResult(
        checkpoint=str(final_path),
        sha256=sha256_file(final_path),
        threshold=threshold,
        metrics=metrics,
        val_metrics=val_metrics,
        best_epoch=run.best_epoch,
        history=run.history,
        skipped_images=skipped,
        resumed_from=run.resumed_from,
        plots=plots,
        pictures=[
            (str(evaluation.decoded.ids[row]), bool(label), float(p))
            for row, label, p in zip(evaluation.rows, evaluation.labels, eval_ev["probs"], strict=True)
        ],
    )
    emit(FitFinished(metrics))
    return result


START_FILE = "start.pt"


@dataclass(frozen=True)
class StartResult:
    """What :func:`fit_start` hands back: the start's network file and how well it learned the labels.

    Attributes:
        checkpoint: path of ``start.pt`` (the 20-logit network at its best epoch, its config, its metrics).
        sha256: of that file; a class job refuses a start whose file no longer matches.
        metrics: ``map`` (mean AP over the classes on validation), ``class_ap`` (class -> AP), ``train_images`` and ``val_images``.
        best_epoch, history, skipped_images, resumed_from: as :class:`FitResult`'s.
    """

    checkpoint: str
    sha256: str
    metrics: dict[str, Any]
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)
    resumed_from: int = 0


def evaluate_labels(model: nn.Module, split: SplitData, device: torch.device, batch_size: int = 256) -> dict[str, Any]:
    """A many-label network on a split with ``aux`` labels: ``loss`` (BCE over known labels), ``ap`` (mean over classes), ``per_class``."""
    probs = predict_split(model, split, device, batch_size)
    labels = split.aux
    known = labels >= 0
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    per_class = {}
    for k, name in enumerate(VOC_CLASSES):
        mask = known[:, k]
        if labels[mask, k].sum() > 0:
            per_class[name] = average_precision(probs[mask, k], labels[mask, k].astype(int))
    return {"loss": float(bce[known].mean()), "ap": float(np.mean(list(per_class.values()))) if per_class else 0.0, "per_class": per_class}


def fit_start(
    cfg: TrainConfig,
    *,
    out_dir: Path,
    cache_dir: Path,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    job_key: str | None = None,
) -> StartResult:
    """Train a shared start: one network on all 20 labels of every training picture no class evaluates on.

    Arguments as :func:`fit`'s. The epochs are :func:`fit`'s loop (resume, EMA, best epoch by
    validation mean AP); the result is ``out_dir/start.pt``, which class jobs begin from.
    """
    if not cfg.is_start:
        raise ConfigError(f"fit_start trains a start (voc_class {START_CLASS!r}), not {cfg.voc_class!r}")
    emit = progress or (lambda _event: None)
    device = resolve_device(cfg.device)
    train, val, skipped = prepare_start_splits(cfg, cache_dir, progress)
    log.info("start: %d train, %d val pictures with 20 labels each, %d skipped", len(train), len(val), len(skipped))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.init, outputs=len(VOC_CLASSES), zero_init_residual=cfg.zero_init_residual, arch=cfg.arch)
    run = _train(
        cfg,
        model.to(device),
        train,
        lambda net: evaluate_labels(net, val, device),
        loss_fn=MaskedBCE(),
        device=device,
        out_dir=out_dir,
        emit=emit,
        should_stop=should_stop,
        job_key=job_key,
    )
    ev = evaluate_labels(run.net, val, device)
    metrics = {"map": ev["ap"], "class_ap": ev["per_class"], "train_images": len(train), "val_images": len(val), "split": cfg.eval_split}
    path = out_dir / START_FILE
    save_checkpoint(path, {"model": run.net.state_dict(), "epoch": run.best_epoch, "config": cfg.to_dict(), "metrics": metrics})
    emit(FitFinished(metrics))
    return StartResult(str(path), sha256_file(path), metrics, run.best_epoch, run.history, skipped, run.resumed_from)


CPU_STEP_PIXELS = 64 * 64 * 64  # one batch of 64 at 64 px: about 0.6 s per step on 2 cores


def measure_rate(image_size: int, batch_size: int, device: str = "auto", steps: int = 2, arch: str = "resnet50", budget_s: float = 8.0) -> float:
    """Training images per second on this machine: a few steps of :func:`train_one_epoch` on random pictures.

    A fresh network of ``arch``, the training augmentation and autocast, as a job runs them; the first step
    (allocations, kernel selection) is not timed. On a CPU a step holds at most CPU_STEP_PIXELS,
    which keeps the measurement to seconds: a smaller batch than the job's costs more per image
    (at 64 px, batch 4 ran at 15 images/s and batch 64 at 96 on 2 cores), so the cap is no lower.
    Bounded in time: where the first step alone takes half of ``budget_s`` (a slow or busy
    machine), the rate is that step's, which errs slow (it includes the allocations), not longer.
    """
    dev = resolve_device(device)
    batch = batch_size if dev.type == "cuda" else min(batch_size, max(2, CPU_STEP_PIXELS // image_size**2))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, image_size, image_size, 3), dtype=torch.uint8, generator=gen)
    feeder = RepeatFeeder(host_to_device(images, dev), torch.zeros(batch, device=dev))
    model = build_model("scratch", arch=arch).to(dev)
    step = dict(
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        scheduler=None,
        loss_fn=nn.BCEWithLogitsLoss(),
        augment=TrainAugment(reuse_output=True),
        batch_size=batch,
        generator=gen,
    )
    positions = np.zeros(batch * steps, dtype=np.int64)
    start = time.perf_counter()
    train_one_epoch(model, feeder, positions[:batch], **step)  # ends with a device sync
    first = time.perf_counter() - start
    if first >= budget_s / 2:
        return batch / first
    return train_one_epoch(model, feeder, positions, **step)["images_per_s"]
