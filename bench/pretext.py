"""Self-supervised pretraining on a start's training pictures (SimCLR), for one measured try (issue 33).

Two augmented views of each picture go through the ResNet-50 and a small projection head; the
loss (NT-Xent, Chen et al. 2020) pulls each picture's two views together and pushes the other
pictures of the batch away. No label is read. The backbone's weights are then the ``--init`` of
a shared start, which learns the 20 labels from there. Only the training pictures of the fold
are used, so nothing the folds evaluate on is seen, labelled or not.

The views use the product's augmentation with SimCLR's emphasis: a strong zoom into a part of the
picture (up to 2.5x: about a sixth of its area, SimCLR's random resized crop goes to 8%), shifts,
a flip, a small rotation and a strong brightness, contrast and colour jitter (SimCLR's colour
distortion; no greyscale, which our jitter does not do).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vocfleet.model.augment import TrainAugment
from vocfleet.model.checkpoint import save_checkpoint
from vocfleet.model.config import START_CLASS, TrainConfig
from vocfleet.model.engine import _epoch_generator, _make_optimizer
from vocfleet.model.net import build_model, training_autocast
from vocfleet.model.splits import BatchFeeder, SplitData, epoch_positions

VIEW = dict(scale=(0.9, 2.5), max_degrees=10.0, hflip=0.5, translate=0.25, jitter=0.6)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for B pairs: each view's positive is its pair, its negatives the other 2B - 2 views."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    b = len(z1)
    pair = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, pair)


def simclr(
    train: SplitData,
    out: Path,
    *,
    arch: str = "resnet50",
    epochs: int = 10,
    batch: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    temperature: float = 0.2,
    seed: int = 0,
    device: torch.device,
    max_batches: int | None = None,
) -> dict:
    """Pretrain a backbone on ``train``'s pictures; write its state dict (no head) to ``out``.

    Returns:
        ``images`` (pictures passed through the network, both views counted), ``seconds``, ``losses`` (per epoch).
    """
    torch.manual_seed(seed)
    model = build_model("scratch", arch=arch, zero_init_residual=True)
    width = model.fc.in_features
    model.fc = nn.Sequential(nn.Linear(width, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 128))
    model.to(device)
    # A job's optimiser (AdamW, no decay on norms and biases); the schedule is SimCLR's own (a 10% warm-up, a job's is 25%).
    optimizer = _make_optimizer(TrainConfig(voc_class=START_CLASS, voc_root=".", balance="none", lr=lr, weight_decay=weight_decay), model, device)
    steps = min(len(train) // batch, max_batches or len(train))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.1)
    view = TrainAugment(**VIEW)  # a fresh batch per call (no reuse_output): the first view survives the second
    feeder = BatchFeeder(train, device)
    autocast = training_autocast(device)
    losses, images, start = [], 0, time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        gen = _epoch_generator(seed, epoch)  # a job's draws: the same stream per (seed, epoch)
        order = epoch_positions(train, balance="none", generator=gen)
        total = 0.0
        for s in range(steps):
            pictures, _ = feeder.batch(order[s * batch : (s + 1) * batch])
            x = torch.cat([view(pictures, gen), view(pictures, gen)])
            with autocast:
                z = model(x.contiguous(memory_format=torch.channels_last))
            loss = nt_xent(z[:batch], z[batch:], temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            images += len(x)
        losses.append(total / max(steps, 1))
        print(f"  pretext epoch {epoch}/{epochs}: loss {losses[-1]:.3f} (chance {np.log(2 * batch - 1):.3f})", flush=True)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    save_checkpoint(out, {"model": backbone})
    return {"images": images, "seconds": time.perf_counter() - start, "losses": losses}
