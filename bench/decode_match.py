"""Scores from JPEGs decoded on the device (nvJPEG on a GPU) against Pillow's, on real VOC images.

Pixels (mean and 99th percentile absolute difference in grey levels) and probabilities through
random-weight detectors at each size (the largest difference); the target is at most 0.02.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import jpeg_ids, machine, table, voc_root
from scoring import make_detectors

from vocfleet.model.decode import RawJpeg, decode_file, decode_jpegs
from vocfleet.model.scan import FileEntry
from vocfleet.model.score import iter_chunks, load_detectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--detectors", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    root, device = voc_root(args.voc_root), torch.device(args.device)
    entries = [FileEntry(str(root / "JPEGImages"), f"{i}.jpg") for i in jpeg_ids(root, args.images)]
    print(f"machine: {machine()}")
    raws = [r for e in entries if isinstance(r := decode_file(e, args.sizes, jpeg_raw=True), RawJpeg)]
    on_device, refused = decode_jpegs(raws, args.sizes, device)
    rows = []
    for size in args.sizes:
        diffs = np.concatenate(
            [np.abs(f.arrays[size].cpu().numpy().astype(int) - decode_file(f.entry, [size]).arrays[size].astype(int)).ravel() for f in on_device]
        )
        rows.append((size, f"{diffs.mean():.2f}", f"{np.percentile(diffs, 99):.0f}"))
    print(f"{len(on_device)} of {len(entries)} JPEGs decoded on {device}, {len(refused)} left to Pillow")
    print(table(rows, ("size", "mean |pixel difference|", "99th percentile")))
    worst = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            dets = load_detectors(make_detectors(args.detectors, size, Path(tmp)), device, compile=False)
            probs = {}
            for device_decode in (False, True):
                out = {}
                for chunk in iter_chunks(entries, dets, device, device_decode=device_decode):
                    out.update({f.entry.rel_path: chunk.probs[:, j] for j, f in enumerate(chunk.scored)})
                probs[device_decode] = out
            worst[size] = max(float(np.abs(probs[False][k] - probs[True][k]).max()) for k in probs[False])
    print(table([(s, f"{w:.4f}") for s, w in worst.items()], ("size", "largest |probability difference|")))
    print(f"decode match: largest probability difference {max(worst.values()):.4f} (target at most 0.02)")


if __name__ == "__main__":
    main()
