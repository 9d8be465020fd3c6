"""Benchmark 1: training input, images/s delivered (decoded, resized, augmented, on the device).

vocfleet: the decode-once uint8 cache, batches gathered from it, random scale/flip/rotation on
whole batches (``model.augment.TrainAugment``). Reference (bench/reference.py): the origin's way,
every JPEG decoded each epoch and augmented per image with PIL. Both run side by side here.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import jpeg_ids, machine, sync, table, voc_root
from reference import reference_batches

from vocfleet.model.augment import TrainAugment
from vocfleet.model.data import decoded_cache
from vocfleet.model.splits import BatchFeeder, SplitData


def vocfleet_rate(decoded, device: torch.device, size: int, batch: int, images: int) -> float:
    split = SplitData(decoded, np.flatnonzero(decoded.ok), np.zeros(int(decoded.ok.sum()), np.float32))
    feeder = BatchFeeder(split, device)
    augment = TrainAugment(reuse_output=True)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(split), generator=gen).numpy()
    x, _ = feeder.batch(order[:batch])
    augment(x, gen)  # warm-up
    sync(device)
    start, done = time.perf_counter(), 0
    while done < images:
        pos = order[(done % (len(order) - batch)) :][:batch]
        x, _ = feeder.batch(pos)
        out = augment(x, gen)
        done += len(pos)
    sync(device)
    assert out.shape == (batch, 3, size, size)
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=4096, help="images timed for vocfleet")
    ap.add_argument("--ref-images", type=int, default=512, help="images timed for the reference (it is slow)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    root, device = voc_root(args.voc_root), torch.device(args.device)
    ids = jpeg_ids(root)
    print(f"machine: {machine()}")
    print(f"{len(ids)} VOC JPEGs from {root}, {args.size} px, batch {args.batch}, device {device}")

    ref_start = time.perf_counter()
    n = 0
    for x in reference_batches(root, ids[: args.ref_images], args.size, args.batch, device):
        n += len(x)
    sync(device)
    ref = n / (time.perf_counter() - ref_start)

    cache_dir = Path(tempfile.mkdtemp(prefix="vocfleet-bench-cache-"))
    try:
        t0 = time.perf_counter()
        decoded = decoded_cache(root, ids, args.size, cache_dir)
        build = time.perf_counter() - t0
        ours = vocfleet_rate(decoded, device, args.size, args.batch, args.images)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    per_epoch_build = len(ids) / build
    print(
        table(
            [
                ("reference: decode + PIL augment per image, every epoch", f"{ref:,.0f}", "1.0x"),
                ("vocfleet: cached uint8 batches + batch augmentation", f"{ours:,.0f}", f"{ours / ref:.1f}x"),
                ("vocfleet cache build (once per machine, shared by 20 jobs)", f"{per_epoch_build:,.0f}", f"{per_epoch_build / ref:.1f}x"),
            ],
            ("pipeline", "images/s", "vs reference"),
        )
    )
    # One job of E epochs pays the build once; twenty class jobs share it.
    for jobs, epochs in ((1, 1), (1, 5), (20, 5)):
        total = jobs * epochs * len(ids)
        t = build + total / ours
        print(f"amortised over {jobs} job(s) x {epochs} epoch(s): {total / t:,.0f} images/s = {total / t / ref:.1f}x reference")


if __name__ == "__main__":
    main()
