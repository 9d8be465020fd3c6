"""The one way vocfleet writes a file: beside its place, flushed, then renamed over it.

``output_path`` checks a file a person names (``report --out``, ``compare --plot``, ``export --out``,
``db backup``) before any work: never inside vocfleet's own folders or over its database, never a
device, FIFO, socket, folder or link, an existing file only with ``--force``, and its folder must
already exist (nothing is created on the way). ``replacing`` then writes any file (those outputs,
checkpoints, reports): the bytes go to a temporary file in the same folder, are flushed to disk
and renamed over the target, so the target is the old file or the whole new one, and a full disk
or an interruption leaves no temporary file behind.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from . import ConfigError, VocfleetError, utf8


class DiskFull(VocfleetError, OSError):
    """No space (or quota) left while writing a file; the message names the file and the folder to free."""

    http_status = 507


def no_space(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, raised as OSError or wrapped by a library's writer in a RuntimeError.

    A disk that fills part-way through a file reaches torch's zip writer as a short write, which
    it reports as ``unexpected pos N vs M`` with no errno: on a regular file only a full disk or
    quota makes a write short.
    """
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("No space left", "Disk quota", "unexpected pos"))


def interruption(exc: BaseException) -> BaseException | None:
    """The KeyboardInterrupt behind ``exc``, if any: torch's zip writer reports an interruption inside
    a write as a short write (``unexpected pos``), which would otherwise read as a full disk."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def output_path(name: str, *, option: str, force: bool = False, protected: Iterable[Path | str] = ()) -> Path:
    """Where a file a person named may be written, checked before any work is done.

    Args:
        name: the path as given.
        option: how it was given (``--out``), for the message.
        force: an existing regular file may be replaced.
        protected: folders and files vocfleet keeps (data folder, cache, store, the database and
            its ``-wal``/``-shm``): nothing is written inside or over them.

    Raises:
        ConfigError: one line naming the path and what to do instead.
    """
    said = f"{option} {name}" if name else f"{option} ''"
    if not name.strip():
        raise ConfigError(f"{said}: name the file to write")
    utf8(option, name, "name the file in UTF-8")  # else every message naming the file would fail
    path = Path(name).expanduser().absolute()
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"{said}: the folder {folder} does not exist; create it first or choose another")
    real = Path(os.path.realpath(folder)) / path.name
    for kept in protected:
        if real.is_relative_to(os.path.realpath(kept)):
            raise ConfigError(f"{said}: that is in {kept}, where vocfleet keeps its own files; write somewhere else")
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        st = None
    if st is not None:
        kind = _kind(st.st_mode)
        if kind != "file":
            raise ConfigError(f"{said}: is {kind}, not a file vocfleet may replace; name a new file")
        if not force:
            raise ConfigError(f"{said}: the file exists; pass --force to replace it, or choose another name")
    probe = real.with_name(f".{real.name}.probe{os.getpid()}")
    try:  # a folder that takes no files (/proc, read-only, no permission) says so now, before any work
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{said}: cannot write in {folder} ({exc.strerror}); choose a folder you can write") from None
    return real


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    for test, what in ((stat.S_ISLNK, "a link"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


@contextmanager
def replacing(path: Path, *, then: str = "run the command again", what: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it is flushed and renamed over ``path``.

    On any failure the temporary file is removed and ``path`` is untouched. ``then`` finishes a
    full disk's message (what to do once space is freed); ``what`` names the file there (its name
    by default).

    Raises:
        DiskFull: the disk or a quota filled while writing.
        ConfigError: the folder cannot be written (permission, read-only).
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        stop = interruption(exc)
        if stop is not None and stop is not exc:  # a signal landed inside a library's writer
            raise stop from None
        if no_space(exc):
            full = DiskFull(f"disk full while {what or f'writing {path.name}'}: free space in {path.parent}, then {then}")
            full.errno = errno.ENOSPC
            raise full from None
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ConfigError(f"cannot write {path} ({exc.strerror}); choose a folder you can write") from None
        raise


@contextmanager
def writing(path: Path, *, then: str = "run the command again") -> Iterator[BinaryIO]:
    """``replacing`` with the temporary file open for binary writing."""
    with replacing(path, then=then) as tmp, open(tmp, "wb") as fh:
        yield fh


def write_bytes(path: Path, data: bytes, **kw: str) -> None:
    with writing(path, **kw) as fh:
        fh.write(data)
