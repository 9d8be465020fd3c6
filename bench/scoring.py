"""Benchmark 3: scoring a folder through N detectors, images/s, decode included.

vocfleet: ``model.score.iter_chunks`` (threads decode each file once, the same batch goes through
every detector). Plain: each detector decodes the folder itself, one image at a time. Bound: the
detectors alone on batches already decoded and on the device. Side by side in one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import jpeg_ids, machine, sync, table, voc_root

from vocfleet.model.artifacts import sha256_file
from vocfleet.model.checkpoint import save_checkpoint
from vocfleet.model.data import load_rgb
from vocfleet.model.decode import decode_file
from vocfleet.model.net import build_model
from vocfleet.model.scan import FileEntry
from vocfleet.model.score import DetectorSpec, iter_chunks, load_detectors, run_detectors, score_batch


def make_detectors(n: int, size: int, folder: Path) -> list[DetectorSpec]:
    specs = []
    for i in range(n):
        torch.manual_seed(i)
        path = folder / f"det{i}.pt"
        save_checkpoint(path, {"model": build_model("scratch").state_dict(), "config": {"image_size": size}, "epoch": 0})
        specs.append(DetectorSpec(i, f"class{i}", str(path), sha256_file(path), 0.5))
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--detectors", type=int, default=20)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--plain-images", type=int, default=8, help="images for the plain way (it is slow)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd detectors (the default on a GPU; VOCFLEET_SCORE_COMPILE)")
    args = ap.parse_args()
    root, device = voc_root(args.voc_root), torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    entries = [FileEntry(str(root / "JPEGImages"), f"{i}.jpg") for i in jpeg_ids(root, args.images)]
    print(f"machine: {machine()}")
    print(f"{len(entries)} VOC JPEGs, {args.detectors} ResNet-50 detectors at {args.size} px, batch {args.batch}, device {device}")
    with tempfile.TemporaryDirectory() as tmp:
        specs = make_detectors(args.detectors, args.size, Path(tmp))
        loaded = load_detectors(specs, device, compile=False)
        compiled = load_detectors(specs, device, compile=True) if args.compile else None

    # Warm-up: one batch through every detector (cudnn autotuning, allocator; compiling).
    warm = np.stack([decode_file(e, [args.size]).arrays[args.size] for e in entries[: args.batch]])
    score_batch(loaded, {args.size: warm}, device)
    if compiled:
        t = time.perf_counter()
        score_batch(compiled, {args.size: warm}, device, args.batch)
        print(f"compiling: {time.perf_counter() - t:.0f} s, once for all {args.detectors} detectors")

    # Bound: decoded batches already on the device.
    batches = [
        torch.from_numpy(np.stack([decode_file(e, [args.size]).arrays[args.size] for e in entries[i : i + args.batch]])).to(device)
        for i in range(0, len(entries), args.batch)
    ]

    def bound(dets) -> float:
        for b in batches:  # untimed pass: every batch shape tuned (cudnn) or compiled first
            run_detectors(dets, {args.size: b}, args.batch)
        sync(device)
        t = time.perf_counter()
        for b in batches:
            run_detectors(dets, {args.size: b}, args.batch)
        sync(device)
        return len(entries) / (time.perf_counter() - t)

    def ours(dets, device_decode: bool) -> float:
        t = time.perf_counter()
        n = 0
        for chunk in iter_chunks(entries, dets, device, batch_size=args.batch, device_decode=device_decode):
            n += len(chunk.scored)
        sync(device)
        return n / (time.perf_counter() - t)

    plain_entries = entries[: args.plain_images]
    t = time.perf_counter()
    for det in loaded:
        for e in plain_entries:
            run_detectors([det], {args.size: torch.from_numpy(np.array(load_rgb(e.path, args.size)))[None].to(device)}).cpu()
    plain = len(plain_entries) / (time.perf_counter() - t)

    ways = [(" (eager)", loaded)] + ([(" (torch.compile: the default on a GPU)", compiled)] if compiled else [])
    rows = [("plain: each detector decodes, one image at a time", plain, bound_eager := bound(loaded))]
    decoders = [(False, "Pillow on the CPU")] + ([(True, "JPEGs on the GPU (nvJPEG)")] if device.type == "cuda" else [])
    for label, dets in ways:
        b = bound_eager if dets is loaded else bound(dets)
        for device_decode, how in decoders:
            rows.append((f"vocfleet: decode once ({how}), batch through all detectors{label}", ours(dets, device_decode), b))
        rows.append((f"bound: detectors alone, batches already on the device{label}", b, b))
    print(
        table(
            [(name, f"{v:,.1f}", f"{v / b:.2f}") for name, v, b in rows],
            ("way", f"images/s through {args.detectors} detectors", "of its bound"),
        )
    )
    best = max((r for r in rows if r[0].startswith("vocfleet")), key=lambda r: r[1])
    print(f"scoring images/s through {args.detectors} detectors: {best[1]:,.1f} ({best[0].split(': ', 1)[1]})")
    print(f"vocfleet / plain: {best[1] / plain:.1f}x; vocfleet / bound: {best[1] / best[2]:.2f}")


if __name__ == "__main__":
    main()
