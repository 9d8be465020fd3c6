"""Checkpoints: plain dicts written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch


class DiskFull(OSError):
    """No space left to write a checkpoint; the message names the file and the folder to free."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file and ``os.replace``: a killed writer never leaves half a file.

    On any failure the temporary file is removed (a 270 MB leftover per failed save otherwise).

    Raises:
        DiskFull: the disk (or a quota) is full; ``path`` still holds the previous checkpoint.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        stop = _interruption(exc)
        if stop is not None and stop is not exc:  # a signal (Ctrl-C, SIGTERM, SIGHUP) landed inside torch's writer
            raise stop from None
        if _no_space(exc):
            full = DiskFull(f"disk full while writing {path.name}: free space in {path.parent}, then 'vocfleet retry' the job")
            full.errno = errno.ENOSPC
            raise full from None
        raise


def _interruption(exc: BaseException) -> BaseException | None:
    """The KeyboardInterrupt behind ``exc``, if any: torch's zip writer reports an interruption inside
    a write as a short write (``unexpected pos``), which would otherwise read as a full disk."""
    seen = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _no_space(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, raised as OSError or wrapped by torch's writer in a RuntimeError.

    A disk that fills part-way through a file reaches torch's zip writer as a short write, which
    it reports as ``unexpected pos N vs M`` with no errno: on a regular file only a full disk or
    quota makes a write short.
    """
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("No space left", "Disk quota", "unexpected pos"))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)
