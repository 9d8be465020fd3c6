"""Pictures sent one at a time are scored together, with the numbers a scoring run gives them."""

import threading

import numpy as np
import pytest
import torch

from vocfleet.model.batcher import PictureScorer
from vocfleet.model.decode import BadImage
from vocfleet.model.scan import FileEntry
from vocfleet.model.score import DetectorSpec, iter_chunks, load_detectors


def test_requests_that_come_together_share_a_batch_and_get_their_own_answers(detectors, wild):
    specs = [DetectorSpec(i, cls, r.checkpoint, r.sha256, r.threshold) for i, (cls, r) in enumerate(sorted(detectors.items()), 1)]
    device = torch.device("cpu")
    loaded = load_detectors(specs, device)
    names = ["grey.jpg", "phone_rotated.jpg"]
    entries = [FileEntry(str(wild), n) for n in names]
    expected = {f.entry.rel_path: chunk.probs[:, j] for chunk in iter_chunks(entries, loaded, device) for j, f in enumerate(chunk.scored)}
    assert set(expected) == set(names)

    scorer = PictureScorer(loaded, device, wait_s=0.5)  # a long wait: the threads below surely meet
    got, barrier = {}, threading.Barrier(4)

    def send(i: int) -> None:
        name = names[i % 2]
        barrier.wait()
        got[i] = (name, scorer.score((wild / name).read_bytes())[1])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert scorer.batches == 1  # four requests, one pass through each detector
    for name, probs in got.values():
        assert probs == pytest.approx(expected[name], abs=1e-5)
    with pytest.raises(BadImage, match="not an image"):
        scorer.score(b"not a picture")
    assert isinstance(got[0][1], np.ndarray) and got[0][1].shape == (len(specs),)
