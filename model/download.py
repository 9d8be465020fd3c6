"""Get PASCAL VOC: torchvision's archive list and checksums, a download that resumes, extraction."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets.utils import USER_AGENT, check_integrity, extract_archive
from torchvision.datasets.voc import DATASET_YEAR_DICT

from . import ConfigError, VocfleetError

log = logging.getLogger(__name__)
# torchvision knows the archives and their MD5s; VOC2007 has a separate test archive.
ARCHIVES = {"2007": ["2007", "2007-test"], "2012": ["2012"]}
CHUNK = 1 << 20


class DownloadError(VocfleetError, RuntimeError):
    """The download could not be done (offline, server error, checksum mismatch); one line for the user."""

    http_status = 502


def fetch(url: str, path: Path, *, progress: Callable[[int, int], None] | None = None, timeout: float = 20.0) -> None:
    """Download ``url`` to ``path``, resuming from ``path.part`` if an earlier attempt was cut off.

    torchvision's ``download_url`` starts over after an interruption; a VOC archive is 450 MB, so
    this asks the server for the missing byte range instead.
    """
    part = path.with_name(path.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            if start and resp.status != 206:  # the server ignored the range: start over
                start = 0
            length = int(resp.headers.get("Content-Length") or 0)
            total = start + length if length else 0
            done = start
            with open(part, "ab" if start else "wb") as fh:
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: server answered {exc.code} {exc.reason}; try again later") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {url} ({reason}); check the network, or fetch it by hand into {path.parent} and run the command again") from None
    os.replace(part, path)


def download_voc(dest: Path, year: str = "2007", *, progress: Callable[[str, int, int], None] | None = None, timeout: float = 20.0) -> Path:
    """Download, verify (MD5) and extract VOC ``year`` (for 2007: trainval and test) under ``dest``.

    Already downloaded archives with the right checksum are not fetched again, and an archive is
    extracted once (a marker file records it).

    Returns:
        The year folder, ``dest/VOCdevkit/VOC<year>``.
    Raises:
        DownloadError: offline, a server error, or a checksum mismatch.
    """
    if year not in ARCHIVES:
        raise ConfigError(f"--year {year}: only {', '.join(ARCHIVES)} are known")
    dest.mkdir(parents=True, exist_ok=True)
    for key in ARCHIVES[year]:
        entry = DATASET_YEAR_DICT[key]
        archive = dest / entry["filename"]
        if not check_integrity(str(archive), entry["md5"]):
            fetch(entry["url"], archive, progress=(lambda d, t, name=entry["filename"]: progress(name, d, t)) if progress else None, timeout=timeout)
            if not check_integrity(str(archive), entry["md5"]):
                archive.unlink()
                raise DownloadError(f"{entry['filename']}: checksum mismatch (corrupt download, removed); run the command again")
        marker = dest / f".{entry['filename']}.extracted"
        if not marker.exists():
            extract_archive(str(archive), str(dest))
            marker.touch()
    return dest / "VOCdevkit" / f"VOC{year}"
