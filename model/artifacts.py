"""Where jobs keep their files: a local folder (the default) or object storage (``s3://bucket/prefix``).

A job writes into a folder on its own host (:meth:`ArtifactStore.job_dir`); on object storage
the files it names are uploaded after each epoch (:meth:`ArtifactStore.push`) and fetched by
whichever host resumes it (:meth:`ArtifactStore.pull`), so a fleet shares a bucket, not a disk.
Readers get a local file checked against its sha256 (:meth:`ArtifactStore.local_copy`), cached
per host by that sha256. Object storage goes through fsspec (s3fs for ``s3://``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import ConfigError, DetectorUnavailable

log = logging.getLogger(__name__)

RESUME_FILES = ("last.pt", "best.pt")  # what a job needs to resume; a finished job needs neither


def _is_url(location: str) -> bool:
    """``s3://...`` (object storage) rather than a local path."""
    return "://" in location


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checked_file(path: Path, sha256: str) -> Path:
    """``path``, once its bytes are checked against ``sha256``.

    Raises:
        DetectorUnavailable: the file is missing or changed.
    """
    if not path.is_file():
        raise DetectorUnavailable(f"checkpoint {path} is missing; retrain or restore it")
    if sha256_file(path) != sha256:
        raise DetectorUnavailable(f"checkpoint {path} changed on disk (sha256 mismatch)")
    return path


@dataclass(frozen=True)
class StoredFile:
    uri: str
    size: int


class ArtifactStore:
    """Job folders under ``root``: ``<root>/jobs/<job key>/<file>``.

    Args:
        root: an absolute local folder, or an fsspec URL (``s3://bucket/prefix``).
        work_dir: this host's folder for jobs' files while they train (object storage only).
        cache_dir: this host's cache of fetched files, named by sha256 (object storage only).
        endpoint_url: the S3 endpoint (MinIO, Ceph, a local test server); None: AWS's.
    """

    def __init__(self, root: str | Path, *, work_dir: Path, cache_dir: Path, endpoint_url: str | None = None):
        self.root = str(root).rstrip("/")
        self.remote = _is_url(self.root)
        self.work_dir, self.cache_dir, self.endpoint_url = work_dir, cache_dir, endpoint_url
        if self.remote:
            self._fs(self.root)  # a missing s3fs or an unknown protocol: said now, not after an epoch of training
        self._pushed: dict[Path, int] = {}  # file -> mtime_ns when last uploaded

    @classmethod
    def from_settings(cls, settings) -> ArtifactStore:
        """From ``db.settings.Settings`` (artifact_root, data_dir, cache_dir, s3_endpoint_url)."""
        return cls(settings.artifact_root, work_dir=settings.data_dir / "work", cache_dir=settings.cache_dir, endpoint_url=settings.s3_endpoint_url)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    def uri(self, key: str, name: str = "") -> str:
        """Where a job's file (or, without ``name``, its folder) lives in the store."""
        return "/".join(p for p in (self.root, "jobs", key, name) if p)

    def job_dir(self, key: str) -> Path:
        """The local folder a job writes into: its folder in the store itself, or this host's work folder."""
        return (self.work_dir if self.remote else Path(self.root)) / "jobs" / key

    def _fs(self, uri: str):
        """(fsspec filesystem, path within it) for an object URL; fsspec hands back one cached client per endpoint."""
        try:
            import fsspec

            options: dict = {}
            if uri.startswith("s3://"):
                # No listing cache: other hosts write to the same bucket, and a cached listing would hide their files.
                options["use_listings_cache"] = False
                if self.endpoint_url:
                    options["client_kwargs"] = {"endpoint_url": self.endpoint_url}
            return fsspec.core.url_to_fs(uri, **options)
        except (ImportError, ValueError) as exc:  # no s3fs, an unknown protocol
            raise ConfigError(f"artifact location {uri!r}: {exc} (for s3:// install vocfleet[s3])") from None

    def pull(self, key: str, names: Iterable[str] = RESUME_FILES) -> list[str]:
        """Fetch a job's resume files into its local folder (object storage only); returns the names fetched.

        Each local copy is replaced whole: a file fetched from the store is always what the store holds.
        """
        if not self.remote:
            return []
        out, fetched = self.job_dir(key), []
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            fs, src = self._fs(self.uri(key, name))
            if not fs.exists(src):
                (out / name).unlink(missing_ok=True)  # a stale local copy must not be resumed from
                continue
            tmp = out / f".{name}.part{os.getpid()}"
            fs.get_file(src, str(tmp))
            os.replace(tmp, out / name)
            self._pushed[out / name] = (out / name).stat().st_mtime_ns
            fetched.append(name)
        return fetched

    def push(self, key: str, names: Iterable[str]) -> dict[str, str]:
        """Publish a job's local files to the store (object storage: each one uploaded whole, if changed).

        Returns:
            name -> URI in the store, for each file that exists.
        """
        out = {}
        for name in names:
            local = self.job_dir(key) / name
            if not local.is_file():
                continue
            uri = self.uri(key, name)
            if self.remote:
                mtime = local.stat().st_mtime_ns
                if self._pushed.get(local) != mtime:
                    # One PUT (or a multipart upload completed at once): readers see the old object or the new, never half.
                    fs, dest = self._fs(uri)
                    fs.put_file(str(local), dest)
                    self._pushed[local] = mtime
            out[name] = uri
        return out

    def local_copy(self, uri: str, sha256: str) -> Path:
        """A local file holding ``uri``'s bytes, checked against ``sha256``.

        A local path is checked in place; an object is fetched once per host into the cache, named by its sha256.

        Raises:
            DetectorUnavailable: the file is missing, or its bytes do not match ``sha256``.
        """
        if not _is_url(uri):
            return checked_file(Path(uri), sha256)
        cached = self.cache_dir / "artifacts" / f"{sha256}.pt"
        if cached.is_file():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.part{os.getpid()}")
        fs, path = self._fs(uri)
        try:
            fs.get_file(path, str(tmp))
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise DetectorUnavailable(f"checkpoint {uri} is missing; retrain or restore it") from None
        if sha256_file(tmp) != sha256:
            tmp.unlink()
            raise DetectorUnavailable(f"checkpoint {uri} changed in the store (sha256 mismatch)")
        os.replace(tmp, cached)
        return cached

    def read_bytes(self, uri: str) -> bytes | None:
        """A small file's bytes (a plot), or None if it is gone."""
        try:
            if _is_url(uri):
                fs, path = self._fs(uri)
                return fs.cat_file(path)
            return Path(uri).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def remove(self, uri: str) -> None:
        """Delete one file from the store (gone already: nothing to do)."""
        if _is_url(uri):
            fs, path = self._fs(uri)
            if fs.exists(path):
                fs.rm_file(path)
        else:
            path = Path(uri)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the job's folder, once empty
                path.parent.rmdir()

    def drop_resume_files(self, key: str) -> None:
        """A finished job needs no resume state: remove it from the store and this host's work folder."""
        for name in RESUME_FILES:
            self.remove(self.uri(key, name))
        if self.remote:
            shutil.rmtree(self.job_dir(key), ignore_errors=True)

    def files(self) -> Iterator[tuple[str, StoredFile]]:
        """Every file under ``jobs/``: (job key, file)."""
        if self.remote:
            fs, base = self._fs(f"{self.root}/jobs")
            protocol = self.root.split("://", 1)[0]
            for path, info in fs.find(base, detail=True).items():  # nothing there: nothing found
                key = path[len(base) + 1 :].split("/", 1)[0]
                yield key, StoredFile(f"{protocol}://{path}", int(info.get("size") or 0))
        else:
            base = Path(self.root) / "jobs"
            if not base.is_dir():
                return
            for path in sorted(base.rglob("*")):
                if path.is_file():
                    yield path.relative_to(base).parts[0], StoredFile(str(path), path.stat().st_size)
