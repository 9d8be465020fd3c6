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

``--eval-sizes 80 96`` also evaluates every detector on the same pictures decoded at those sizes
(a network trained at ``--size`` run on larger pictures: FixRes, Touvron et al. 2019), each as its
own recipe ``... [eval N px]``; ``--finetune-size N`` fine-tunes each class at N px from a start
trained at ``--size`` (FixRes's adaptation at the test resolution; fleet compute still counts
pictures, not pixels). ``--finetune-set KEY=VALUE`` changes the fine-tunes' settings as
``--start-set`` the start's. ``--reuse-starts DIR`` takes each fold's start from ``--keep-starts
DIR`` instead of training it (its pictures as the run that trained it counted them, its time as
none). ``--combine ... --mean-of A B`` adds the mean of two saved recipes.

``--pretext-epochs N`` first pretrains the start's network without labels on the start's own
training pictures (SimCLR, bench/pretext.py), each picture seen twice per epoch and counted so.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from dataclasses import MISSING, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from common import machine, table, voc_root

from vocfleet.model import VOC_CLASSES
from vocfleet.model.checkpoint import load_checkpoint
from vocfleet.model.config import START_CLASS, TrainConfig
from vocfleet.model.engine import evaluate, fit, fit_start, resolve_device
from vocfleet.model.files import write_bytes
from vocfleet.model.metrics import average_precision, roc_auc
from vocfleet.model.net import SelectLogit, build_model
from vocfleet.model.splits import prepare_splits, prepare_start_splits
from vocfleet.scheduler.progress import TrainProgress


def images_trained(history) -> float:
    return sum(r.images_per_s * r.seconds for r in history)


def with_totals(got: dict, per_class: dict, sizes: list[int], fleet_classes: int, start_seconds: float, start_images: float) -> dict:
    """A fold as saved: each recipe's fleet pictures (``fleet_classes`` x the mean class job's, plus the start
    once for a start's recipes) and seconds, over the classes finished so far."""
    out = {**got, "images": {}, "seconds": dict(got["seconds"])}
    for recipe, jobs in per_class.items():
        shared = recipe != "independent"
        out["images"][recipe] = (fleet_classes * np.mean(jobs) if jobs else 0.0) + (start_images if shared else 0.0)
        out["seconds"][recipe] += start_seconds if shared else 0.0
        for s in sizes:  # the same training; only the evaluation's pictures differ
            out["images"][scored_at(recipe, s)], out["seconds"][scored_at(recipe, s)] = out["images"][recipe], out["seconds"][recipe]
    return out


def table_of(saved: list[dict], fleet_classes: int) -> None:
    """Pool saved folds (each: labels and probabilities per class and recipe, fleet images, seconds) into one table."""
    classes, recipes = list(saved[0]["labels"]), list(saved[0]["probs"])
    rows = []
    for recipe in recipes:

        def pooled(metric, c, recipe=recipe):
            return metric(np.concatenate([f["probs"][recipe][c] for f in saved]), np.concatenate([f["labels"][c] for f in saved]))

        aps, aucs = [pooled(average_precision, c) for c in classes], [pooled(roc_auc, c) for c in classes]
        fold_means = np.array([np.mean([average_precision(np.array(f["probs"][recipe][c]), np.array(f["labels"][c])) for c in classes]) for f in saved])
        spread = f"{fold_means.mean():.3f} ± {fold_means.std(ddof=1):.3f}" if len(saved) > 1 else f"{fold_means.mean():.3f}"
        per = " ".join(f"{c} {a:.3f}/{u:.2f}" for c, a, u in zip(classes, aps, aucs, strict=True))
        images = np.mean([f["images"][recipe] for f in saved])
        minutes = sum(f["seconds"][recipe] for f in saved) / 60
        rows.append((recipe, f"{np.mean(aps):.3f}", f"{np.mean(aucs):.3f}", spread, per, f"{images / 1e3:.0f}k", f"{minutes:.0f} min"))
    heads = ("recipe", "mean pooled AP", "mean AUC", "per-fold mean AP (mean ± sd)", "pooled AP/AUC per class")
    heads += (f"fleet images per fold ({fleet_classes} classes)", "time here")
    print(f"folds {[f['fold'] for f in saved]}")
    print(table(rows, heads))
    if "independent" not in recipes:
        return
    base = np.mean([f["images"]["independent"] for f in saved])
    for recipe in recipes[1:]:
        ratio = np.mean([f["images"][recipe] for f in saved]) / base
        print(f"fleet compute, {recipe} / independent: {ratio:.2f}")


def joined(saved: list[dict]) -> list[dict]:
    """Folds saved by several runs, one entry per fold with every run's recipes (the same fold must have the same labels)."""
    classes = [c for c in saved[0]["labels"] if all(c in f["labels"] for f in saved)]  # a run stopped early saved the classes it finished
    if left := sorted({c for f in saved for c in f["labels"]} - set(classes)):
        print(f"left out, not finished by every run given: {', '.join(left)}")
    by_fold: dict[int, dict] = {}
    for f in saved:
        labels = {c: f["labels"][c] for c in classes}
        into = by_fold.setdefault(f["fold"], {"fold": f["fold"], "labels": labels, "probs": {}, "seconds": {}, "images": {}})
        if into["labels"] != labels:
            raise SystemExit(f"fold {f['fold']}: two runs evaluated different pictures; combine runs of the same split only")
        into["probs"].update({r: {c: p[c] for c in classes} for r, p in f["probs"].items()})
        for key in ("seconds", "images"):
            into[key].update(f[key])
    order = [r for f in saved for r in f["probs"]]
    first = sorted(dict.fromkeys(order), key=lambda r: r != "independent")  # the baseline first: the ratios are against it
    every = [r for r in first if all(r in f["probs"] for f in by_fold.values())]
    if dropped := [r for r in first if r not in every]:
        print(f"left out, not run on every fold given: {'; '.join(dropped)}")
    for f in by_fold.values():
        f["probs"] = {r: f["probs"][r] for r in every}
    return [by_fold[k] for k in sorted(by_fold)]


def labelled(arg: str) -> dict:
    """A fold saved by --save, from ``PATH`` or ``PATH=LABEL``: each recipe named ``LABEL: recipe`` (two runs of one recipe side by side)."""
    path, _, label = arg.partition("=")
    raw = Path(path).read_bytes()
    got = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)  # gzip's magic, whatever the name
    if label:
        for key in ("probs", "seconds", "images"):
            got[key] = {(r if r == "independent" else f"{label}: {r}"): v for r, v in got[key].items()}
    return got


def scored_at(recipe: str, size: int) -> str:
    """The recipe of ``recipe``'s detectors scored on pictures decoded at ``size`` px (``--eval-sizes``)."""
    return f"{recipe} [eval {size} px]"


def mean_of(fold: dict, recipes: list[str]) -> dict:
    """``fold`` and one recipe more: the mean of ``recipes``' probabilities per picture. Its images and
    time are the larger of theirs: right for one detector scored two ways (``--eval-sizes``), an
    undercount for detectors trained apart (their sum)."""
    if missing := [r for r in recipes if r not in fold["probs"]]:
        raise SystemExit(f"--mean-of: fold {fold['fold']} has no recipe {missing[0]!r}; it has {list(fold['probs'])}")
    name = "mean of " + " and ".join(recipes)
    fold["probs"][name] = {c: np.mean([fold["probs"][r][c] for r in recipes], axis=0).tolist() for c in fold["labels"]}
    fold["images"][name] = max(fold["images"][r] for r in recipes)
    fold["seconds"][name] = max(fold["seconds"][r] for r in recipes)
    return fold


def config_setting(kv: str) -> tuple[str, object]:
    """``mixup=0.4`` as ("mixup", 0.4), typed by TrainConfig's field (``--start-set``, ``--finetune-set``)."""
    key, _, value = kv.partition("=")
    kinds = {f.name: str if f.default is MISSING else type(f.default) for f in fields(TrainConfig)}
    if key not in kinds or not value:
        raise SystemExit(f"{kv!r}: use KEY=VALUE with a TrainConfig field, e.g. mixup=0.4")
    kind = kinds[key]
    return key, (value.lower() in ("1", "true", "yes") if kind is bool else kind(value) if kind in (int, float) else value)


def fit_shared(args, start_cfg: TrainConfig, work: Path, cache: Path, fold: int, device: torch.device):
    """One fold's start (after SimCLR with ``--pretext-epochs``): its result, its 20-output network, seconds and pictures trained."""
    t = time.perf_counter()
    pretext_images = 0.0
    if args.pretext_epochs:
        from pretext import simclr

        train, _, _ = prepare_start_splits(start_cfg, cache)
        weights = work / f"pretext{fold}.pt"
        done = simclr(train, weights, arch=args.arch, epochs=args.pretext_epochs, batch=args.batch, seed=fold, device=device, max_batches=args.max_batches)
        pretext_images, losses = done["images"], done["losses"]
        took = f"loss {losses[0]:.3f} -> {losses[-1]:.3f} ({done['seconds'] / 60:.1f} min)"
        print(f"fold {fold}: SimCLR {args.pretext_epochs} epochs on {len(train)} pictures, {took}", flush=True)
        start_cfg = start_cfg.with_(init=str(weights))
    start = fit_start(start_cfg, out_dir=work / f"start{fold}", cache_dir=cache, progress=TrainProgress(f"fold {fold}: start", sys.stdout))
    start_seconds = time.perf_counter() - t
    best = max(start.history, key=lambda r: r.val_ap, default=None)
    learned = f"val mAP {start.metrics['map']:.3f} over {len(start.metrics['class_ap'])} classes"
    learned += f" (best epoch {best.epoch} of {len(start.history)})" if best else ""
    print(f"fold {fold}: start {learned} ({start_seconds / 60:.1f} min)", flush=True)
    start_net = build_model(start.checkpoint, outputs=len(VOC_CLASSES), arch=args.arch).to(device)
    return start, start_net, start_seconds, images_trained(start.history) + pretext_images


def reused_start(args, start_cfg: TrainConfig, fold: int, device: torch.device):
    """``fit_shared``'s answer from a start kept by an earlier run (``--keep-starts``): the same settings,
    the pictures it trained over as that run counted them, no time."""
    path, record = Path(args.reuse_starts, f"start{fold}.pt"), Path(args.reuse_starts, f"start{fold}.json")
    if not (path.is_file() and record.is_file()):
        raise SystemExit(f"--reuse-starts {args.reuse_starts}: no start{fold}.pt and start{fold}.json there; keep them with --keep-starts first")
    kept = TrainConfig.from_dict(load_checkpoint(path)["config"])
    if kept.with_(device=start_cfg.device) != start_cfg:
        pairs = {f.name: (getattr(kept, f.name), getattr(start_cfg, f.name)) for f in fields(TrainConfig)}
        differ = {k: pair for k, pair in pairs.items() if pair[0] != pair[1] and k != "device"}
        raise SystemExit(f"{path}: trained with other settings than asked (kept, asked): {differ}")
    images = json.loads(record.read_text())["images"]
    print(f"fold {fold}: start reused from {path} ({images / 1e3:.0f}k pictures trained, as its run counted)", flush=True)
    start_net = build_model(str(path), outputs=len(VOC_CLASSES), arch=args.arch).to(device)
    return SimpleNamespace(checkpoint=str(path)), start_net, 0.0, float(images)


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
    ap.add_argument("--finetune-lrs", type=float, nargs="+", default=[TrainConfig.lr], help="one fine-tune recipe per learning rate")
    ap.add_argument("--fleet-classes", type=int, default=20, help="classes the fleet serves: the start is paid once for them all")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--max-batches", type=int, default=None, help="smoke runs only")
    ap.add_argument("--save", help="a folder: each fold's labels and probabilities as fold<N>.json.gz (gzip: under half the size in the repository)")
    ap.add_argument("--start-set", nargs="+", default=[], metavar="KEY=VALUE", help="the start's TrainConfig settings (mixup=0.4), named in its recipes")
    ap.add_argument("--finetune-set", nargs="+", default=[], metavar="KEY=VALUE", help="the class fine-tunes' TrainConfig settings, named in their recipes")
    ap.add_argument("--pretext-epochs", type=int, default=0, help="SimCLR on the start's pictures first (bench/pretext.py), the start's init")
    ap.add_argument("--skip-independent", action="store_true", help="the start's recipes only (--combine joins saved independent fits)")
    ap.add_argument("--skip-start", action="store_true", help="the independent fits only (--combine joins saved starts)")
    ap.add_argument("--keep-starts", help="a folder (outside the repository: about 100 MB each): each fold's start as start<N>.pt (+ .json)")
    ap.add_argument("--eval-sizes", type=int, nargs="*", default=[], help="also evaluate each detector on its pictures decoded at these sizes")
    ap.add_argument("--finetune-size", type=int, help="fine-tune each class at this size (default --size); evaluate there with --eval-sizes")
    ap.add_argument("--reuse-starts", help="a --keep-starts folder: each fold's start from start<N>.pt, not trained again")
    ap.add_argument("--mean-of", nargs="+", metavar="RECIPE", help="with --combine: also a recipe whose probabilities are the mean of these saved recipes")
    ap.add_argument("--combine", nargs="+", metavar="FOLD_JSON", help="print the table of folds saved by --save, nothing else (PATH=LABEL: 'LABEL: recipe')")
    args = ap.parse_args()
    if args.skip_start and (args.skip_independent or args.pretext_epochs or args.keep_starts):
        raise SystemExit("--skip-start runs the independent fits alone: drop --skip-independent, --pretext-epochs and --keep-starts")
    if args.reuse_starts and (args.keep_starts or args.pretext_epochs or args.skip_start):
        raise SystemExit("--reuse-starts takes the starts from a folder: drop --keep-starts, --pretext-epochs and --skip-start")
    if args.combine:
        saved = joined([labelled(p) for p in args.combine])
        table_of([mean_of(f, args.mean_of) for f in saved] if args.mean_of else saved, args.fleet_classes)
        return
    start_set = dict(config_setting(kv) for kv in args.start_set)
    finetune_set = dict(config_setting(kv) for kv in args.finetune_set)
    if "lr" in finetune_set:
        raise SystemExit("--finetune-set lr=...: the fine-tunes' rates are --finetune-lrs")
    root = voc_root(args.voc_root)
    classes = list(VOC_CLASSES) if args.classes == "all" else args.classes.split(",")
    folds = args.only_folds if args.only_folds else list(range(args.folds))
    device = resolve_device(args.device)
    print(f"machine: {machine()}")
    independent = "" if args.skip_independent else f"; independent {args.epochs} epochs per class"
    shared = "" if args.skip_start else f"; start {args.start_epochs} epochs + {args.finetune_epochs} per class at lr {args.finetune_lrs}"
    print(
        f"{args.folds}-fold by image (folds {folds}), classes {','.join(classes)}, {args.size} px, batch {args.batch}{independent}{shared}; "
        f"fleet of {args.fleet_classes} classes",
        flush=True,
    )
    named = "start" + (f" [{args.arch}]" if args.arch != "resnet50" else "") + (f" ({' '.join(args.start_set)})" if args.start_set else "")
    named += f" after {args.pretext_epochs} SimCLR epochs" if args.pretext_epochs else ""
    at = f" at {args.finetune_size} px" if args.finetune_size and args.finetune_size != args.size else ""
    at += f" ({' '.join(args.finetune_set)})" if args.finetune_set else ""
    tunes = {f"{named} + fine-tune{at} lr {lr:g}": lr for lr in args.finetune_lrs}
    head = f"{named} alone (its head)"
    trained = (() if args.skip_independent else ("independent",)) + (() if args.skip_start else (head, *tunes))
    sizes = [s for s in args.eval_sizes if s != args.size]
    recipes = trained + tuple(scored_at(r, s) for s in sizes for r in trained)
    work = Path(tempfile.mkdtemp(prefix="vocfleet-start-"))
    cache = work / "cache"
    saved = []
    try:
        for fold in folds:
            common = dict(
                voc_root=str(root), image_size=args.size, batch_size=args.batch, eval_split=f"fold:{fold}/{args.folds}", fold_by="image",
                seed=fold, device=args.device, arch=args.arch, max_batches=args.max_batches,
            )  # fmt: skip
            start, start_net, start_seconds, start_images = None, None, 0.0, 0.0
            if not args.skip_start:
                start_cfg = TrainConfig(voc_class=START_CLASS, epochs=args.start_epochs, balance="none", **common).with_(**start_set)
                fitted = reused_start(args, start_cfg, fold, device) if args.reuse_starts else fit_shared(args, start_cfg, work, cache, fold, device)
                start, start_net, start_seconds, start_images = fitted
            got = {"fold": fold, "labels": {}, "probs": {r: {} for r in recipes}, "seconds": {r: 0.0 for r in recipes}, "images": {}}
            per_class = {r: [] for r in trained}
            for c in classes:
                cfg = TrainConfig(voc_class=c, epochs=args.epochs, **common)
                _, _, evaluation, _ = prepare_splits(cfg, cache)
                got["labels"][c] = evaluation.labels.tolist()
                at_size = {args.size: evaluation} | {s: prepare_splits(cfg.with_(image_size=s), cache)[2] for s in sizes}
                if any(e.labels.tolist() != got["labels"][c] for e in at_size.values()):
                    raise SystemExit(f"fold {fold}, {c}: the pictures decoded at {sizes} px differ from those at {args.size} px")

                def evaluated(net, recipe, c=c, at_size=at_size, got=got):
                    for s, e in at_size.items():
                        got["probs"][recipe if s == args.size else scored_at(recipe, s)][c] = evaluate(net, e, device)["probs"].tolist()

                fits = {} if args.skip_independent else {"independent": (cfg, None)}
                if start is not None:
                    tune_cfg = cfg.with_(epochs=args.finetune_epochs, start="bench", image_size=args.finetune_size or args.size).with_(**finetune_set)
                    fits.update({r: (tune_cfg.with_(lr=lr), Path(start.checkpoint)) for r, lr in tunes.items()})
                for recipe, (run_cfg, weights) in fits.items():
                    t = time.perf_counter()
                    r = fit(run_cfg, out_dir=work / f"fit{fold}-{c}", cache_dir=cache, start_weights=weights)
                    got["seconds"][recipe] += time.perf_counter() - t
                    evaluated(build_model(r.checkpoint, arch=args.arch).to(device), recipe)
                    per_class[recipe].append(images_trained(r.history))
                    shutil.rmtree(work / f"fit{fold}-{c}", ignore_errors=True)
                if start_net is not None:
                    evaluated(SelectLogit(start_net, VOC_CLASSES.index(c)), head)
                aps = ", ".join(f"{r} {average_precision(np.array(got['probs'][r][c]), evaluation.labels):.3f}" for r in recipes)
                print(f"fold {fold}, {c}: AP {aps} ({len(evaluation)} pictures, {int(evaluation.labels.sum())} positives)", flush=True)
                done = with_totals(got, per_class, sizes, args.fleet_classes, start_seconds, start_images)
                if args.save:  # after every class, so that a run stopped by its time limit keeps the classes it finished
                    Path(args.save).mkdir(parents=True, exist_ok=True)
                    write_bytes(Path(args.save, f"fold{fold}.json.gz"), gzip.compress(json.dumps(done).encode(), mtime=0))  # whole or not at all
            saved.append(done)
            if args.keep_starts and start is not None:
                Path(args.keep_starts).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(start.checkpoint, Path(args.keep_starts, f"start{fold}.pt"))
                Path(args.keep_starts, f"start{fold}.json").write_text(json.dumps({"images": start_images}))
            shutil.rmtree(work / f"start{fold}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table_of(saved, args.fleet_classes)
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
