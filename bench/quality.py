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
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import machine, table, voc_root

from vocfleet.model import VOC_CLASSES
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import FitResult, fit

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
    "vocfleet with stochastic depth 0.05": dict(drop_path=0.05),
    # 64 px at 5 epochs: 32-56 px for 7 epochs and 64 for the last, 4.7 epochs' worth of pixels, about the default's compute.
    "vocfleet with progressive resizing from half size, 8 epochs": dict(progressive_resize=0.5, epochs=8),
    # "start": a first job with these settings (all 20 labels of the same training images), whose
    # network the class's job then starts from (--init its detector.pt): what a 20-label shared start
    # (--init fleet) would give, without leaking the evaluation fold. Twice one job's compute for one
    # class; a fleet would train the start once for all 20 classes (1.05x).
    "vocfleet from a 20-label start (an --aux-classes job first)": dict(start=dict(aux_classes=True)),
}


def chosen_recipes(only: list[str] | None) -> list[tuple[str, dict]]:
    """The recipes whose names start with one of ``only``, in the order ``only`` names them (every recipe without it)."""
    if not only:
        return list(RECIPES.items())
    return [(name, RECIPES[name]) for prefix in only for name in RECIPES if name.startswith(prefix)]


def recipe_config(args: argparse.Namespace, root: Path, voc_class: str, seed: int, overrides: dict) -> TrainConfig:
    """A recipe's settings at the run's size, epochs, batch and device (its ``start``, if any, aside)."""
    settings = {"image_size": args.size, "epochs": args.epochs, "batch_size": args.batch, "seed": seed, "device": args.device, **overrides}
    settings.pop("start", None)
    return TrainConfig(voc_class=voc_class, voc_root=str(root), **settings)


def start_dir(out_dir: Path) -> Path:
    """Where a recipe's ``start`` job writes, beside its class's job."""
    return out_dir.with_name(out_dir.name + "-start")


def fit_recipe(cfg: TrainConfig, out_dir: Path, cache_dir: Path, start: dict | None = None) -> FitResult:
    """``fit(cfg)``; with ``start``, first a job of ``cfg`` changed by ``start``, whose detector the job starts from."""
    if start:
        first = fit(replace(cfg, **start), out_dir=start_dir(out_dir), cache_dir=cache_dir)
        cfg = replace(cfg, init=first.checkpoint)
    return fit(cfg, out_dir=out_dir, cache_dir=cache_dir)


def fit_one(cfg: TrainConfig, out_dir: Path, cache_dir: Path, start: dict | None = None, threads: int = 0) -> dict:
    """One detector trained and judged through the product's ``fit``: its metrics and seconds; its checkpoints deleted."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    t = time.perf_counter()
    m = fit_recipe(cfg, out_dir, cache_dir, start).metrics
    m["seconds"] = time.perf_counter() - t
    for folder in (out_dir, start_dir(out_dir)):
        shutil.rmtree(folder, ignore_errors=True)  # at 224 px a run's checkpoints are over half a gigabyte
    return m


def fit_all(runs: list[tuple[TrainConfig, Path, Path, dict | None]], workers: int, time_limit: float | None) -> Iterator[dict]:
    """Each run's metrics, in order, ``workers`` fits at a time on the one device (separate processes).

    No fit starts once ``time_limit`` seconds have passed; the ones running finish, the rest are not yielded.
    """
    start = time.perf_counter()

    def in_time() -> bool:
        return time_limit is None or time.perf_counter() - start < time_limit

    if workers <= 1:
        for run in runs:
            if not in_time():
                return
            yield fit_one(*run)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures: list[Future] = []
        for run in runs:
            if len(futures) - sum(f.done() for f in futures) >= workers:  # every process busy: wait for one
                wait([f for f in futures if not f.done()], return_when=FIRST_COMPLETED)
            while futures and futures[0].done():
                yield futures.pop(0).result()
            if not in_time():
                break
            futures.append(pool.submit(fit_one, *run, threads))
        for f in futures:
            yield f.result()


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
    ap.add_argument("--workers", type=int, default=1, help="fits at a time on the one device, each in its own process")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds after which no fit starts; the table covers the classes every recipe finished")
    ap.add_argument("--folds", type=int, default=0, help="K-fold over the training split (each image evaluated once); 0: the fixed 25%% hold-out")
    args = ap.parse_args()
    if args.folds:
        folds(args)
        return
    root = voc_root(args.voc_root)
    classes = list(VOC_CLASSES) if args.classes == "all" else (args.classes.split(",") if args.classes else [args.voc_class])
    recipes = chosen_recipes(args.only)
    print(f"machine: {machine()}")
    print(
        f"classes {','.join(classes)}, {args.size} px, {args.epochs} epochs, batch {args.batch}, seeds {args.seeds}, from scratch, "
        f"device {args.device}, {args.workers} fit(s) at a time"
    )
    # Class by class, every recipe of a class next to each other: a run stopped by --time-limit still
    # compares the recipes on the same classes.
    plan = [(name, overrides, seed, c) for seed in args.seeds for c in classes for name, overrides in recipes]
    work = Path(tempfile.mkdtemp(prefix="vocfleet-quality-"))
    done: dict[tuple[str, int], dict[str, dict]] = {}
    try:
        configs = [recipe_config(args, root, c, seed, overrides) for _, overrides, seed, c in plan]
        runs = [(cfg, work / f"{i}-{cfg.voc_class}", work / "cache", p[1].get("start")) for i, (cfg, p) in enumerate(zip(configs, plan, strict=True))]
        for (name, _, seed, voc_class), m in zip(plan, fit_all(runs, args.workers, args.time_limit), strict=False):
            done.setdefault((name, seed), {})[voc_class] = m
            where = f"{m['images']} {m['split']} images ({m['positives']} positives)"
            print(f"{name}, seed {seed}, {voc_class}: AP {m['ap']:.3f} AUC {m['auc']:.3f} on {where} ({m['seconds']:.0f}s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finished = [c for c in classes if all(c in done.get((name, seed), {}) for name, _ in recipes for seed in args.seeds)]
    if len(finished) < len(classes):
        left = f"({len(finished)} of {len(classes)}): {','.join(finished) or 'none'}"
        print(f"--time-limit reached: the table covers the classes every recipe and seed finished {left}")
    if not finished:
        return
    # One entry per recipe and seed: each metric averaged over the classes (AP: mAP), seconds summed.
    results: dict[str, list[dict]] = {}
    for name, _ in recipes:
        for seed in args.seeds:
            per_class = [done[(name, seed)][c] for c in finished]
            mean = {k: float(np.mean([m[k] for m in per_class])) for k in ("ap", "ap11", "auc", "accuracy", "baseline_accuracy")}
            results.setdefault(name, []).append({**mean, "seconds": sum(m["seconds"] for m in per_class)})

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
        "AP" if len(finished) == 1 else f"mAP ({len(finished)} classes)",
        "AP 11-pt",
        "AUC",
        "accuracy",
        "always absent",
        "mean AP vs origin",
        "fit time per seed",
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
                    result = fit_recipe(cfg, work / f"{len(rows)}-{voc_class}-{fold}", work / "cache", overrides.get("start"))
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
