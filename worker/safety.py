"""Which folders a scoring run may read: checked by the CLI before queueing and by the worker again."""

from __future__ import annotations

import os
from pathlib import Path

from vocfleet.db.settings import get_settings
from vocfleet.model import ConfigError

from .executor import executor

PSEUDO = ("/proc", "/sys", "/dev")  # file systems of the kernel: endless or changing files, never photos


def check_score_folder(folder: str | os.PathLike) -> Path:
    """Return the folder resolved (links and ``..`` followed), or raise ConfigError.

    With ``VOCFLEET_SCORE_ROOTS`` set, the resolved folder must lie under one of the roots; in a
    fleet (a broker is configured) the roots are required, since workers read with their own rights.
    """
    settings = get_settings()
    if not str(folder).strip():
        raise ConfigError("folder '': name the folder to score (an empty name is not the current folder; give '.' for that)")
    path = Path(folder).expanduser()
    if not path.exists():
        raise ConfigError(f"folder {str(folder)!r} does not exist: check the path")
    if not path.is_dir():
        raise ConfigError(f"{str(folder)!r} is not a folder: pass folders (use 'vocfleet predict' for single images)")
    resolved = path.resolve()
    if any(resolved.is_relative_to(p) for p in PSEUDO):
        raise ConfigError(f"folder {str(folder)!r} (really {resolved}) is the kernel's, not pictures: give a folder of photos")
    ours = next((p for p in settings.own_paths() if resolved.is_relative_to(os.path.realpath(p))), None)
    if ours is not None:
        raise ConfigError(f"folder {str(folder)!r} (really {resolved}) is vocfleet's own {ours}: give a folder of photos")
    roots = settings.score_roots
    if not roots and executor(settings).fleet:
        raise ConfigError("scoring in a fleet needs VOCFLEET_SCORE_ROOTS: set it to the folders workers may read (separated by ':')")
    if roots and not any(resolved.is_relative_to(r) for r in roots):
        raise ConfigError(
            f"folder {str(folder)!r} (really {resolved}) is outside the scoring roots {os.pathsep.join(map(str, roots))}: "
            "move the pictures under a root or add one to VOCFLEET_SCORE_ROOTS"
        )
    return resolved


def distinct_folders(folders: list[Path]) -> list[Path]:
    """Resolved folders without repeats: one inside another is dropped (its files are the outer one's), order kept.

    So ``score A A`` and ``score A A/sub`` score each file once, under ``A``.
    """
    kept: list[Path] = []
    for folder in sorted(dict.fromkeys(folders), key=lambda p: len(p.parts)):
        if not any(folder.is_relative_to(k) for k in kept):
            kept.append(folder)
    return [f for f in dict.fromkeys(folders) if f in kept]
