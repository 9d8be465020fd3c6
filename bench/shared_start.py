"""A shared start against independent fits, at equal fleet compute, over image-level folds.

Independent: each class's detector trained from scratch for ``--epochs`` (the product as it was).
Shared start: one network trained on all 20 labels of the same training pictures for
``--start-epochs``, then each class's detector fine-tuned from it for ``--finetune-epochs``.
Both through the product's own ``fit_start`` and ``fit``. Fleet compute is the pictures trained
over every job that serves the ``--fleet-classes`` classes (20: the product's fleet): independent
``20 x per-class``, shared ``start + 20 x per-class fine-tune``; the script prints both and
refuses to compare when they differ by more than 10%.

Folds are cut by image (``--fold-by image``): the same evaluation pictures for every class and
recipe, never seen by the start. Reports per class the pooled AP over the folds (every picture
evaluated once), the per-fold mean and spread, and the mean over the classes, beside the start's
own head evaluated as a detector (no fine-tune).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, table, voc_root

from vocfleet.model import VOC_CLASSES
from vocfleet.model.config import START_CLASS, TrainConfig
from vocfleet.model.engine import evaluate, fit, fit_start, resolve_device
from vocfleet.model.metrics import average_precision, roc_auc
from vocfleet.model.net import SelectLogit, build_model
from vocfleet.model.splits import prepare_splits


def images_trained(history) -> float:
    return sum(r.images_per_s * r.seconds for r in history)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--classes", default="car,dog,person,cat,bird,chair", help="comma-separated, or 'all'")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--only-folds", type=int, nargs="*", help="run these folds only (the table then pools those)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="independent fits: epochs per class")
    ap.add_argument("--start-epochs", type=int, default=20)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--fleet-classes", type=int, default=20, help="classes the fleet serves: the start is paid once for them all")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--max-batches", type=int, default=None, help="smoke runs only")
    args = ap.parse_args()
    root = voc_root(args.voc_root)
    classes = list(VOC_CLASSES) if args.classes == "all" else args.classes.split(",")
    folds = args.only_folds if args.only_folds else list(range(args.folds))
    device = resolve_device(args.device)
    print(f"machine: {machine()}")
    print(
        f"{args.folds}-fold by image (folds {folds}), classes {','.join(classes)}, {args.size} px, batch {args.batch}; independent {args.epochs} epochs "
        f"per class; start {args.start_epochs} epochs + {args.finetune_epochs} per class; fleet of {args.fleet_classes} classes",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="vocfleet-start-"))
    cache = work / "cache"
    recipes = ("independent", "start alone (its head)", "start + fine-tune")
    probs = {(r, c): [] for r in recipes for c in classes}
    labels = {c: [] for c in classes}
    fold_ap = {(r, c): [] for r in recipes for c in classes}
    cost = {r: [] for r in recipes}  # fleet images per fold
    secs = {r: 0.0 for r in recipes}
    try:
        for fold in folds:
            common = dict(
                voc_root=str(root), image_size=args.size, batch_size=args.batch, eval_split=f"fold:{fold}/{args.folds}", fold_by="image",
                seed=fold, device=args.device, arch=args.arch, max_batches=args.max_batches,
            )  # fmt: skip
            t = time.perf_counter()
            start = fit_start(
                TrainConfig(voc_class=START_CLASS, epochs=args.start_epochs, balance="none", **common), out_dir=work / f"start{fold}", cache_dir=cache
            )
            start_seconds = time.perf_counter() - t
            learned = f"val mAP {start.metrics['map']:.3f} over {len(start.metrics['class_ap'])} classes"
            print(f"fold {fold}: start {learned} ({start_seconds / 60:.1f} min)", flush=True)
            start_net = build_model(start.checkpoint, outputs=len(VOC_CLASSES), arch=args.arch).to(device)
            per_class = {r: [] for r in recipes}
            for c in classes:
                cfg = TrainConfig(voc_class=c, epochs=args.epochs, **common)
                _, _, evaluation, _ = prepare_splits(cfg, cache)
                labels[c].append(evaluation.labels)
                t = time.perf_counter()
                ind = fit(cfg, out_dir=work / f"ind{fold}-{c}", cache_dir=cache)
                secs["independent"] += time.perf_counter() - t
                t = time.perf_counter()
                ft = fit(
                    cfg.with_(epochs=args.finetune_epochs, start="bench"), out_dir=work / f"ft{fold}-{c}", cache_dir=cache, start_weights=Path(start.checkpoint)
                )
                secs["start + fine-tune"] += time.perf_counter() - t
                alone = evaluate(SelectLogit(start_net, VOC_CLASSES.index(c)), evaluation, device)["probs"]
                for recipe, p, history in (
                    ("independent", ind, ind.history),
                    ("start + fine-tune", ft, ft.history),
                    ("start alone (its head)", alone, []),
                ):
                    p = evaluate(build_model(p.checkpoint, arch=args.arch).to(device), evaluation, device)["probs"] if recipe != "start alone (its head)" else p
                    probs[(recipe, c)].append(p)
                    fold_ap[(recipe, c)].append(average_precision(p, evaluation.labels))
                    per_class[recipe].append(images_trained(history))
                print(
                    f"fold {fold}, {c}: AP independent {fold_ap[('independent', c)][-1]:.3f}, start alone {fold_ap[('start alone (its head)', c)][-1]:.3f}, "
                    f"start + fine-tune {fold_ap[('start + fine-tune', c)][-1]:.3f} ({len(evaluation)} pictures, {int(evaluation.labels.sum())} positives)",
                    flush=True,
                )
            start_images = images_trained(start.history)
            secs["start alone (its head)"] += start_seconds
            secs["start + fine-tune"] += start_seconds
            cost["independent"].append(args.fleet_classes * np.mean(per_class["independent"]))
            cost["start alone (its head)"].append(start_images)
            cost["start + fine-tune"].append(start_images + args.fleet_classes * np.mean(per_class["start + fine-tune"]))
            for name in ("ind", "ft", "start"):
                for d in work.glob(f"{name}{fold}*"):
                    shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for recipe in recipes:
        pooled = [average_precision(np.concatenate(probs[(recipe, c)]), np.concatenate(labels[c])) for c in classes]
        aucs = [roc_auc(np.concatenate(probs[(recipe, c)]), np.concatenate(labels[c])) for c in classes]
        fold_means = np.array([np.mean([fold_ap[(recipe, c)][i] for c in classes]) for i in range(len(folds))])
        spread = f"{fold_means.mean():.3f} ± {fold_means.std(ddof=1):.3f}" if len(folds) > 1 else f"{fold_means.mean():.3f}"
        per = " ".join(f"{c} {a:.3f}" for c, a in zip(classes, pooled, strict=True))
        rows.append(
            (recipe, f"{np.mean(pooled):.3f}", f"{np.mean(aucs):.3f}", spread, per, f"{np.mean(cost[recipe]) / 1e3:.0f}k", f"{secs[recipe] / 60:.0f} min")
        )
    heads = (
        "recipe",
        "mean pooled AP",
        "mean AUC",
        "per-fold mean AP (mean ± sd)",
        "pooled AP per class",
        f"fleet images per fold ({args.fleet_classes} classes)",
        "time here",
    )
    print(table(rows, heads))
    ratio = np.mean(cost["start + fine-tune"]) / np.mean(cost["independent"])
    print(f"fleet compute, start + fine-tune / independent: {ratio:.2f}" + ("" if 0.9 <= ratio <= 1.1 else " (NOT equal compute: change --start-epochs)"))
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
