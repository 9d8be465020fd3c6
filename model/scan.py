"""Scanning folders to score: every file once, in a stable order that a scan can resume from.

And reading them back: :func:`read_inside` opens a scanned file without following any link
that would lead out of its folder, whatever was swapped in since the scan.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileEntry:
    """A file a scan saw: the folder it was asked for and its path relative to that folder."""

    folder: str
    rel_path: str

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.rel_path


@dataclass(frozen=True)
class ScanEntry:
    """One file a scan saw, in scan order; ``reason`` says why it cannot be scored, if the scan already knows.

    ``key`` orders entries: (folder index, path components), the order the scan yields them in,
    so a scan can resume after any entry.
    """

    folder_index: int
    entry: FileEntry
    reason: str | None

    @property
    def key(self) -> tuple:
        return entry_key(self.folder_index, self.entry.rel_path)


MAX_FILE_BYTES = 256 * 1024 * 1024  # no picture worth scoring is larger; a bigger file is refused unread


class UnsafeFile(OSError):
    """A scanned file that is no longer a regular file inside its folder; the message is the reason."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a pipe swapped in does not hang the open


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = 437  # the same number on every Linux architecture (added in 5.6, after the per-arch tables were unified)
_RESOLVE_NO_SYMLINKS = 0x04
_AT_FDCWD = -100
_openat2_works = sys.platform == "linux"  # until the kernel (or a seccomp filter) says it has none


def _openat2(path: str, flags: int) -> int | None:
    """``openat2(path, flags, RESOLVE_NO_SYMLINKS)``: one system call that refuses a link anywhere on the
    path (ELOOP); None where the kernel has no openat2 (before 5.6, or a sandbox filters it)."""
    global _openat2_works
    if not _openat2_works:
        return None
    how = _OpenHow(flags, 0, _RESOLVE_NO_SYMLINKS)
    fd = _libc().syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(_AT_FDCWD), os.fsencode(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM):  # no such call here: the component walk from now on
        _openat2_works = False
        return None
    raise OSError(err, os.strerror(err), path)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _open_no_links(path: str) -> int:
    """Open an absolute path refusing a link anywhere on it (ELOOP or ENOTDIR): with ``openat2`` where the
    kernel has it, else one component at a time from ``/`` with ``O_NOFOLLOW``."""
    fd = _openat2(path, _FILE_FLAGS)
    if fd is not None:
        return fd
    return _walk_no_links(path)


def _walk_no_links(path: str) -> int:
    """The fallback: each component opened from the last with ``O_NOFOLLOW``."""
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def read_inside(top: str, rel_path: str, max_bytes: int) -> bytes:
    """The bytes of ``top/rel_path``, read only if it is still a regular file inside ``top``.

    No component is opened through a link (``openat2`` with ``RESOLVE_NO_SYMLINKS``, else ``O_NOFOLLOW``
    from ``/`` one component at a time), so a folder
    swapped for a link after the scan cannot lead the read out of ``top``; a link the scan
    accepted (to a file inside ``top``) is resolved and opened the same way. A pipe or device
    swapped in is refused without blocking.

    Raises:
        UnsafeFile: a link out of ``top``, not a regular file, or larger than ``max_bytes``.
        OSError: gone or unreadable.
    """
    if not os.path.isabs(top):  # _open_no_links walks from /: a relative folder would be read from the wrong place
        raise ValueError(f"read_inside needs an absolute folder, not {top!r}")
    path = os.path.join(top, rel_path)
    try:
        fd = _open_no_links(path)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        real = os.path.realpath(path)  # a link somewhere on the way: where does it really lead?
        if not Path(real).is_relative_to(top):
            raise UnsafeFile(f"link leads outside the folder (to {real})") from None
        fd = _open_no_links(real)  # a link swapped in after realpath: refused here
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile("not a regular file")
        if info.st_size > max_bytes:
            raise UnsafeFile(f"file too large ({info.st_size} bytes; limit {max_bytes})")
        return fh.read(max_bytes + 1)[:max_bytes]


def entry_key(folder_index: int, rel_path: str) -> tuple:
    return (folder_index, *rel_path.split("/"))


def _printable(name: str) -> str | None:
    """None if ``name`` is valid UTF-8, else the name with its undecodable bytes written as \\xNN."""
    try:
        name.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def _shown(name: str) -> str:
    """The name as stored and ordered: itself, or with undecodable bytes escaped."""
    return _printable(name) or name


def iter_scan(folders: Sequence[str | os.PathLike], after: tuple | None = None) -> Iterator[ScanEntry]:
    """Every non-hidden file under ``folders``, recursively, one at a time, in a stable order.

    The order is that of :attr:`ScanEntry.key` (names sorted within each folder, a subfolder's files
    at its name's place), so ``after`` (a key) resumes a scan right after that entry. Memory is
    bounded by the largest single folder's listing, never by the whole tree.

    Files that cannot be scored whatever they hold come with a reason: links leading out of the
    folder, broken links or link loops, devices and pipes, names that are not UTF-8 (stored with
    their bytes escaped), folders that cannot be listed. Links are never followed into folders.
    """
    for index, folder in enumerate(folders):
        if after is not None and (index,) < after[:1]:
            continue
        top = str(Path(folder).resolve())
        yield from _walk(index, top, top, "", (index,), after if after is not None and after[:1] == (index,) else None)


def _walk(index: int, top: str, here: str, rel: str, prefix: tuple, after: tuple | None) -> Iterator[ScanEntry]:  # noqa: C901 - each refusal of the walk (links, devices, hidden, unreadable, outside) beside the check that makes it
    # Plain strings, not pathlib: a million Path objects cost time, and pathlib interns every part.
    # ``rel`` is ``here`` relative to ``top`` ("" at the top); each name is made printable once.
    def found(name: str, reason: str | None = None) -> ScanEntry:
        return ScanEntry(index, FileEntry(top, f"{rel}/{name}" if rel else name), reason)

    try:
        with os.scandir(here) as it:
            listing = sorted(((_shown(e.name), e) for e in it), key=lambda pair: pair[0])
    except OSError as exc:
        yield ScanEntry(index, FileEntry(top, rel or "."), f"cannot list folder: {exc.strerror or exc}")
        return
    for shown, item in listing:
        if item.name.startswith("."):
            continue
        key = prefix + (shown,)
        path = item.path
        try:
            is_dir = item.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if after is not None:
            head = after[: len(key)]
            if key < head or (not is_dir and key <= after):
                continue  # at or before where the scan resumes
        sub_after = after if after is not None and after[: len(key)] == key else None
        if shown != item.name:  # not UTF-8; a folder too: one row, its files are not reachable by name
            yield found(shown, f"{'folder' if is_dir else 'file'} name is not valid UTF-8: rename it")
            continue
        if item.is_symlink():
            try:
                target = Path(path).resolve(strict=True)
            except FileNotFoundError:
                yield found(shown, "broken link")
                continue
            except (OSError, RuntimeError):
                yield found(shown, "link loop")
                continue
            if not target.is_relative_to(top):
                yield found(shown, f"link leads outside the folder (to {target})")
                continue
            if target.is_dir():
                continue  # never followed (it could loop); its files are scanned where they really are
            if not target.is_file():
                yield found(shown, "not a regular file")
                continue
            yield found(shown)
        elif is_dir:
            yield from _walk(index, top, path, f"{rel}/{shown}" if rel else shown, key, sub_after)
        else:
            try:
                mode = item.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                yield found(shown, f"cannot read: {exc.strerror or exc}")
                continue
            yield found(shown, None if stat.S_ISREG(mode) else "not a regular file")
