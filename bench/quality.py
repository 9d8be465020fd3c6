"""Detector quality at a fixed budget: the origin's recipe ported plainly vs vocfleet's defaults.

With --folds K, every image of the training split is evaluated exactly once: K jobs per recipe
and class, each evaluated on one fold (stratified by label, ``--eval-split fold:F/K``, seed F
varied per fold) and trained on the rest, through the product's own training and evaluation. It
reports the pooled AP (every fold's evaluation probabilities ranked together), the per-fold AP
(mean, spread and range) and each recipe's pooled AP against the origin's.

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
    "vocfleet, batch 32": dict(batch_size=32),
    "vocfleet, batch 128": dict(batch_size=128),
    "vocfleet, lr 1e-3": dict(lr=1e-3),
    "vocfleet, lr 4e-3": dict(lr=4e-3),
    "vocfleet with label smoothing 0.1": dict(label_smoothing=0.1),
    "vocfleet with mixup 0.2": dict(mixup=0.2),
}


def chosen_recipes(only: list[str] | None) -> list[tuple[str, dict]]:
    """The recipes whose names start with one of ``only``, in the order ``only`` names them (every recipe without it)."""
    if not only:
        return list(RECIPES.items())
    return [(name, RECIPES[name]) for prefix in only for name in RECIPES if name.startswith(prefix)]


def recipe_config(args: argparse.Namespace, root: Path, voc_class: str, seed: int, overrides: dict) -> TrainConfig:
    """A recipe's settings at the run's size, epochs, batch and device."""
    settings = {"image_size": args.size, "epochs": args.epochs, "batch_size": args.batch, "seed": seed, "device": args.device, **overrides}
    return TrainConfig(voc_class=voc_class, voc_root=str(root), **settings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--voc-class", default="car", help="one class; --classes runs several")
    ap.add_argument("--classes", default=None, help="comma-separated classes, or 'all': mean AP over them (mAP) per recipe and seed")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per recipe and seed; the table shows mean and spread")
    ap.add_argument("--only", nargs="*", help="run only recipes whose name starts with one of these, in this order")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--folds", type=int, default=0, help="K-fold over the training split (each image evaluated once); 0: the fixed 25%% hold-out")
    args = ap.parse_args()
    if args.folds:
        folds(args)
        return
    root = voc_root(args.voc_root)
    classes = list(VOC_CLASSES) if args.classes == "all" else (args.classes.split(",") if args.classes else [args.voc_class])
    print(f"machine: {machine()}")
    print(f"classes {','.join(classes)}, {args.size} px, {args.epochs} epochs, batch {args.batch}, seeds {args.seeds}, from scratch, device {args.device}")
    work = Path(tempfile.mkdtemp(prefix="vocfleet-quality-"))
    results: dict[str, list[dict]] = {}
    try:
        for name, overrides in chosen_recipes(args.only):
            for seed in args.seeds:
                per_class = []
                for voc_class in classes:
                    cfg = recipe_config(args, root, voc_class, seed, overrides)
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


def folds(args: argparse.Namespace) -> None:
    """Every recipe and class over K folds: pooled AP, per-fold spread, time."""
    import torch

    from vocfleet.model.engine import evaluate, resolve_device
    from vocfleet.model.metrics import average_precision, roc_auc
    from vocfleet.model.net import detector_model
    from vocfleet.model.splits import prepare_splits

    root = voc_root(args.voc_root)
    classes = list(VOC_CLASSES) if args.classes == "all" else (args.classes.split(",") if args.classes else [args.voc_class])
    k = args.folds
    print(f"machine: {machine()}")
    print(f"{k}-fold, classes {','.join(classes)}, {args.size} px, {args.epochs} epochs, batch {args.batch}, seed = fold, from scratch, device {args.device}")
    work = Path(tempfile.mkdtemp(prefix="vocfleet-folds-"))
    device = resolve_device(args.device)
    rows = []
    pooled_of: dict[tuple[str, str], float] = {}
    try:
        for name, overrides in chosen_recipes(args.only):
            for voc_class in classes:
                probs, labels, fold_aps, seconds = [], [], [], 0.0
                for fold in range(k):
                    cfg = recipe_config(args, root, voc_class, fold, {**overrides, "eval_split": f"fold:{fold}/{k}"})
                    t = time.perf_counter()
                    result = fit(cfg, out_dir=work / f"{len(rows)}-{voc_class}-{fold}", cache_dir=work / "cache")
                    seconds += time.perf_counter() - t
                    _, _, evaluation, _ = prepare_splits(cfg, work / "cache")
                    model = detector_model(torch.load(result.checkpoint, weights_only=True)).to(device)
                    p = evaluate(model, evaluation, device)["probs"]
                    if abs(average_precision(p, evaluation.labels) - result.metrics["ap"]) > 0.005:  # the detector fit reported on, scored again
                        print(f"warning: fold {fold}: AP {average_precision(p, evaluation.labels):.3f} scored again, {result.metrics['ap']:.3f} reported")
                    probs.append(p)
                    labels.append(evaluation.labels)
                    fold_aps.append(result.metrics["ap"])
                    where = f"{len(p)} images ({int(evaluation.labels.sum())} positives)"
                    print(f"{name}, {voc_class}, fold {fold}/{k}: AP {result.metrics['ap']:.3f} on {where}", flush=True)
                all_p, all_l = np.concatenate(probs), np.concatenate(labels)
                pooled = average_precision(all_p, all_l)
                pooled_of[(name, voc_class)] = pooled
                v = np.array(fold_aps)
                rows.append(
                    [
                        name,
                        voc_class,
                        f"{len(all_p)} ({int(all_l.sum())})",
                        f"{pooled:.3f}",
                        f"{roc_auc(all_p, all_l):.3f}",
                        f"{v.mean():.3f} ± {v.std(ddof=1):.3f}",
                        f"{v.min():.3f}-{v.max():.3f}",
                        f"{seconds / 60:.1f} min",
                    ]
                )
                print(f"{name}, {voc_class}: " + ", ".join(rows[-1][2:]), flush=True)  # kept if a long grid is stopped early
    finally:
        shutil.rmtree(work, ignore_errors=True)
    origin = {c: ap for (n, c), ap in pooled_of.items() if n.startswith("origin")}
    for row in rows:
        row.insert(4, f"{float(row[3]) / origin[row[1]]:.2f}x" if row[1] in origin else "-")
    heads = ("recipe", "class", "evaluated (positives)", "pooled AP", "vs origin", "pooled AUC", "per-fold AP (mean ± sd)", "per-fold range", "compute")
    print(table([tuple(r) for r in rows], heads))


if __name__ == "__main__":
    main()
