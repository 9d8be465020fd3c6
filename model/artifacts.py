"""Where jobs keep their files: a local folder (the default) or object storage (``s3://bucket/prefix``).

A job writes into a folder on its own host (:meth:`ArtifactStore.job_dir`); on object storage
the files it names are uploaded after each epoch (:meth:`ArtifactStore.push`) and fetched by
whichever host resumes it (:meth:`ArtifactStore.pull`), so a fleet shares a bucket, not a disk.
Readers get a local file checked against its sha256 (:meth:`ArtifactStore.local_copy`), cached
per host by that sha256. Object storage goes through fsspec (s3fs for ``s3://``).

Detector rows name their files relative to the store (``jobs/<key>/detector.pt``), never by an
absolute path: a data folder that is moved, copied, restored elsewhere or mounted at another path
keeps working, and ``gc`` matches files by job key and name.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import ConfigError, DetectorUnavailable, StoreUnavailable

log = logging.getLogger(__name__)

# Waits between tries of an object-storage call that failed for a passing reason: a worker waits out
# an endpoint away for about a minute (a restart, a failover) before failing the job with the reason,
# trying at least every 10 s so it goes on soon after the store is back (s3fs already retries each
# request a few times within a try). A check made before work starts (submit, doctor, gc) answers
# within a few seconds instead.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0)
CHECK_DELAYS = (0.5, 1.0, 2.0)
_TRANSIENT = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ServerTimeoutError",
}

RESUME_FILES = ("last.pt", "best.pt")  # what a job needs to resume; a finished job needs neither
# What a finished job's folder may hold that nothing reads again: its resume state, a truncated
# last.pt set aside, and temporary files of killed writers (".last.pt.tmp123", ".best.pt.part9").
SPENT_FILES = (*RESUME_FILES, "last.pt.bad")
# What a finished job leaves that a detector or its page needs: never removed, even for a job no database knows.
DETECTOR_FILES = ("detector.pt", "start.pt", "curves.png", "pr.png")


def is_spent(name: str) -> bool:
    """A file of a finished job that ``gc`` may remove (resume state, temporary files); never its detector or plots."""
    return name in SPENT_FILES or (name.startswith(".") and (".tmp" in name or ".part" in name))


def split_location(location: str) -> tuple[str, str] | None:
    """(job key, file name) of a location in a store (``jobs/<key>/<name>``, or an absolute path or URL
    ending so, as rows from before 0.5.0 hold); None for anything else."""
    parts = location.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-3] == "jobs" and parts[-2] and parts[-1]:
        return parts[-2], parts[-1]
    return None


def _is_url(location: str) -> bool:
    """``s3://...`` (object storage) rather than a local path."""
    return "://" in location


def resolve(root: str, location: str) -> str:
    """A row's location (``jobs/<key>/<name>``) under the store ``root``; an absolute path or URL as it is.

    A string operation: listings resolve their rows without opening the store (on S3, a client).
    """
    if _is_url(location) or location.startswith("/"):
        return location
    return f"{root.rstrip('/')}/{location}"


def _transient(exc: BaseException) -> bool:
    """An object-storage error that a later try may get past: the endpoint unreachable, a timeout, a 5xx."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is None:
            continue
        if isinstance(e, ConnectionError | TimeoutError) or type(e).__name__ in _TRANSIENT:
            return True
        status = getattr(e, "response", {}) or {}
        if isinstance(status, dict) and str(status.get("ResponseMetadata", {}).get("HTTPStatusCode", "")).startswith("5"):
            return True
    return False


def _store_error(what: str, exc: BaseException) -> StoreUnavailable:
    """One line for an object-storage failure: what was tried, the reason, and what to check."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return StoreUnavailable(
        f"artifact store: could not {what} ({type(exc).__name__}: {reason[:200]}): check VOCFLEET_ARTIFACT_ROOT, VOCFLEET_S3_ENDPOINT_URL and the credentials"
    )


def retrying(what: str, call, *args, delays: tuple[float, ...] | None = None, **kwargs):
    """``call(*args, **kwargs)`` on object storage, tried again after passing errors (``delays``, else :data:`RETRY_DELAYS`).

    Raises:
        FileNotFoundError: as the call raised it (a missing file is an answer, not an outage).
        StoreUnavailable: the store still failed after the last try, or failed for a lasting reason
            (no bucket, no permission): one line.
    """
    for delay in (*(RETRY_DELAYS if delays is None else delays), None):
        try:
            return call(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:  # s3fs, botocore and aiohttp raise many kinds; sorted below
            if delay is None or not _transient(exc):
                raise _store_error(what, exc) from exc
            log.warning("artifact store: %s failed (%s); trying again in %gs", what, exc.__class__.__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


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

    @staticmethod
    def location(key: str, name: str = "") -> str:
        """How a detector row names a job's file: relative to the store's root, so the root may move."""
        return "/".join(p for p in ("jobs", key, name) if p)

    def uri(self, key: str, name: str = "") -> str:
        """Where a job's file (or, without ``name``, its folder) lives in the store."""
        return self.resolve(self.location(key, name))

    def resolve(self, location: str) -> str:
        """A row's location as a path or URL in this store; an absolute path or URL is kept as it is."""
        return resolve(self.root, location)

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

    def check(self) -> None:
        """The store can be used: a local root is a folder (or can be made one); on object storage the bucket
        exists and takes a write (a probe object, written and removed). One line if not."""
        if not self.remote:
            root = Path(self.root)
            there = next((p for p in (root, *root.parents) if p.exists()), None)
            if there is not None and not there.is_dir():
                raise StoreUnavailable(f"artifact store {self.root}: {there} is a file, not a folder; fix VOCFLEET_ARTIFACT_ROOT")
            return
        fs, base = self._fs(self.root)
        probe = f"{base}/.vocfleet-probe-{uuid.uuid4().hex}"
        try:
            retrying(f"write to {self.root}", fs.pipe_file, probe, b"probe", delays=CHECK_DELAYS)
            retrying(f"remove a probe from {self.root}", fs.rm_file, probe, delays=CHECK_DELAYS)
        except FileNotFoundError:
            raise StoreUnavailable(f"artifact store {self.root}: no such bucket: create it, or fix VOCFLEET_ARTIFACT_ROOT") from None

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
            if not retrying(f"look up {src}", fs.exists, src):
                (out / name).unlink(missing_ok=True)  # a stale local copy must not be resumed from
                continue
            tmp = out / f".{name}.part{os.getpid()}"
            retrying(f"fetch {src}", fs.get_file, src, str(tmp))
            os.replace(tmp, out / name)
            self._pushed[out / name] = (out / name).stat().st_mtime_ns
            fetched.append(name)
        return fetched

    def push(self, key: str, names: Iterable[str]) -> dict[str, str]:
        """Publish a job's local files to the store (object storage: each one uploaded whole, if changed).

        Returns:
            name -> location in the store (:meth:`location`), for each file that exists.
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
                    retrying(f"upload {name} of job {key}", fs.put_file, str(local), dest)
                    self._pushed[local] = mtime
            out[name] = self.location(key, name)
        return out

    def local_copy(self, location: str, sha256: str) -> Path:
        """A local file holding ``location``'s bytes, checked against ``sha256``.

        A local path is checked in place; an object is fetched once per host into the cache, named
        by its sha256, and checked again whenever the cached file's size or mtime changes.

        Raises:
            DetectorUnavailable: the file is missing, or its bytes do not match ``sha256``.
        """
        uri = self.resolve(location)
        if not _is_url(uri):
            return checked_file(Path(uri), sha256)
        cached = self.cache_dir / "artifacts" / f"{sha256}.pt"
        if self._still_verified(cached, sha256):
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.part{os.getpid()}")
        fs, path = self._fs(uri)
        try:
            retrying(f"fetch {uri}", fs.get_file, path, str(tmp))
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise DetectorUnavailable(f"checkpoint {uri} is missing; retrain or restore it") from None
        if sha256_file(tmp) != sha256:
            tmp.unlink()
            raise DetectorUnavailable(f"checkpoint {uri} changed in the store (sha256 mismatch)")
        os.replace(tmp, cached)
        self._mark_verified(cached)
        return cached

    @staticmethod
    def _mark_verified(path: Path) -> None:
        st = path.stat()
        _verified_stamp(path).write_text(f"{st.st_size} {st.st_mtime_ns}\n")

    def _still_verified(self, cached: Path, sha256: str) -> bool:
        """A cached copy that still holds ``sha256``: unchanged since it was hashed (size and mtime), or hashed again now."""
        try:
            st = cached.stat()
        except FileNotFoundError:
            return False
        stamp = _verified_stamp(cached)
        with contextlib.suppress(OSError):
            if stamp.read_text().split() == [str(st.st_size), str(st.st_mtime_ns)]:
                return True
        if sha256_file(cached) == sha256:
            self._mark_verified(cached)
            return True
        log.warning("cached copy %s no longer matches its sha256; fetching it again", cached)
        cached.unlink(missing_ok=True)
        stamp.unlink(missing_ok=True)
        return False

    def read_bytes(self, location: str) -> bytes | None:
        """A small file's bytes (a plot), or None if it is gone."""
        uri = self.resolve(location)
        try:
            if _is_url(uri):
                fs, path = self._fs(uri)
                return retrying(f"read {uri}", fs.cat_file, path)
            return Path(uri).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def remove(self, uri: str) -> None:
        """Delete one file from the store (gone already: nothing to do). Never through a link, never outside the root."""
        if _is_url(uri):
            fs, path = self._fs(uri)
            if retrying(f"look up {uri}", fs.exists, path):
                retrying(f"remove {uri}", fs.rm_file, path)
        else:
            self.remove_local(Path(uri), Path(self.root))

    @staticmethod
    def remove_local(path: Path, root: Path) -> None:
        """Delete a file under ``root`` and, once empty, its folder; refused for a link or a path leading out of ``root``."""
        if path.is_symlink() or not _inside(path.parent, root):
            raise ValueError(f"refusing to remove {path}: not a file inside {root}")
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
        """Every file under ``jobs/``: (job key, file). Links are neither listed nor followed."""
        if self.remote:
            fs, base = self._fs(f"{self.root}/jobs")
            protocol = self.root.split("://", 1)[0]
            found = retrying(f"list {self.root}", fs.find, base, detail=True)  # nothing there: nothing found
            for path, info in found.items():
                key = path[len(base) + 1 :].split("/", 1)[0]
                yield key, StoredFile(f"{protocol}://{path}", int(info.get("size") or 0))
        else:
            for key, path in _job_files(Path(self.root) / "jobs"):
                yield key, StoredFile(str(path), path.stat().st_size)

    def work_files(self) -> Iterator[tuple[str, Path]]:
        """This host's work copies of jobs on object storage: (job key, file); links neither listed nor followed."""
        return _job_files(self.work_dir / "jobs") if self.remote else iter(())

    def cached_files(self) -> Iterator[tuple[str, Path]]:
        """This host's cached detectors and their verification stamps: (sha256 named by the file, file)."""
        folder = self.cache_dir / "artifacts"
        if not folder.is_dir() or folder.is_symlink():
            return
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False):
                yield entry.name.lstrip(".").split(".", 1)[0], Path(entry.path)


def _verified_stamp(cached: Path) -> Path:
    """Beside a cached copy: the size and mtime it had when its sha256 was last checked."""
    return cached.with_name(cached.name + ".verified")


def _inside(folder: Path, root: Path) -> bool:
    """``folder`` is ``root`` or below it with no link on the way."""
    try:
        return folder.resolve().is_relative_to(root.resolve()) and folder.resolve() == folder.absolute()
    except OSError:
        return False


def _job_files(base: Path) -> Iterator[tuple[str, Path]]:
    """(job key, file) under ``base/<key>/...``, sorted; links (to files or folders) skipped, never followed."""
    if not base.is_dir() or base.is_symlink():
        return
    for top, dirs, names in os.walk(base, followlinks=False):
        dirs.sort()
        here = Path(top)
        for name in sorted(names):
            path = here / name
            if here != base and not path.is_symlink():
                yield path.relative_to(base).parts[0], path
