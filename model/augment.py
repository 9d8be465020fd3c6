"""Train and eval presets, applied to whole uint8 batches on the training device."""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
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


def _channels_first(batch: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) seen as (B, 3, H, W); NHWC memory seen as NCHW is already channels_last."""
    return batch.permute(0, 3, 1, 2) if batch.shape[-1] == 3 and batch.shape[1] != 3 else batch


def preprocess_eval(batch: torch.Tensor) -> torch.Tensor:
    """The one eval preprocessing, shared by validation and scoring.

    Args:
        batch: (B, H, W, 3) or (B, 3, H, W) uint8 images, already resized (see ``data.load_rgb``).
    Returns:
        (B, 3, H, W) float32 normalised with ImageNet statistics, channels_last.
    """
    batch = _channels_first(batch)
    scale, shift = _scale_shift(batch.device)
    # One conversion pass and one in-place multiply-add: on a CPU this is memory-bound.
    x = batch.to(torch.float32, memory_format=torch.channels_last).mul_(scale).add_(shift)
    return x


# --augment-policy: the origin's three (the default), or "strong": a wider zoom, a shift of up to 15% of
# the side, and a brightness, contrast and colour-cast jitter; for a long schedule on few pictures.
# "erase": strong, and half the pictures with a random rectangle set to the mean colour (random erasing,
# Zhong et al. 2017, with torchvision's RandomErasing defaults: 2-33% of the picture, aspect 0.3-3.3).
_STRONG = {"scale": (0.75, 1.75), "translate": 0.15, "jitter": 0.4}
POLICIES: dict[str, dict] = {"origin": {}, "strong": _STRONG, "erase": {**_STRONG, "erase": 0.5}}
ERASE_AREA = (0.02, 0.33)
ERASE_ASPECT = (0.3, 3.3)


class TrainAugment:
    """Per-sample random scale, horizontal flip and rotation (the origin's three), on a whole batch;
    optionally a shift (``translate``) and a brightness/contrast/colour jitter (``jitter``).

    One random affine map per sample, drawn the same way on every device. On a GPU the batch is
    converted and normalised there and resampled with one ``grid_sample``: a small fraction of a
    ResNet-50 step. On a CPU each uint8 image is resampled by OpenCV (fixed-point bilinear) and
    normalised through a lookup table straight into the float batch, in parallel threads: the same
    map and border rule, a quarter of the memory traffic, and several times faster than float
    resampling there. The jitter is a per-pixel map of each picture's levels, so on a CPU it lives
    in that picture's lookup table and costs nothing more.
    """

    def __init__(
        self,
        *,
        scale: tuple[float, float] = (0.75, 1.25),
        max_degrees: float = 15.0,
        hflip: float = 0.5,
        translate: float = 0.0,
        jitter: float = 0.0,
        erase: float = 0.0,
        reuse_output: bool = False,
    ):
        """``translate``: the largest shift, a share of the side; ``jitter``: the largest relative change
        of brightness and of contrast (a quarter of it per channel, a colour cast); ``erase``: the chance
        that a picture gets one rectangle of :data:`ERASE_AREA` set to the mean colour; 0: off.

        ``reuse_output``: on a CPU, write every batch into one buffer, so each call overwrites the
        last call's result; for a training loop that is done with a batch before it asks for the
        next. A fresh 38 MB buffer per batch costs more in page faults than the resampling itself."""
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale range {scale} must satisfy 0 < low <= high")
        if not (0 <= translate < 1 and 0 <= jitter < 1 and 0 <= erase <= 1):
            raise ValueError(f"translate {translate} and jitter {jitter} must be at least 0 and below 1, erase {erase} from 0 to 1")
        self.scale = scale
        self.max_degrees = max_degrees
        self.hflip = hflip
        self.translate = translate
        self.jitter = jitter
        self.erase = erase
        self.reuse_output = reuse_output
        self._last: torch.Tensor | None = None

    @classmethod
    def policy(cls, name: str, **kwargs) -> TrainAugment:
        """The augmentation of ``--augment-policy name`` (:data:`POLICIES`)."""
        return cls(**POLICIES[name], **kwargs)

    def thetas(self, b: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 2, 3) float32 maps from output to input coordinates, normalised to [-1, 1] (``affine_grid``'s)."""
        rand = torch.rand(b, 3, generator=generator).double()  # float32 draws: the same stream as earlier versions
        lo, hi = self.scale
        # Log-uniform zoom: s > 1 zooms in (object larger), s < 1 zooms out (reflection-padded).
        s = torch.exp(math.log(lo) + rand[:, 0] * (math.log(hi) - math.log(lo)))
        angle = (rand[:, 1] * 2 - 1) * math.radians(self.max_degrees)
        flip = torch.where(rand[:, 2] < self.hflip, -1.0, 1.0).to(torch.float64)
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        shift = torch.zeros(b, 2, dtype=torch.float64)
        if self.translate:  # drawn after the origin's three, which stay the same stream
            shift = (torch.rand(b, 2, generator=generator).double() * 2 - 1) * (2 * self.translate)  # [-1, 1] spans the side
        return torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).float()

    def jitters(self, b: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """(B, 5) float64 per-picture factors: contrast, brightness, and the three channels' gains; None when off."""
        if not self.jitter:
            return None
        r = torch.rand(b, 5, generator=generator).double() * 2 - 1
        return 1 + r * torch.tensor([self.jitter, self.jitter, self.jitter / 4, self.jitter / 4, self.jitter / 4], dtype=torch.float64)

    def erasures(self, b: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """(B, 4) int64 rectangles to erase, top, bottom, left, right (bottom and right excluded; an
        empty one for a picture left whole); None when off."""
        if not self.erase:
            return None
        r = torch.rand(b, 5, generator=generator).double()  # drawn after the jitter: the earlier streams stay the same
        area = (ERASE_AREA[0] + r[:, 1] * (ERASE_AREA[1] - ERASE_AREA[0])) * height * width
        aspect = torch.exp(math.log(ERASE_ASPECT[0]) + r[:, 2] * (math.log(ERASE_ASPECT[1]) - math.log(ERASE_ASPECT[0])))
        h = (area * aspect).sqrt().round().clamp(1, height)
        w = (area / aspect).sqrt().round().clamp(1, width)
        h = torch.where(r[:, 0] < self.erase, h, 0.0)
        top, left = (r[:, 3] * (height - h + 1)).floor(), (r[:, 4] * (width - w + 1)).floor()
        return torch.stack([top, top + h, left, left + w], 1).long()

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        theta = self.thetas(batch.shape[0], generator)
        factors = self.jitters(batch.shape[0], generator)
        boxes = self.erasures(batch.shape[0], *_channels_first(batch).shape[-2:], generator)
        if batch.device.type == "cpu":
            result = warp_cpu(batch, theta, self._last if self.reuse_output else None, factors)
            if self.reuse_output:
                self._last = result
        elif factors is not None:  # the levels are warped, then mapped: the CPU path's order
            result = jitter_levels(batch, host_to_device(factors, batch.device), host_to_device(theta, batch.device))
        else:
            x = preprocess_eval(batch)
            result = _warp(x, host_to_device(theta, x.device))
        return result if boxes is None else erase(result, host_to_device(boxes, result.device))

    def __repr__(self) -> str:
        extra = f", translate={self.translate}, jitter={self.jitter}" if self.translate or self.jitter else ""
        extra += f", erase={self.erase}" if self.erase else ""
        return f"TrainAugment(scale={self.scale}, max_degrees={self.max_degrees}, hflip={self.hflip}{extra})"


def _level_map(levels: torch.Tensor, mean: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """The jitter's map of grey levels (0-255): contrast about the picture's mean level, then brightness
    and each channel's gain, clipped. ``levels`` (B, 3, ...) float, ``mean`` (B,), ``factors`` (B, 5)."""
    shape = (-1, 1) + (1,) * (levels.ndim - 2)
    m = mean.view(shape)
    gain = (factors[:, 1:2] * factors[:, 2:]).view(-1, 3, *(1,) * (levels.ndim - 2))
    return (((levels - m) * factors[:, 0].view(shape) + m) * gain).clamp_(0, 255)


def erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``x`` (B, 3, H, W), normalised, with each picture's rectangle (:meth:`TrainAugment.erasures`) set to 0, the mean colour; in place."""
    rows = torch.arange(x.shape[-2], device=x.device).view(1, -1, 1)
    cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1)
    top, bottom, left, right = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return x.masked_fill_(inside.unsqueeze(1), 0.0)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def jitter_levels(batch: torch.Tensor, factors: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``TrainAugment`` with a jitter, in float on the batch's device: (B, H, W, 3) uint8 -> (B, 3, H, W) normalised.

    The levels are warped by ``theta``, then mapped by the jitter (about each picture's mean level
    before the warp), then normalised: :func:`warp_cpu`'s order, so both paths give the same batch.
    """
    levels = _channels_first(batch).to(torch.float32)
    mean = levels.mean(dim=(1, 2, 3), dtype=torch.float64).float()  # float32 maps: a 224-px GPU batch in float64 is 300 MB more
    warped = _level_map(_warp(levels, theta), mean, factors.to(device=mean.device, dtype=torch.float32))
    scale, shift = _scale_shift(batch.device)
    return warped.mul_(scale).add_(shift)


def pixel_maps(theta: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``affine_grid`` maps (normalised, ``align_corners=False``) as OpenCV's inverse maps in pixels."""
    t = theta.double().numpy()
    half = np.array([width / 2, height / 2])
    lin = t[:, :, :2] * half[None, :, None] / half[None, None, :]
    # Output pixel p -> normalised (2p + 1) / size - 1 -> theta -> input pixel ((n + 1) * size - 1) / 2.
    offset = np.array([1 / width - 1, 1 / height - 1])
    shift = half * (t[:, :, :2] @ offset + t[:, :, 2]) + (half * 2 - 1) / 2
    return np.concatenate([lin, shift[:, :, None]], axis=2)


@functools.lru_cache(maxsize=4)
def _pool(pid: int, threads: int) -> ThreadPoolExecutor:  # per process: a forked child gets its own
    return ThreadPoolExecutor(threads, thread_name_prefix="vocfleet-augment")


@functools.lru_cache(maxsize=1)
def _normalise_lut() -> np.ndarray:
    v = np.arange(256, dtype=np.float64)[:, None] / 255.0
    return ((v - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32).reshape(256, 1, 3)


def warp_cpu(batch: torch.Tensor, theta: torch.Tensor, reuse: torch.Tensor | None = None, factors: torch.Tensor | None = None) -> torch.Tensor:
    """``TrainAugment`` on a CPU: (B, H, W, 3) uint8 -> (B, 3, H, W) normalised float32, channels_last.

    ``reuse``: an earlier result to overwrite, when it has the right shape. ``factors``: the
    jitter's (:meth:`TrainAugment.jitters`), applied through each picture's own lookup table.

    Equals ``grid_sample(preprocess_eval(batch), affine_grid(theta), padding_mode="reflection")``
    (``jitter_levels`` for ``preprocess_eval`` with ``factors``) up to OpenCV's fixed-point rounding
    (about a grey level, times the jitter's gain; tests/test_augment.py).
    """
    import cv2

    if batch.shape[-1] != 3:
        batch = batch.permute(0, 2, 3, 1)
    images = np.ascontiguousarray(batch.numpy())
    b, h, w, _ = images.shape
    maps, lut = pixel_maps(theta, h, w), _normalise_lut()
    if factors is not None:  # one table per picture: its jittered levels, normalised
        mean = torch.from_numpy(images.reshape(b, -1).mean(axis=1, dtype=np.float64))
        levels = torch.arange(256, dtype=torch.float64).view(1, 1, 256).expand(b, 3, 256)
        mapped = _level_map(levels, mean, factors).permute(0, 2, 1).numpy()  # (B, 256, 3)
        luts = ((mapped / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32).reshape(b, 256, 1, 3)
    fits = reuse is not None and tuple(reuse.shape) == (b, 3, h, w)
    out = reuse.permute(0, 2, 3, 1).numpy() if fits else np.empty((b, h, w, 3), np.float32)

    # OpenCV's per-pixel border path is slow: reflect each image once into a margin that holds every
    # source pixel its map reaches (the output corners' sources, plus the bilinear neighbour).
    corners = np.array([[-0.5, -0.5, 1], [w - 0.5, -0.5, 1], [-0.5, h - 0.5, 1], [w - 0.5, h - 0.5, 1]]).T
    reach = maps @ corners  # (B, 2, 4) source pixel coordinates
    outside = np.maximum(-reach.min(axis=2), reach.max(axis=2) - np.array([w - 1, h - 1])[None]).max(axis=1)
    margins = np.ceil(np.maximum(outside, 0)).astype(int) + 2

    def work(rows: np.ndarray) -> None:
        cv2.setNumThreads(1)  # parallel over images instead (the setting is per thread)
        for i in rows:
            m = int(margins[i])
            padded = cv2.copyMakeBorder(images[i], m, m, m, m, cv2.BORDER_REFLECT)
            shifted = maps[i] + np.array([[0, 0, m], [0, 0, m]])
            warped = cv2.warpAffine(padded, shifted, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
            cv2.LUT(warped, lut if factors is None else luts[i], dst=out[i])

    threads = max(1, min(torch.get_num_threads(), b))
    list(_pool(os.getpid(), threads).map(work, np.array_split(np.arange(b), threads)))
    return torch.from_numpy(out).permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last


class NoAugment:
    """Augmentation off: the eval preprocessing only."""

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return preprocess_eval(batch)

    def __repr__(self) -> str:
        return "NoAugment()"
