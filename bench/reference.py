"""The origin's input pipeline, kept as the baseline: decode every JPEG every epoch, augment per image with PIL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

from vocfleet.model.augment import IMAGENET_MEAN, IMAGENET_STD


def reference_transform(size: int) -> T.Compose:
    return T.Compose(
        [
            T.RandomAffine(degrees=15, scale=(0.75, 1.25)),
            T.RandomHorizontalFlip(),
            T.Resize((size, size)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def reference_batches(root: Path, ids: list[str], size: int, batch: int, device: torch.device) -> Iterator[torch.Tensor]:
    tf = reference_transform(size)
    buf = []
    for image_id in ids:
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as im:
            buf.append(tf(im.convert("RGB")))
        if len(buf) == batch:
            yield torch.stack(buf).to(device)
            buf = []
    if buf:
        yield torch.stack(buf).to(device)
