"""Detector quality at a fixed budget: the origin's recipe ported plainly vs vocfleet's defaults.

Same class, image size, epochs, seed and evaluation images for every recipe; prints evaluation
AP, accuracy beside "always absent", and each recipe's AP as a ratio of the origin's.
The origin (a blog post): ResNet-50 from scratch, random scale/flip/rotate, no class balancing,
plain SGD at a constant learning rate, torchvision's default initialisation.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import machine, table, voc_root

from model.config import TrainConfig
from model.engine import fit

RECIPES = {
    "origin (SGD, constant LR, no balancing)": dict(
        optimizer="sgd", lr=0.01, weight_decay=1e-4, schedule="constant", balance="none", zero_init_residual=False
    ),
    "vocfleet default (AdamW, one-cycle, pos_weight, zero-init residuals)": dict(),
    "vocfleet without zero-init residuals": dict(zero_init_residual=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--voc-class", default="car")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="run only recipes whose name starts with one of these")
    args = ap.parse_args()
    root = voc_root(args.voc_root)
    print(f"machine: {machine()}")
    print(f"class {args.voc_class}, {args.size} px, {args.epochs} epochs, batch {args.batch}, seed {args.seed}, from scratch")
    work = Path(tempfile.mkdtemp(prefix="vocfleet-quality-"))
    rows, origin_ap = [], None
    try:
        for name, overrides in RECIPES.items():
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            cfg = TrainConfig(voc_class=args.voc_class, voc_root=str(root), image_size=args.size, epochs=args.epochs,
                              batch_size=args.batch, seed=args.seed, **overrides)
            t = time.perf_counter()
            r = fit(cfg, out_dir=work / str(len(rows)), cache_dir=work / "cache")
            m = r["metrics"]
            origin_ap = m["ap"] if name.startswith("origin") else origin_ap
            rows.append((name, f"{m['ap']:.3f}", f"{m['ap11']:.3f}", f"{m['auc']:.3f}", f"{m['accuracy']:.3f}",
                         f"{m['baseline_accuracy']:.3f}", f"{m['ap'] / origin_ap:.2f}x" if origin_ap else "-",
                         f"{time.perf_counter() - t:.0f}s"))
            print(f"{name}: AP {m['ap']:.3f} on {m['images']} {m['split']} images ({m['positives']} positives)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, ("recipe", "AP", "AP 11-pt", "AUC", "accuracy", "always absent", "AP vs origin", "time")))


if __name__ == "__main__":
    main()
