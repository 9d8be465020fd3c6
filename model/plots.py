"""Training curves and precision-recall plots, saved as PNG beside a job's checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .events import EpochRecord
from .files import writing
from .metrics import precision_recall


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (workers have no display)
    import matplotlib.pyplot as plt

    return plt


def save_training_plots(
    out_dir: Path,
    history: Sequence[EpochRecord],
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    title: str,
    ap: float,
    best_epoch: int,
    balance: str,
) -> dict[str, str]:
    """Write ``curves.png`` (losses and validation AP per epoch) and ``pr.png`` (evaluation PR curve), at 150 dpi.

    Args:
        out_dir: the job's folder.
        history: the :class:`~vocfleet.model.events.EpochRecord` of each epoch from ``fit``.
        probs, labels: evaluation-split probabilities and 0/1 labels of the final detector.
        title: e.g. the class name.
        ap: the detector's evaluation AP, printed on the PR plot.
        best_epoch: the epoch the detector comes from, marked on the curves.
        balance: the run's ``--balance``: with ``pos_weight`` the training loss weights positives,
            with ``sampler`` it is taken on balanced batches; the validation loss is neither, so the
            two are then not on the same scale, and the legend says so.
    Returns:
        {"curves": path, "pr": path}.
    """
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [h.epoch for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    train_note = {"pos_weight": " (positives weighted)", "sampler": " (balanced batches)"}.get(balance, "")
    ax1.plot(epochs, [h.train_loss for h in history], "o-", label="training loss" + train_note)
    ax1.plot(epochs, [h.val_loss for h in history], "s-", label="validation loss" + (" (as the images come)" if train_note else ""))
    ax1.set_title("loss")
    ax2.plot(epochs, [h.val_ap for h in history], "o-", color="tab:green", label="validation AP")
    ax2.axhline(float(np.mean(labels)), ls="--", color="grey", label="chance (positive rate)")
    ax2.set_ylim(0, 1)
    ax2.set_title("validation AP")
    for ax in (ax1, ax2):
        ax.axvline(best_epoch, color="tab:red", ls=":", label=f"best epoch ({best_epoch}): the detector")
        _epoch_axis(ax, epochs)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    curves = out_dir / "curves.png"
    with writing(curves, then="'vocfleet retry' the job") as fh:
        fig.savefig(fh, dpi=150, format="png")
    plt.close(fig)

    prec, rec = precision_recall(np.asarray(probs, dtype=float), np.asarray(labels, dtype=int))  # the construction AP is computed from
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.step(rec, prec, where="post")
    ax.axhline(float(np.mean(labels)), ls="--", color="grey", label="chance (positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title}: AP {ap:.3f} (evaluation split)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    pr = out_dir / "pr.png"
    with writing(pr, then="'vocfleet retry' the job") as fh:
        fig.savefig(fh, dpi=150, format="png")
    plt.close(fig)
    return {"curves": str(curves), "pr": str(pr)}


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Whole epochs on the x axis, half an epoch of margin each side: never 1.5, and one epoch (a
    fine-tune) shows as 1 instead of matplotlib's 0.945 ... 1.050."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def save_comparison_plot(
    out: Path | BinaryIO,
    curves: dict[str, Sequence[EpochRecord]],
    *,
    title: str,
    pr: dict[str, tuple[Sequence[float], Sequence[bool]]] | None = None,
) -> Path | BinaryIO:
    """Overlay several detectors' training curves in one PNG: training loss and validation AP per epoch, one colour each.

    Args:
        out: the PNG to write (its folder is created), or a binary file to write it to.
        curves: a label per detector (``"7 car lr 0.001"``) -> its epochs, in order.
        title: above both panels.
        pr: the same labels -> (probabilities, labels) of their evaluation pictures: a third panel
            overlays their precision-recall curves.
    """

    plt = _pyplot()
    if isinstance(out, Path):
        out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3 if pr else 2, figsize=(15 if pr else 10, 3.8))
    ax1, ax2 = axes[0], axes[1]
    colours = {}
    for label, history in curves.items():
        epochs = [h.epoch for h in history]
        (line,) = ax1.plot(epochs, [h.train_loss for h in history], "o-", ms=3, label=label)
        colours[label] = line.get_color()
        ax1.plot(epochs, [h.val_loss for h in history], "--", color=line.get_color(), lw=1)
        ax2.plot(epochs, [h.val_ap for h in history], "o-", ms=3, color=line.get_color(), label=label)
    if pr:
        ax3 = axes[2]
        for label, (probs, labels) in pr.items():
            there = np.asarray(labels, dtype=int)
            if there.any():
                prec, rec = precision_recall(np.asarray(probs, dtype=float), there)
                ax3.plot(rec, prec, color=colours.get(label), lw=1.2, label=label)
        ax3.set_title("precision-recall (evaluation pictures)")
        ax3.set_xlabel("recall")
        ax3.set_ylabel("precision")
        ax3.set_xlim(0, 1)
        ax3.set_ylim(0, 1.02)
        ax3.grid(alpha=0.3)
    ax1.set_title("loss (solid: training, dashed: validation)")
    ax2.set_title("validation AP")
    for ax in (ax1, ax2):
        _epoch_axis(ax, [h.epoch for history in curves.values() for h in history])
        ax.grid(alpha=0.3)
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120, format="png")
    plt.close(fig)
    return out
