"""Decoding files to score: read once, hash, decode, resize for every detector input size.

On the CPU with Pillow (JPEG draft mode; every format and mode); baseline JPEGs can instead be
decoded in batches on the scoring device (nvJPEG on a GPU) by :func:`decode_jpegs`.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .data import IMAGE_FORMATS, resize_square, to_rgb
from .scan import MAX_FILE_BYTES, FileEntry, UnsafeFile, read_inside

# torchvision 0.29 points to TorchCodec for decoding; its decode_jpeg is still what runs nvJPEG here.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated", category=DeprecationWarning)


class PixelBudget:
    """Pixels being decoded at once in this process, bounded: decode memory follows pixels, not files.

    A 205 KB PNG of 8,000 x 8,000 takes about 660 MB to decode; eight decode threads on eight such
    files would hold 6 GB. Each decode holds its picture's pixels (after JPEG draft scaling) from
    the budget until it is done; a picture larger than the whole budget waits to decode alone.
    """

    def __init__(self, pixels: int):
        self.capacity, self.used, self.peak = pixels, 0, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + pixels <= self.capacity)
            self.used += pixels
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


# About 1 GB of decode buffers at ~10 bytes per pixel in flight (RGB, its conversions, the resize).
PIXELS_IN_FLIGHT = PixelBudget(100_000_000)


@dataclass
class DecodedFile:
    """A scorable picture: pixels at each detector input size (numpy on the host, or tensors on the device)."""

    entry: FileEntry
    arrays: dict[int, np.ndarray | torch.Tensor]
    width: int
    height: int
    size_bytes: int
    sha256: str


class BadImage(Exception):
    """A file that is not a scorable picture; the message is the reason recorded for it."""


@dataclass
class RawJpeg:
    """A baseline RGB or grey JPEG read and hashed, left for :func:`decode_jpegs` to decode on the device."""

    entry: FileEntry
    data: bytes
    width: int
    height: int
    size_bytes: int
    sha256: str


def read_file(entry: FileEntry) -> tuple[bytes, int]:
    """The file's bytes and size, or BadImage (empty, too large, unreadable, no longer a file inside its folder)."""
    try:
        data = read_inside(entry.folder, entry.rel_path, MAX_FILE_BYTES)
    except UnsafeFile as exc:
        raise BadImage(str(exc)) from None
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None
    if not data:
        raise BadImage("empty file")
    return data, len(data)


def decode_file(entry: FileEntry, sizes: Iterable[int], *, jpeg_raw: bool = False) -> DecodedFile | RawJpeg:
    """Read a file once: hash it, decode it once, and resize it for each detector input size.

    ``jpeg_raw``: a baseline RGB or grey JPEG is returned undecoded (:class:`RawJpeg`), for
    :func:`decode_jpegs`; every other file is decoded here with Pillow.

    Raises:
        BadImage: empty, not an image, an unsupported format, broken, or too large to decode safely.
    """
    data, size_bytes = read_file(entry)
    return decode_bytes(entry, data, size_bytes, sizes, jpeg_raw=jpeg_raw)


def decode_bytes(entry: FileEntry, data: bytes, size_bytes: int, sizes: Iterable[int], *, jpeg_raw: bool = False) -> DecodedFile | RawJpeg:
    """:func:`decode_file` for bytes already read."""
    sizes = sorted(set(sizes))
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:  # the header: format and size, nothing decoded yet
                fmt, (width, height) = opened.format, opened.size
                if fmt not in IMAGE_FORMATS:
                    raise BadImage(f"unsupported image format {fmt} (supported: JPEG, MPO, PNG, WebP, BMP, GIF, TIFF)")
                if jpeg_raw and _device_decodable(opened):  # a JPEG's EXIF is in its header: reading it decodes nothing
                    if opened.getexif().get(0x0112) in (5, 6, 7, 8):
                        width, height = height, width
                    return RawJpeg(entry, data, width, height, size_bytes, sha256)
            scale = _draft_scale(width, height, max(sizes)) if fmt in ("JPEG", "MPO") else 1
            with PIXELS_IN_FLIGHT.hold(width * height // scale**2):
                arrays, turned = _pixels(data, sizes)
        if turned:
            width, height = height, width
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised content)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too large to decode safely: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, unsupported mode: all "broken"
        raise BadImage(f"broken image: {exc}") from None
    return DecodedFile(entry, arrays, width, height, size_bytes, sha256)


def _pixels(data: bytes, sizes: list[int]) -> tuple[dict[int, np.ndarray], bool]:
    """Decode and resize to each size; whether EXIF turned the picture by 90 degrees.

    Its own function so that every full-size buffer is freed when it returns, inside the caller's
    hold on the pixel budget (a PNG's ``getexif`` already decodes the whole picture).
    """
    with Image.open(io.BytesIO(data)) as opened:
        turned = opened.getexif().get(0x0112) in (5, 6, 7, 8)
        im = to_rgb(opened, max(sizes))
        return {s: resize_square(im, s) for s in sizes}, turned


def _device_decodable(opened: Image.Image) -> bool:
    """Baseline JPEGs in RGB or grey: what nvJPEG decodes exactly (CMYK, progressive and MPO go to Pillow)."""
    return opened.format == "JPEG" and opened.mode in ("RGB", "L") and not opened.info.get("progressive") and not opened.info.get("progression")


def decode_jpegs(raws: list[RawJpeg], sizes: Iterable[int], device: torch.device, batch: int = 64) -> tuple[list[DecodedFile], list[RawJpeg]]:
    """Decode JPEGs on ``device`` in batches (nvJPEG on a GPU), apply EXIF orientation, and resize there.

    The resize is antialiased bilinear, as Pillow's :func:`~vocfleet.model.data.resize_square`;
    probabilities match the Pillow path within 0.02 (tests/test_scoring.py). The arrays stay on
    the device. Files the device decoder refuses come back in the second list, for Pillow.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    sizes = sorted(set(sizes))
    done: list[DecodedFile] = []
    refused: list[RawJpeg] = []
    for start in range(0, len(raws), batch):  # full-size pictures: a batch at a time bounds device memory
        group = raws[start : start + batch]
        datas = [torch.from_numpy(np.frombuffer(r.data, dtype=np.uint8).copy()) for r in group]
        try:
            images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        except RuntimeError:  # one bad file fails the batch: find it
            images = []
            for data in datas:
                try:
                    images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
                except RuntimeError:
                    images.append(None)
        for raw, image in zip(group, images, strict=True):
            if image is None:
                refused.append(raw)
                continue
            x = _draft(image[None].float(), max(sizes))
            arrays = {s: _resize(x, s) for s in sizes}
            done.append(DecodedFile(raw.entry, arrays, raw.width, raw.height, raw.size_bytes, raw.sha256))
    return done, refused


def _draft(x: torch.Tensor, size: int) -> torch.Tensor:
    """What Pillow's JPEG draft mode does before the resize: scale down by 2, 4 or 8 while both sides stay >= 2 * size.

    Draft mode scales in the DCT, close to averaging each block; matching it keeps the device's
    pictures as sharp as Pillow's (without it, the smallest sizes drift by several grey levels).
    """
    height, width = x.shape[-2:]
    scale = _draft_scale(width, height, size)
    return torch.nn.functional.avg_pool2d(x, scale, ceil_mode=True) if scale > 1 else x


def _draft_scale(width: int, height: int, size: int) -> int:
    """The factor (1, 2, 4 or 8) by which JPEG draft mode shrinks a picture decoded for ``size``."""
    room = min(width // (2 * size), height // (2 * size))
    return next((s for s in (8, 4, 2) if s <= room), 1)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(1, 3, H, W) float to (size, size, 3) uint8, antialiased bilinear like Pillow's."""
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
