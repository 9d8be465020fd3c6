"""One picture at a time, scored together: the web app's ``POST /api/score`` runs through this.

Each request decodes its own picture (in its own thread, with scoring's safety: the same decoder,
format list and pixel budget), then waits while one thread runs whatever pictures have arrived,
up to ``max_batch``, through every detector at once: requests that come together share a batch,
as a model server batches them, and a lone request waits at most ``wait_s`` for company.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np
import torch

from .augment import host_to_device
from .decode import DecodedFile, decode_bytes
from .scan import FileEntry
from .score import LoadedDetector, run_detectors

UPLOAD = FileEntry("upload", "upload")  # what a decoded upload names as its file (nothing is read from disk)


class PictureScorer:
    """Scores single pictures through ``detectors``, batching those that arrive together."""

    def __init__(self, detectors: Sequence[LoadedDetector], device: torch.device, *, max_batch: int = 32, wait_s: float = 0.005):
        self.detectors, self.device, self.max_batch, self.wait_s = list(detectors), device, max_batch, wait_s
        self.sizes = sorted({d.image_size for d in self.detectors})
        self._waiting: queue.Queue[tuple[DecodedFile, Future]] = queue.Queue()
        self.batches = 0  # how many batches ran (the tests see requests share one)
        threading.Thread(target=self._serve, daemon=True, name="vocfleet-picture-scorer").start()

    def score(self, data: bytes) -> tuple[DecodedFile, np.ndarray]:
        """The decoded picture and its probability under each detector (in ``detectors`` order).

        Raises:
            BadImage: not a picture scoring accepts (the reason, as scoring records it).
        """
        decoded = decode_bytes(UPLOAD, data, len(data), self.sizes)
        done: Future = Future()
        self._waiting.put((decoded, done))
        return decoded, done.result()

    def _serve(self) -> None:
        while True:
            batch = [self._waiting.get()]
            try:
                while len(batch) < self.max_batch:
                    batch.append(self._waiting.get(timeout=self.wait_s))
            except queue.Empty:
                pass
            try:
                images = {s: host_to_device(torch.from_numpy(np.stack([f.arrays[s] for f, _ in batch])), self.device) for s in self.sizes}
                probs = run_detectors(self.detectors, images).cpu().numpy()
                self.batches += 1
                for j, (_, done) in enumerate(batch):
                    done.set_result(probs[:, j])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which answers with it
                for _, done in batch:
                    done.set_exception(exc)
