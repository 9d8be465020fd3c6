"""Thumbnails of scored pictures, read as scoring reads them and cached once per picture and size.

A thumbnail is made only of a file a run recorded (its folder, relative path and sha256 come from
the database, never from a request), read with the same no-link checks as scoring
(:func:`~vocfleet.model.scan.read_inside`), and only if its bytes still hash to what was scored:
a picture that is gone, replaced or swapped for a link gives ``None`` and the caller shows a
placeholder. The cache is keyed by the sha256, so a thumbnail always shows what was scored.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from .data import open_rgb
from .scan import MAX_FILE_BYTES, read_inside

SIZES = (160, 320, 640)  # the sizes served: a grid tile, a retina tile, a picture's page


def render(data: bytes, size: int) -> bytes:
    """A JPEG no larger than ``size`` on either side of an encoded picture (EXIF orientation applied).

    Raises:
        OSError, ValueError, Image.DecompressionBombError: not a picture Pillow can decode safely.
    """
    im = open_rgb(io.BytesIO(data), size)
    im.thumbnail((size, size))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=82)
    return out.getvalue()


def thumbnail(folder: str, rel_path: str, size: int, *, sha256: str | None = None) -> bytes | None:
    """A JPEG thumbnail of ``folder/rel_path``, or None if it is gone, unreadable, unsafe or (with ``sha256``) changed."""
    try:
        data = read_inside(folder, rel_path, MAX_FILE_BYTES)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            return None
        return render(data, size)
    except Exception:  # noqa: BLE001 - any failure shows the placeholder; the picture's page says the file is not readable
        return None


def _write(path: Path, data: bytes) -> None:
    """Written to a temporary file and renamed: two requests at once never serve half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".thumb")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def cached_thumbnail(cache_dir: Path, folder: str, rel_path: str, sha256: str, size: int, *, verify: bool = True) -> bytes | None:
    """:func:`thumbnail`, made once per (sha256, size) under ``cache_dir/thumbnails`` and read from there after.

    Beside each thumbnail is the path, size and modification time of the file it was made from:
    a later request serves the cached one only while the file still looks the same (one
    ``lstat``), else reads and hashes it again, so a picture gone or changed since it was scored
    shows the placeholder, not a stale thumbnail.

    ``verify=False``: ``sha256`` is only the cache's key and the bytes are not checked against it
    (a detector's evaluation picture, whose content was never hashed; its path comes from the database).

    Raises:
        ValueError: ``size`` is not one of :data:`SIZES` (the cache holds a few sizes, not any a client asks for).
    """
    if size not in SIZES:
        raise ValueError(f"size {size}: one of {', '.join(map(str, SIZES))}")
    source = os.path.join(folder, rel_path)
    try:
        st = os.lstat(source)
    except OSError:
        return None  # gone
    looks = f"{source}\0{st.st_size}\0{st.st_mtime_ns}"
    path = cache_dir / "thumbnails" / sha256[:2] / f"{sha256}-{size}.jpg"
    stamp = path.with_suffix(".source")
    try:
        if stamp.read_text() == looks:
            return path.read_bytes()
    except OSError:
        pass
    jpeg = thumbnail(folder, rel_path, size, sha256=sha256 if verify else None)
    if jpeg is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, jpeg)
    _write(stamp, looks.encode())
    return jpeg
