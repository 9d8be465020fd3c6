"""Benchmark 2: training efficiency = images/s of real training / images/s of the model alone.

Real: ``model.engine.train_one_epoch`` fed from the decode-once cache with batch augmentation.
Bound: the same function and model on one batch already on the device, already preprocessed.
Both run side by side in one process; the ratio says how much the input pipeline costs.
Where training runs in bfloat16 autocast on a CPU (``model.net.bf16_training``), real training in
float32 alternates with it too: the ratio is what native bfloat16 buys.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import jpeg_ids, machine, table, voc_root
from torch import nn

from vocfleet.model.augment import TrainAugment, preprocess_eval
from vocfleet.model.data import decoded_cache
from vocfleet.model.engine import train_one_epoch
from vocfleet.model.net import bf16_training, build_model
from vocfleet.model.splits import BatchFeeder, RepeatFeeder, SplitData


def run(model, feeder, augment, steps: int, batch: int, device, compile_model: bool, bf16: bool | None = None) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    step_model = torch.compile(model) if compile_model else model
    n = len(feeder.split) if hasattr(feeder, "split") else batch
    # A permutation repeated as often as needed: a small sample still gives every measured step.
    positions = np.resize(np.random.default_rng(0).permutation(n), batch * (steps + 3))
    gen = torch.Generator().manual_seed(0)
    kwargs = dict(optimizer=optimizer, scheduler=None, loss_fn=nn.BCEWithLogitsLoss(), augment=augment, batch_size=batch, generator=gen, bf16=bf16)
    train_one_epoch(step_model, feeder, positions[: batch * 3], max_batches=3, **kwargs)  # warm-up (cudnn autotune, compile)
    return train_one_epoch(step_model, feeder, positions[batch * 3 :], max_batches=steps, **kwargs)["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (both sides)")
    ap.add_argument("--rounds", type=int, default=2, help="alternate real/bound this many times (noise)")
    args = ap.parse_args()
    root, device = voc_root(args.voc_root), torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ids = jpeg_ids(root)
    print(f"machine: {machine()}")
    print(f"ResNet-50, {args.size} px, batch {args.batch}, {args.steps} steps per measurement, device {device}, compile={args.compile}")
    cache_dir = Path(tempfile.mkdtemp(prefix="vocfleet-bench-cache-"))
    try:
        decoded = decoded_cache(root, ids, args.size, cache_dir)
        labels = (np.random.default_rng(0).random(int(decoded.ok.sum())) < 0.15).astype(np.float32)
        split = SplitData(decoded, np.flatnonzero(decoded.ok), labels)
        feeder = BatchFeeder(split, device)
        x0, y0 = feeder.batch(np.arange(args.batch))
        static = RepeatFeeder(preprocess_eval(x0), y0)  # preprocessed already: the model alone
        # On a GPU the sample fits in its memory and is uploaded once; a split too large for that
        # is fed batch by batch through pinned host memory: measure that way too.
        host = BatchFeeder(split, device, upload=False) if feeder.on_device is not None else None
        torch.manual_seed(0)
        model = build_model("scratch").to(device)
        real, bound, real_host, real_fp32 = [], [], [], []
        fp32_too = device.type == "cpu" and bf16_training(device)
        for _ in range(args.rounds):
            if fp32_too:
                real_fp32.append(run(model, feeder, TrainAugment(reuse_output=True), args.steps, args.batch, device, args.compile, bf16=False))
            real.append(run(model, feeder, TrainAugment(reuse_output=True), args.steps, args.batch, device, args.compile))
            bound.append(run(model, static, lambda x, g: x, args.steps, args.batch, device, args.compile))
            if host is not None:
                real_host.append(run(model, host, TrainAugment(reuse_output=True), args.steps, args.batch, device, args.compile))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    r, b = float(np.median(real)), float(np.median(bound))
    where = "split on the device" if feeder.on_device is not None else "pinned host batches" if device.type == "cuda" else "host memory"
    rows = [(f"real training (cache + augmentation + model; {where})", f"{r:,.1f}", f"{r / b:.2f}")]
    if real_host:
        rows.append(("real training (pinned host batches, non-blocking copies)", f"{np.median(real_host):,.1f}", f"{np.median(real_host) / b:.2f}"))
    rows.append(("model alone on a batch already on the device", f"{b:,.1f}", "1.00"))
    if real_fp32:
        rows.append(("real training in float32 (bfloat16 autocast off)", f"{np.median(real_fp32):,.1f}", f"{np.median(real_fp32) / b:.2f}"))
    print(table(rows, ("measurement", "images/s", "of model-only")))
    if real_fp32:
        print(f"bfloat16 autocast vs float32 on this CPU: {r / np.median(real_fp32):.2f}x")
    print(f"train images/s: {r:,.1f}")
    print(f"training efficiency (real / model-only): {r / b:.2f}")


if __name__ == "__main__":
    main()
