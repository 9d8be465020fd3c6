"""Train and eval presets, applied to whole uint8 batches on the training device."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor to ``device`` without a host-device sync.

    A copy from pageable memory makes the host wait for the GPU's queue; from pinned memory it
    is queued like a kernel.
    """
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _scale_shift(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    std = torch.tensor(IMAGENET_STD, device=device)
    mean = torch.tensor(IMAGENET_MEAN, device=device)
    return (1.0 / (255.0 * std)).view(1, 3, 1, 1), (-mean / std).view(1, 3, 1, 1)


def preprocess_eval(batch: torch.Tensor) -> torch.Tensor:
    """The one eval preprocessing, shared by validation and scoring.

    Args:
        batch: (B, H, W, 3) or (B, 3, H, W) uint8 images, already resized (see ``data.load_rgb``).
    Returns:
        (B, 3, H, W) float32 normalised with ImageNet statistics, channels_last.
    """
    if batch.shape[-1] == 3 and batch.shape[1] != 3:
        batch = batch.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW is already channels_last
    scale, shift = _scale_shift(batch.device)
    # One conversion pass and one in-place multiply-add: on a CPU this is memory-bound.
    x = batch.to(torch.float32, memory_format=torch.channels_last).mul_(scale).add_(shift)
    return x


class TrainAugment:
    """Per-sample random scale, horizontal flip and rotation (the origin's three), on a whole batch.

    One affine grid per sample and one ``grid_sample`` for the batch: on a GPU this costs a small
    fraction of a ResNet-50 step, and on a CPU far less than per-image PIL transforms.
    """

    def __init__(self, *, scale: tuple[float, float] = (0.75, 1.25), max_degrees: float = 15.0, hflip: float = 0.5):
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale range {scale} must satisfy 0 < low <= high")
        self.scale = scale
        self.max_degrees = max_degrees
        self.hflip = hflip

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = preprocess_eval(batch)
        b = x.shape[0]
        dev = x.device
        rand = host_to_device(torch.rand(b, 3, generator=generator), dev)
        lo, hi = self.scale
        # Log-uniform zoom: s > 1 zooms in (object larger), s < 1 zooms out (reflection-padded).
        s = torch.exp(math.log(lo) + rand[:, 0] * (math.log(hi) - math.log(lo)))
        angle = (rand[:, 1] * 2 - 1) * math.radians(self.max_degrees)
        flip = torch.where(rand[:, 2] < self.hflip, -1.0, 1.0).to(dev)
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, torch.zeros_like(s)], 1), torch.stack([sin * flip, cos, torch.zeros_like(s)], 1)],
            1,
        )
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return out.contiguous(memory_format=torch.channels_last)

    def __repr__(self) -> str:
        return f"TrainAugment(scale={self.scale}, max_degrees={self.max_degrees}, hflip={self.hflip})"


class NoAugment:
    """Augmentation off: the eval preprocessing only."""

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return preprocess_eval(batch)

    def __repr__(self) -> str:
        return "NoAugment()"
