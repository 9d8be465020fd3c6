"""The fine-tune after a shared start, at other learning rates: one fold's start.pt, each class fine-tuned through the product's ``fit``.

``bench/shared_start.py`` trains a start per fold and fine-tunes at the default rate; its fold-0 rows
showed the start's own head ahead of the fine-tune on five classes of six. This script takes a
start it trained (``--start`` a copy of ``start.pt``, ``--fold`` its fold) and fine-tunes the same
classes with the same settings at each of ``--lrs``, beside the start's head alone, saving every
evaluation probability (``--out``); ``--combine`` pools saved folds into one table (pooled AP per
class, per-fold mean and spread of the mean over classes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import machine, table, voc_root

from vocfleet.model import VOC_CLASSES
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import evaluate, fit, resolve_device
from vocfleet.model.metrics import average_precision
from vocfleet.model.net import SelectLogit, build_model
from vocfleet.model.splits import prepare_splits


def run(args: argparse.Namespace) -> None:
    root, device = voc_root(args.voc_root), resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="vocfleet-ft-"))
    start_net = build_model(args.start, outputs=len(VOC_CLASSES), arch=args.arch).to(device)
    out: dict = {"fold": args.fold, "classes": {}}
    print(f"machine: {machine()}")
    for c in args.classes.split(","):
        cfg = TrainConfig(
            voc_class=c, voc_root=str(root), image_size=args.size, batch_size=args.batch, eval_split=f"fold:{args.fold}/{args.folds}",
            fold_by="image", seed=args.fold, device=args.device, epochs=args.epochs, start="bench", arch=args.arch, max_batches=args.max_batches,
        )  # fmt: skip
        _, _, evaluation, _ = prepare_splits(cfg, work / "cache")
        got = {
            "labels": evaluation.labels.tolist(),
            "start alone": evaluate(SelectLogit(start_net, VOC_CLASSES.index(c)), evaluation, device)["probs"].tolist(),
        }
        for lr in args.lrs:
            r = fit(cfg.with_(lr=lr), out_dir=work / f"{c}-{lr}", cache_dir=work / "cache", start_weights=Path(args.start))
            got[f"lr {lr:g}"] = evaluate(build_model(r.checkpoint, arch=args.arch).to(device), evaluation, device)["probs"].tolist()
        out["classes"][c] = got
        aps = {k: average_precision(np.array(v), evaluation.labels) for k, v in got.items() if k != "labels"}
        print(f"fold {args.fold}, {c}: " + ", ".join(f"{k} {v:.3f}" for k, v in aps.items()), flush=True)
    Path(args.out).write_text(json.dumps(out))


def combine(paths: list[str]) -> None:
    folds = [json.loads(Path(p).read_text()) for p in paths]
    classes = list(folds[0]["classes"])
    recipes = [k for k in folds[0]["classes"][classes[0]] if k != "labels"]
    rows = []
    for recipe in recipes:
        pooled = []
        for c in classes:
            probs = np.concatenate([f["classes"][c][recipe] for f in folds])
            labels = np.concatenate([f["classes"][c]["labels"] for f in folds])
            pooled.append(average_precision(probs, labels))
        means = np.array([np.mean([average_precision(np.array(f["classes"][c][recipe]), np.array(f["classes"][c]["labels"])) for c in classes]) for f in folds])
        spread = f"{means.mean():.3f} ± {means.std(ddof=1):.3f}" if len(folds) > 1 else f"{means.mean():.3f}"
        rows.append((recipe, f"{np.mean(pooled):.3f}", spread, " ".join(f"{c} {a:.3f}" for c, a in zip(classes, pooled, strict=True))))
    print(f"folds {[f['fold'] for f in folds]}")
    print(table(rows, ("recipe", "mean pooled AP", "per-fold mean AP (mean ± sd)", "pooled AP per class")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--start", help="a start.pt trained on this fold by bench/shared_start.py (same size, seed = fold)")
    ap.add_argument("--fold", type=int)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--classes", default="car,dog,person,cat,bird,chair")
    ap.add_argument("--lrs", type=float, nargs="+", default=[2e-4])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--max-batches", type=int, default=None, help="smoke runs only")
    ap.add_argument("--out", default="finetune.json")
    ap.add_argument("--combine", nargs="*", help="saved --out files: one table over their folds")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine)
    else:
        run(args)


if __name__ == "__main__":
    main()
