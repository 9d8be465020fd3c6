"""Checkpoints: plain dicts written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .files import DiskFull, writing

__all__ = ["DiskFull", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through :func:`vocfleet.model.files.writing`: a killed writer never
    leaves half a file, and a failed save leaves no temporary file (270 MB each otherwise).

    Raises:
        DiskFull: the disk (or a quota) is full; ``path`` still holds the previous checkpoint.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path, then="'vocfleet retry' the job") as fh:
        torch.save(state, fh)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)
