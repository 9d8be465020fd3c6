"""Scoring: walk real folders, decode each picture once, run it through every detector."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from . import DetectorUnavailable
from .augment import host_to_device, preprocess_eval
from .checkpoint import load_checkpoint, sha256_file
from .data import IMAGE_FORMATS, resize_square, to_rgb
from .net import build_model, inference_dtype, inference_model

log = logging.getLogger(__name__)
MAX_FILE_BYTES = 256 * 1024 * 1024


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
        return (self.folder_index, *self.entry.rel_path.split("/"))


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
        yield from _walk(index, top, top, (index,), after if after is not None and after[:1] == (index,) else None)


def _walk(index: int, top: str, here: str, prefix: tuple, after: tuple | None) -> Iterator[ScanEntry]:
    # Plain strings, not pathlib: a million Path objects cost time, and pathlib interns every part.
    cut = len(top.rstrip(os.sep)) + 1

    def found(path: str, reason: str | None = None) -> ScanEntry:
        rel = path[cut:] or "."
        return ScanEntry(index, FileEntry(top, _printable(rel) or rel), reason)

    try:
        with os.scandir(here) as it:
            listing = sorted(it, key=lambda e: _shown(e.name))
    except OSError as exc:
        yield found(here, f"cannot list folder: {exc.strerror or exc}")
        return
    for item in listing:
        if item.name.startswith("."):
            continue
        key = prefix + (_shown(item.name),)
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
        if _printable(item.name) is not None:  # a folder too: one row, its files are not reachable by name
            yield found(path, f"{'folder' if is_dir else 'file'} name is not valid UTF-8: rename it")
            continue
        if item.is_symlink():
            try:
                target = Path(path).resolve(strict=True)
            except FileNotFoundError:
                yield found(path, "broken link")
                continue
            except (OSError, RuntimeError):
                yield found(path, "link loop")
                continue
            if not target.is_relative_to(top):
                yield found(path, f"link leads outside the folder (to {target})")
                continue
            if target.is_dir():
                continue  # never followed (it could loop); its files are scanned where they really are
            if not target.is_file():
                yield found(path, "not a regular file")
                continue
            yield found(path)
        elif is_dir:
            yield from _walk(index, top, path, key, sub_after)
        else:
            try:
                mode = item.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                yield found(path, f"cannot read: {exc.strerror or exc}")
                continue
            yield found(path, None if stat.S_ISREG(mode) else "not a regular file")


def scan_folders(folders: Sequence[str | os.PathLike]) -> tuple[list[FileEntry], list[tuple[FileEntry, str]]]:
    """The whole scan in memory: (files to try decoding, files with a reason). For small folders and tests."""
    candidates: list[FileEntry] = []
    errors: list[tuple[FileEntry, str]] = []
    for item in iter_scan(folders):
        if item.reason is None:
            candidates.append(item.entry)
        else:
            errors.append((item.entry, item.reason))
    return candidates, errors


@dataclass
class DecodedFile:
    entry: FileEntry
    arrays: dict[int, np.ndarray]
    width: int
    height: int
    size_bytes: int
    sha256: str


class BadImage(Exception):
    """A file that is not a scorable picture; the message is the reason recorded for it."""


def decode_file(entry: FileEntry, sizes: Iterable[int]) -> DecodedFile:
    """Read a file once: hash it, decode it once, and resize it for each detector input size.

    Raises:
        BadImage: empty, not an image, an unsupported format, broken, or too large to decode safely.
    """
    sizes = sorted(set(sizes))
    path = entry.path
    try:
        size_bytes = path.stat().st_size
        if size_bytes == 0:
            raise BadImage("empty file")
        if size_bytes > MAX_FILE_BYTES:
            raise BadImage(f"file too large ({size_bytes} bytes; limit {MAX_FILE_BYTES})")
        data = path.read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None
    try:
        # One parse of the header: format, size and orientation, then the decode itself.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if opened.format not in IMAGE_FORMATS:
                    raise BadImage(f"unsupported image format {opened.format} (supported: JPEG, PNG, WebP, BMP, GIF, TIFF)")
                if opened.getexif().get(0x0112) in (5, 6, 7, 8):
                    width, height = height, width
                im = to_rgb(opened, max(sizes))
        arrays = {s: resize_square(im, s) for s in sizes}
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised content)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too large to decode safely: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, unsupported mode: all "broken"
        raise BadImage(f"broken image: {exc}") from None
    return DecodedFile(entry, arrays, width, height, size_bytes, hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class DetectorSpec:
    """What scoring needs of a detector row."""

    id: int
    voc_class: str
    checkpoint_path: str
    sha256: str
    threshold: float

    @classmethod
    def of(cls, row) -> DetectorSpec:
        """From anything with the detector row's attributes (``db.models.Detector``)."""
        return cls(row.id, row.voc_class, row.checkpoint_path, row.sha256, row.threshold)


@dataclass
class LoadedDetector:
    spec: DetectorSpec
    model: nn.Module
    image_size: int
    compiled: bool = False


_loaded: dict[tuple[int, str, str, bool], LoadedDetector] = {}


def load_detectors(specs: Sequence[DetectorSpec], device: torch.device, *, compile: bool | None = None) -> list[LoadedDetector]:
    """Load each detector once per process and keep it (checksum verified on first load).

    ``compile``: wrap each detector in ``torch.compile`` (None: on a GPU, where it doubles the
    detectors' speed). All detectors share one compiled graph (their weights are its inputs), so
    the cost (seconds on a GPU host) is paid once per process, input size and batch size; smaller
    batches are padded (see :func:`run_detectors`). If compiling fails, scoring goes on uncompiled.

    Raises:
        DetectorUnavailable: a checkpoint is missing or no longer matches its sha256.
    """
    compile = device.type == "cuda" if compile is None else compile
    out = []
    for spec in specs:
        key = (spec.id, spec.sha256, str(device), compile)
        if key not in _loaded:
            path = Path(spec.checkpoint_path)
            if not path.is_file():
                raise DetectorUnavailable(f"detector {spec.id} ({spec.voc_class}): checkpoint {path} is missing; retrain or restore it")
            if sha256_file(path) != spec.sha256:
                raise DetectorUnavailable(f"detector {spec.id} ({spec.voc_class}): checkpoint {path} changed on disk (sha256 mismatch)")
            ckpt = load_checkpoint(path)
            model = build_model("scratch")
            model.load_state_dict(ckpt["model"])
            model = inference_model(model, device)
            if compile:
                model = torch.compile(model, dynamic=False)
            _loaded[key] = LoadedDetector(spec, model, int(ckpt["config"]["image_size"]), compile)
        out.append(_loaded[key])
    return out


@torch.inference_mode()
def run_detectors(detectors: Sequence[LoadedDetector], images: dict[int, torch.Tensor], pad_to: int | None = None) -> torch.Tensor:
    """Probabilities (detectors x images) for uint8 (B, H, W, 3) batches already on the device, one per input size.

    ``pad_to``: with compiled detectors, a smaller batch (a run's last) is padded to this size, so
    it reuses the compiled graph instead of compiling another.
    """
    n = next(iter(images.values())).shape[0]
    if pad_to and n < pad_to and any(d.compiled for d in detectors):
        images = {s: torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))]) for s, x in images.items()}
    inputs = {s: preprocess_eval(x).to(inference_dtype(x.device)) for s, x in images.items()}
    return torch.stack([torch.sigmoid(_forward(det, inputs[det.image_size]).float()[:n, 0]) for det in detectors])


def _forward(det: LoadedDetector, x: torch.Tensor) -> torch.Tensor:
    if det.compiled:
        try:
            return det.model(x)
        except Exception as exc:  # noqa: BLE001 - no compiler toolchain, unsupported backend, ...
            log.warning("torch.compile failed for detector %d (%s: %s); scoring uncompiled", det.spec.id, exc.__class__.__name__, exc)
            det.model, det.compiled = det.model._orig_mod, False
    return det.model(x)


def score_batch(detectors: Sequence[LoadedDetector], batch: dict[int, np.ndarray], device: torch.device, pad_to: int | None = None) -> np.ndarray:
    """Probabilities, shape (detectors, images), for one batch decoded at every needed size."""
    return run_detectors(detectors, {s: host_to_device(torch.from_numpy(a), device) for s, a in batch.items()}, pad_to).cpu().numpy()


@dataclass
class ChunkResult:
    """One chunk's outcome: scored files with their probabilities (detectors x files), and errors."""

    scored: list[DecodedFile] = field(default_factory=list)
    probs: np.ndarray | None = None
    errors: list[tuple[FileEntry, str]] = field(default_factory=list)


def iter_chunks(
    entries: Sequence[FileEntry],
    detectors: Sequence[LoadedDetector],
    device: torch.device,
    *,
    chunk_size: int = 256,
    batch_size: int = 64,
    threads: int | None = None,
    on_files: Callable[[int], None] | None = None,
) -> Iterator[ChunkResult]:
    """Decode and score ``entries`` chunk by chunk; decoding of the next chunk overlaps inference.

    Each file is read and decoded once (threads; Pillow releases the GIL) and the same batch goes
    through every detector. ``on_files(n)`` is told of files as they finish (after each batch,
    not each chunk), for progress.
    """
    sizes = sorted({d.image_size for d in detectors})
    threads = threads or min(8, os.cpu_count() or 1)  # 16 decoded slower than 8 on a 16-vCPU GPU host (bench/RESULTS.md)

    def decode(entry: FileEntry) -> DecodedFile | tuple[FileEntry, str]:
        try:
            return decode_file(entry, sizes)
        except BadImage as exc:
            return (entry, str(exc))

    chunks = [entries[i : i + chunk_size] for i in range(0, len(entries), chunk_size)]
    with ThreadPoolExecutor(threads) as pool:
        pending: list[Future] = [pool.submit(decode, e) for e in chunks[0]] if chunks else []
        for k in range(len(chunks)):
            done = [f.result() for f in pending]
            pending = [pool.submit(decode, e) for e in chunks[k + 1]] if k + 1 < len(chunks) else []
            result = ChunkResult()
            for item in done:
                (result.scored if isinstance(item, DecodedFile) else result.errors).append(item)
            if on_files and result.errors:
                on_files(len(result.errors))
            if result.scored:
                parts = []
                for b in range(0, len(result.scored), batch_size):
                    group = result.scored[b : b + batch_size]
                    parts.append(score_batch(detectors, {s: np.stack([f.arrays[s] for f in group]) for s in sizes}, device, batch_size))
                    if on_files:
                        on_files(len(group))
                result.probs = np.concatenate(parts, axis=1)
                for f in result.scored:
                    f.arrays = {}  # the pixels are not needed past inference
            yield result
