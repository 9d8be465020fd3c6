"""Scoring: load detectors once, and run each decoded picture through all of them, chunk by chunk."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import DetectorUnavailable
from .artifacts import ArtifactStore, checked_file
from .augment import host_to_device, preprocess_eval
from .checkpoint import load_checkpoint
from .decode import BadImage, DecodedFile, RawJpeg, decode_bytes, decode_file, decode_jpegs
from .net import detector_model, inference_dtype, inference_model
from .scan import FileEntry

log = logging.getLogger(__name__)


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

    def answer(self, probability) -> tuple[float, bool]:
        """The probability as a Python float, and whether it is at or above the threshold.

        Compared as float64, the stored value: NumPy 2 compares a float32 with a Python float in
        float32, rounding the threshold, so a probability just under it would be called present.
        """
        p = float(probability)
        return p, p >= self.threshold


@dataclass
class LoadedDetector:
    spec: DetectorSpec
    model: nn.Module
    image_size: int
    compiled: bool = False


_loaded: dict[tuple[int, str, str, str, bool], LoadedDetector] = {}


def load_detectors(
    specs: Sequence[DetectorSpec], device: torch.device, *, compile: bool | None = None, store: ArtifactStore | None = None
) -> list[LoadedDetector]:
    """Load each detector once per process and keep it (checksum verified on first load).

    ``store``: where checkpoints on object storage are fetched from (cached on this host by
    sha256); without one, every checkpoint must be a local path.

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
        # The path too: a detector row pointed at another file is checked again, not served from memory.
        key = (spec.id, spec.sha256, spec.checkpoint_path, str(device), compile)
        if key not in _loaded:
            try:
                path = store.local_copy(spec.checkpoint_path, spec.sha256) if store else checked_file(Path(spec.checkpoint_path), spec.sha256)
            except DetectorUnavailable as exc:
                raise DetectorUnavailable(f"detector {spec.id} ({spec.voc_class}): {exc}") from None
            ckpt = load_checkpoint(path)
            model = inference_model(detector_model(ckpt), device)
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


def _on_device(group: Sequence[DecodedFile], size: int, device: torch.device) -> torch.Tensor:
    """One (B, size, size, 3) uint8 batch on the device from host arrays, device tensors, or both."""
    arrays = [f.arrays[size] for f in group]
    if all(isinstance(a, np.ndarray) for a in arrays):
        return host_to_device(torch.from_numpy(np.stack(arrays)), device)
    return torch.stack([a if isinstance(a, torch.Tensor) else torch.tensor(a, device=device) for a in arrays])


@dataclass
class ChunkResult:
    """One chunk's outcome: scored files with their probabilities (detectors x files), and errors."""

    scored: list[DecodedFile] = field(default_factory=list)
    probs: np.ndarray | None = None
    errors: list[tuple[FileEntry, str]] = field(default_factory=list)


def iter_chunks(  # noqa: C901 - the decode/infer pipeline with its error paths: split, it would hide what overlaps what
    entries: Sequence[FileEntry],
    detectors: Sequence[LoadedDetector],
    device: torch.device,
    *,
    chunk_size: int = 256,
    batch_size: int = 64,
    threads: int | None = None,
    device_decode: bool | None = None,
    on_files: Callable[[int], None] | None = None,
) -> Iterator[ChunkResult]:
    """Decode and score ``entries`` chunk by chunk; reading and decoding the next chunk overlaps inference.

    Each file is read and decoded once (threads; Pillow releases the GIL) and the same batch goes
    through every detector. ``device_decode`` (None: on a GPU): the threads only read, hash and
    check baseline JPEGs, which are then decoded and resized on ``device`` in batches (nvJPEG);
    everything else, and any JPEG the device refuses, goes through Pillow with the same reasons.
    ``on_files(n)`` is told of files as they finish (after each batch, not each chunk).
    """
    sizes = sorted({d.image_size for d in detectors})
    threads = threads or min(8, os.cpu_count() or 1)  # 16 decoded slower than 8 on a 16-vCPU GPU host (bench/RESULTS.md)
    device_decode = device.type == "cuda" if device_decode is None else device_decode

    def decode(entry: FileEntry) -> DecodedFile | RawJpeg | tuple[FileEntry, str]:
        try:
            return decode_file(entry, sizes, jpeg_raw=device_decode)
        except BadImage as exc:
            return (entry, str(exc))

    chunks = [entries[i : i + chunk_size] for i in range(0, len(entries), chunk_size)]
    with ThreadPoolExecutor(threads) as pool:
        pending: list[Future] = [pool.submit(decode, e) for e in chunks[0]] if chunks else []
        for k in range(len(chunks)):
            done = [f.result() for f in pending]
            pending = [pool.submit(decode, e) for e in chunks[k + 1]] if k + 1 < len(chunks) else []
            result = ChunkResult()
            raws = []
            for item in done:
                if isinstance(item, RawJpeg):
                    raws.append(item)
                else:
                    (result.scored if isinstance(item, DecodedFile) else result.errors).append(item)
            if raws:
                on_device, refused = decode_jpegs(raws, sizes, device, batch_size)
                result.scored += on_device
                for raw in refused:
                    try:
                        result.scored.append(decode_bytes(raw.entry, raw.data, raw.size_bytes, sizes))
                    except BadImage as exc:
                        result.errors.append((raw.entry, str(exc)))
            if on_files and result.errors:
                on_files(len(result.errors))
            if result.scored:
                parts = []
                for b in range(0, len(result.scored), batch_size):
                    group = result.scored[b : b + batch_size]
                    batch = {s: _on_device(group, s, device) for s in sizes}
                    parts.append(run_detectors(detectors, batch, batch_size).cpu().numpy())
                    if on_files:
                        on_files(len(group))
                result.probs = np.concatenate(parts, axis=1)
                for f in result.scored:
                    f.arrays = {}  # the pixels are not needed past inference
            yield result
