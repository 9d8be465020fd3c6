"""Detector quality at a fixed budget: the origin's recipe ported plainly vs vocfleet's defaults.

Same class (or classes: --classes car,dog or all, giving mAP), image size, epochs, seeds and
evaluation images for every recipe; prints evaluation AP, accuracy beside "always absent", and
each recipe's AP as a ratio of the origin's, as mean and sd over seeds.
The origin (a blog post): ResNet-50 from scratch, random scale/flip/rotate, no class balancing,
plain SGD at a constant learning rate, torchvision's default initialisation.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, table, voc_root

from vocfleet.model import VOC_CLASSES
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import fit

RECIPES = {
    "origin (SGD, constant LR, no balancing)": dict(
        optimizer="sgd", lr=0.01, weight_decay=1e-4, schedule="constant", balance="none", zero_init_residual=False, ema=0.0
    ),
    "vocfleet default (AdamW, one-cycle, balanced sampler, zero-init residuals, EMA 0.95)": dict(),
    "vocfleet with pos_weight instead of the sampler (the 0.3 default)": dict(balance="pos_weight"),
    "vocfleet without EMA": dict(ema=0.0),
    "vocfleet without zero-init residuals": dict(zero_init_residual=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--voc-class", default="car", help="one class; --classes runs several")
    ap.add_argument("--classes", default=None, help="comma-separated classes, or 'all': mean AP over them (mAP) per recipe and seed")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per recipe and seed; the table shows mean and spread")
    ap.add_argument("--only", nargs="*", help="run only recipes whose name starts with one of these")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    root = voc_root(args.voc_root)
    classes = list(VOC_CLASSES) if args.classes == "all" else (args.classes.split(",") if args.classes else [args.voc_class])
    print(f"machine: {machine()}")
    print(f"classes {','.join(classes)}, {args.size} px, {args.epochs} epochs, batch {args.batch}, seeds {args.seeds}, from scratch, device {args.device}")
    work = Path(tempfile.mkdtemp(prefix="vocfleet-quality-"))
    results: dict[str, list[dict]] = {}
    try:
        for name, overrides in RECIPES.items():
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            for seed in args.seeds:
                per_class = []
                for voc_class in classes:
                    cfg = TrainConfig(
                        voc_class=voc_class,
                        voc_root=str(root),
                        image_size=args.size,
                        epochs=args.epochs,
                        batch_size=args.batch,
                        seed=seed,
                        device=args.device,
                        **overrides,
                    )
                    t = time.perf_counter()
                    m = fit(cfg, out_dir=work / f"{len(results)}-{seed}-{voc_class}", cache_dir=work / "cache").metrics
                    m["seconds"] = time.perf_counter() - t
                    per_class.append(m)
                    where = f"{m['images']} {m['split']} images ({m['positives']} positives)"
                    print(f"{name}, seed {seed}, {voc_class}: AP {m['ap']:.3f} AUC {m['auc']:.3f} on {where}", flush=True)
                # One entry per seed: each metric averaged over the classes (AP: mAP), seconds summed.
                mean = {k: float(np.mean([m[k] for m in per_class])) for k in ("ap", "ap11", "auc", "accuracy", "baseline_accuracy")}
                results.setdefault(name, []).append({**mean, "seconds": sum(m["seconds"] for m in per_class)})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def stat(runs: list[dict], key: str) -> str:
        v = np.array([r[key] for r in runs])
        return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")

    origin = next((np.mean([r["ap"] for r in runs]) for name, runs in results.items() if name.startswith("origin")), None)
    rows = [
        (
            name,
            len(runs),
            stat(runs, "ap"),
            stat(runs, "ap11"),
            stat(runs, "auc"),
            stat(runs, "accuracy"),
            f"{runs[0]['baseline_accuracy']:.3f}",
            f"{np.mean([r['ap'] for r in runs]) / origin:.2f}x" if origin else "-",
            f"{np.mean([r['seconds'] for r in runs]):.0f}s",
        )
        for name, runs in results.items()
    ]
    heads = (
        "recipe",
        "seeds",
        "AP" if len(classes) == 1 else f"mAP ({len(classes)} classes)",
        "AP 11-pt",
        "AUC",
        "accuracy",
        "always absent",
        "mean AP vs origin",
        "time per seed",
    )
    print(table(rows, heads))


if __name__ == "__main__":
    main()
