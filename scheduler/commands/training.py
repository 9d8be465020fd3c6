"""Training commands: submit, run (the embedded executor), status, detectors."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any

import click

from vocfleet.db.settings import MAX_SECONDS, get_settings
from vocfleet.db.states import PROMOTE, JobStatus
from vocfleet.model import ConfigError, DetectorUnavailable
from vocfleet.model.config import ARCHS, AUGMENT_POLICIES, BALANCE, DIFFICULT, FOLD_BY, OPTIMIZERS, SCHEDULES, START_CLASS, TrainConfig, check_init
from vocfleet.worker.executor import executor

from ..output import duration, epoch_count, queue_line, render
from .base import (
    ID,
    Finite,
    action_format_option,
    columns,
    complete_classes,
    database,
    echo_listing,
    emit,
    exit_interrupted,
    filter_options,
    format_option,
    interruptible,
    labels_from,
    labels_options,
    list_filter,
    more_line,
    nothing_to_show,
    say,
    stale_option,
    stale_window,
    takeback_note,
    warn_idle_queue,
    with_labels,
)

_DEFAULTS = TrainConfig(voc_class="car", voc_root=".")
# With a shared start (bench/RESULTS.md, "A shared start"; 80 epochs: 2026-12-03 fifth session): the start's epochs, and each class's fine-tune after it.
START_EPOCHS = 80
# A start's augmentation under --augment-policy auto: its long schedule pays with the strong policy, a class
# job's single epoch from it does not need it (over four image-level folds: bench/RESULTS.md, 2026-12-03 third and fourth sessions).
START_POLICY = "strong"
FINETUNE_EPOCHS = 1
FINETUNE_LR = 2e-4  # a tenth of the start's rate: at 2e-3 one epoch undid part of the start (bench/RESULTS.md, "fine-tune rate")
TRAINING_COLUMNS = ["job", "created", "arch", "image_size", "epochs", "init"]
DETECTOR_COLUMNS = ["id", "class", "ap", "ap11", "auc", "accuracy", "always_absent", "f1", "threshold", "pos_rate", "eval_images", "split", "eval_data"]
DETECTOR_COLUMNS.append("train_data")


@click.command()
@click.option("--classes", required=True, help="Comma-separated VOC classes, or 'all'.", shell_complete=complete_classes)
@click.option(
    "--voc-root",
    required=True,
    multiple=True,
    type=click.Path(),
    envvar="VOCFLEET_VOC_ROOT",
    help="VOCdevkit/VOC2007 folder [env VOCFLEET_VOC_ROOT]; given again (e.g. VOC2012), its --train-split pictures are trained on too, "
    "evaluation stays the first folder's.",
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help=f"Each class job's epochs [default: {FINETUNE_EPOCHS} from a start, {_DEFAULTS.epochs} without].",
)
@click.option("--image-size", type=int, default=_DEFAULTS.image_size, help="Square training size in pixels.")
@click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default=_DEFAULTS.arch,
    help=(
        "resnet50; resnet50-lowres: the same weights without the stem's max pool, for pictures of 64-128 px (about 3x the compute); "
        "tiny: the same code at 1/8 width for smoke runs and tests."
    ),
)
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size)
@click.option("--lr", type=float, default=None, help=f"Peak learning rate [default: {_DEFAULTS.lr:g}; a class job from a start: {FINETUNE_LR:g}].")
@click.option("--weight-decay", type=float, default=_DEFAULTS.weight_decay)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_DEFAULTS.optimizer)
@click.option("--schedule", type=click.Choice(SCHEDULES), default=_DEFAULTS.schedule, help="Learning-rate schedule.")
@click.option("--init", default=_DEFAULTS.init, help="scratch, imagenet, or a path to a state dict.")
@click.option(
    "--zero-init-residual/--no-zero-init-residual", default=_DEFAULTS.zero_init_residual, help="Residual blocks start as the identity (from scratch)."
)
@click.option("--ema", type=float, default=_DEFAULTS.ema, help="Decay of a moving average of the weights, used for validation and the detector (0: off).")
@click.option("--augment/--no-augment", default=_DEFAULTS.augment, help="Random scale, flip and rotation.")
@click.option(
    "--augment-policy",
    type=click.Choice(("auto", *AUGMENT_POLICIES)),
    default="auto",
    help="origin: those three; strong: also a wider zoom, shifts and a brightness, contrast and colour jitter (for long schedules); "
    "erase: strong, and a random rectangle of half the pictures set to the mean colour; "
    f"auto: {START_POLICY} for a new start, {_DEFAULTS.augment_policy} for class jobs.",
)
@click.option("--balance", type=click.Choice(BALANCE), default=_DEFAULTS.balance, help="Class-imbalance handling.")
@click.option(
    "--aux-classes/--no-aux-classes",
    default=_DEFAULTS.aux_classes,
    help="Also learn the other 19 classes' labels of the training images (the detector keeps one logit).",
)
@click.option("--label-smoothing", type=float, default=_DEFAULTS.label_smoothing, help="Train on targets e/2 and 1 - e/2 instead of 0 and 1 (0: off).")
@click.option("--mixup", type=float, default=_DEFAULTS.mixup, help="Blend each batch with itself shuffled, weight ~ Beta(a, a) (0: off).")
@click.option(
    "--drop-path",
    type=float,
    default=_DEFAULTS.drop_path,
    help="Stochastic depth: in training skip residual blocks, at most this often (the last block; 0: off).",
)
@click.option(
    "--progressive-resize",
    type=float,
    default=_DEFAULTS.progressive_resize,
    help="Train the first epoch at this share of --image-size, growing to the full size by the last (0: off).",
)
@click.option(
    "--start",
    default="auto",
    show_default=True,
    help="A shared start: 'new' queues one job first (one network on all 20 labels of every training picture, --start-epochs long, from --init) "
    "that each class's job then begins from; a start job's id: begin from that one; 'none': each class from --init; "
    "auto: new for two classes or more, none for one.",
)
@click.option("--start-epochs", type=int, default=START_EPOCHS, show_default=True, help="With --start new: the start's epochs (paid once for every class).")
@click.option(
    "--fold-by",
    type=click.Choice(("auto", *FOLD_BY)),
    default="auto",
    help="With --eval-split fold:F/K: folds stratified by each class's label, or cut by image (the same for every class); auto: image with a start.",
)
@click.option("--difficult", type=click.Choice(DIFFICULT), default=_DEFAULTS.difficult, help="'Difficult only' images (label 0).")
@click.option("--train-split", default=_DEFAULTS.train_split)
@click.option("--eval-split", default="auto", help="A split name, 'holdout' (part of the training split), or 'auto'.")
@click.option("--eval-fraction", type=float, default=_DEFAULTS.eval_fraction, help="With --eval-split holdout: the part of the training split held out.")
@click.option("--val-fraction", type=float, default=_DEFAULTS.val_fraction, help="Of the images trained on: the part that picks the threshold and best epoch.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, help="0 to 2**63 - 1.")
@click.option("--max-batches", type=int, default=None, help="Cap on batches per epoch (quick trials).")
@click.option("--device", default=_DEFAULTS.device, help="auto, cpu, cuda, cuda:N.")
@click.option("--compile/--no-compile", default=_DEFAULTS.compile, help="torch.compile the model (GPU; minutes of warm-up).")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=3, help="Attempts before a job whose worker keeps dying fails.")
@click.option(
    "--promote",
    type=click.Choice(PROMOTE),
    default="if-better",
    help="When the new detector becomes its class's active one: if its AP is at least the active one's (same evaluation split), always, or never.",
)
@click.option("--dry-run", is_flag=True, help="Show the jobs it would queue and an estimate of their time on this machine; queue nothing.")
@labels_options
@action_format_option
def submit(
    classes: str,
    max_attempts: int,
    promote: str,
    dry_run: bool,
    fmt: str,
    name: str | None,
    tags: tuple[str, ...],
    note: str | None,
    start: str,
    start_epochs: int,
    fold_by: str,
    **options: Any,
) -> None:
    """Queue one training job per class (with --start new, a shared start first that they begin from)."""
    from vocfleet.db.models import TrainJob
    from vocfleet.db.training import create_jobs, ready_ids

    from ..configs import build_configs, parse_classes, parse_start, start_config

    labels = labels_from(name, tags, note)
    voc_classes = parse_classes(classes)
    begin = parse_start(start, len(voc_classes))
    if options["epochs"] is None:
        options["epochs"] = FINETUNE_EPOCHS if begin is not None else _DEFAULTS.epochs
    peak = options["lr"] if options["lr"] is not None else _DEFAULTS.lr  # the start's, when one is made
    if options["lr"] is None:
        options["lr"] = FINETUNE_LR if begin is not None else _DEFAULTS.lr
    options["fold_by"] = ("image" if begin is not None else "label") if fold_by == "auto" else fold_by
    policy = options["augment_policy"]
    if policy == "auto":
        options["augment_policy"] = _DEFAULTS.augment_policy
    init = options.get("init", "scratch")
    configs = build_configs(voc_classes, **options, start=None if begin is None else str(begin))  # with "new": --init is the start's
    if begin == "new":
        first = start_config(configs[0], init=check_init(init), epochs=start_epochs, lr=peak, augment_policy=START_POLICY if policy == "auto" else policy)
    else:
        first = None
    notes = _other_data(configs, promote)
    if dry_run:
        _estimate(([first] if first else []) + configs, fmt, notes)
        return
    from vocfleet.model.artifacts import ArtifactStore
    from vocfleet.worker.dispatch import check_broker

    ArtifactStore.from_settings(get_settings()).check()  # no bucket, no credentials: said now, not after an epoch
    check_broker()  # a wrong broker URL: said now, before any job is written
    unstarted = [c.with_(start=None) for c in configs]  # the start's key is set by create_jobs
    with database() as s:
        start_id = create_jobs(s, [first], max_attempts=max_attempts, labels=labels)[0].id if first else begin
        ids = [j.id for j in create_jobs(s, unstarted, max_attempts=max_attempts, promote=promote, labels=labels, start_job_id=start_id)]
        ready = ready_ids(s, ([start_id] if first else []) + ids)
    sent, where = executor().hand_over(TrainJob, ready)
    if executor().fleet and len(ready) < len(ids) + bool(first):
        where += f"; the class jobs go when start job {start_id} has succeeded"
    cfg = configs[0]
    if first:
        say(fmt, f"queued start job {start_id}: one network on all 20 labels, {epoch_count(first.epochs)} from {init}; the jobs below begin from it")
    after = f", beginning from start job {start_id}" if start_id else ""
    say(
        fmt,
        f"queued {len(ids)} job(s) {ids[0]}..{ids[-1]} for {', '.join(c.voc_class for c in configs)} "
        f"({epoch_count(cfg.epochs)}, {cfg.image_size} px, eval split: {cfg.eval_split}{after}); {where}",
    )
    jobs = [{"job": start_id, "class": first.voc_class, "status": "queued"}] if first else []
    jobs += [{"job": i, "class": c.voc_class, "status": "queued"} for i, c in zip(ids, configs, strict=True)]
    emit(fmt, {"jobs": jobs, "start_job": start_id, "sent_to_broker": sent, "notes": notes})


def _say_what_is_left(*, ran_any: bool, stale_after: float | None) -> list:
    """After 'vocfleet run' (on stderr): what still runs elsewhere when nothing ran here, and the jobs that wait for a start; the waiting ones."""
    from vocfleet.db.claims import work_states
    from vocfleet.db.models import TrainJob
    from vocfleet.db.training import waiting_jobs

    with database() as s:
        waiting = waiting_jobs(s)
    if not ran_any:
        with database() as s:
            running = work_states(s, TrainJob)
        for job_id, w in running.items():  # after a kill -9, say when the job comes back rather than "nothing queued"
            note = takeback_note(w.heartbeat_at, w.worker_host, stale_window(stale_after), "'vocfleet run'")
            click.echo(f"job {job_id} ({w.voc_class}) is running: {note}", err=True)
        if not running and not waiting:
            click.echo("nothing queued: vocfleet submit --classes car --voc-root PATH", err=True)
    for w in waiting:  # a failed or cancelled start: its class jobs cannot run until it is retried
        ids = ", ".join(map(str, w.job_ids))
        fix = f"'vocfleet retry {w.start_job_id}', then 'vocfleet run'" if w.start_status.finished else "its worker to finish it"
        click.echo(f"job(s) {ids} wait for start job {w.start_job_id}, which is {w.start_status.value}: {fix}", err=True)
    return waiting


def _other_data(configs: list[TrainConfig], promote: str) -> list[str]:
    """Say (on stderr) which classes' new jobs see other pictures or labels than their active detector; the lines, for JSON."""
    from vocfleet.db.registry import other_data_notes
    from vocfleet.model.data import planned_fingerprints

    with database() as s:
        notes = other_data_notes(s, planned_fingerprints(configs), promote)
    for line in notes:
        click.echo(f"note: {line}", err=True)
    return notes


def _on_cpu(device: str) -> bool:
    """Whether jobs for ``device`` would train on this machine's CPU (torch is asked only for 'auto')."""
    if device != "auto":
        return device == "cpu"
    from vocfleet.model.engine import resolve_device

    return resolve_device(device).type == "cpu"


def _estimate(configs: list[TrainConfig], fmt: str, notes: list[str]) -> None:
    """submit --dry-run: each job's images per epoch and time, from earlier epochs at its shape or a few timed steps here."""
    from ..estimator import estimate

    result = estimate(configs, on_timing=lambda cfg: say(fmt, f"timing a few training steps at {cfg.image_size} px on this machine ..."))
    rows = [{"class": j.voc_class, "epochs": j.epochs, "image_size": j.image_size, "train_images": j.train_images, "seconds": j.seconds} for j in result.jobs]
    total = result.total_seconds
    if fmt == "json":
        rates = [{"arch": r.arch, "image_size": r.image_size, "images_per_s": r.images_per_s, "source": r.source} for r in result.rates]
        emit(fmt, {"jobs": rows, "total_seconds": total, "rates": rates, "queued": False, "notes": notes})
        return
    where = "; ".join(f"{r.arch} at {r.image_size} px: {r.images_per_s:.3g} img/s from {r.source}" for r in result.rates)  # 0.42, not 0
    click.echo(render([{**r, "estimate": duration(r["seconds"])} for r in rows], ["class", "epochs", "image_size", "train_images", "estimate"]))
    click.echo(f"{len(rows)} job(s), about {duration(total)} in all, one after another ({where}); nothing queued (dry run)")
    if total > 3600 and not executor().fleet and _on_cpu(configs[0].device):
        click.echo(f"warning: about {duration(total)} on this CPU; a GPU, a smaller --image-size or fewer --epochs is much faster", err=True)


@click.command()
@click.option("--watch", is_flag=True, help="Refresh until every job shown has finished.")
@click.option("--interval", type=Finite(0.1, MAX_SECONDS), default=5.0, help="Seconds between refreshes with --watch (0.1 to a week).")
@filter_options(tuple(JobStatus))
@format_option
def status(watch: bool, interval: float, fmt: str, **filters: Any) -> None:
    """Jobs with progress: epoch x of y and the latest validation AP (--status, --class, --tag, --since, --limit choose which)."""
    from vocfleet.db.estimates import queue_left
    from vocfleet.db.listing import job_records, read_connection

    chosen = list_filter(fmt, **filters)
    while True:
        with read_connection() as conn:
            every, left = job_records(conn), queue_left(conn)
            warn_idle_queue(conn, "train")
        if watch and sys.stdout.isatty():
            click.clear()
        rows, more = chosen.apply(every)
        if nothing_to_show(fmt, rows, "no jobs yet: vocfleet submit --classes car --voc-root PATH", every, "jobs"):
            return
        progress = ["epoch"] if fmt == "table" else ["epochs_done", "epochs"]  # "2/3" for people, two numbers for scripts
        shown, labels = with_labels([columns(r) for r in rows], fmt)
        echo_listing(render(shown, ["job", "class", *labels, "status", *progress, "val_ap", "attempts", "worker", "heartbeat", "error"], fmt))
        more_line(fmt, more, "jobs")
        if fmt == "table":
            click.echo(queue_line(*left))
        if not watch or all(r.status.finished for r in rows):
            return
        if not sys.stdout.isatty():
            click.echo("")
        time.sleep(interval)


@click.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Include detectors that are not active (replaced, or kept inactive).")
@click.option("--plots", is_flag=True, help="List each detector's PNG plots (training curves, precision-recall).")
@filter_options(("active", "inactive"))
@format_option
@click.pass_context
def detectors(ctx: click.Context, show_all: bool, plots: bool, fmt: str, **filters: Any) -> None:
    """Trained detectors: AP on the evaluation split, accuracy beside 'always absent', threshold, how it was trained.

    'vocfleet detectors history CLASS' lists a class's detectors with each promotion decision;
    'vocfleet detectors activate ID' makes one the active detector of its class.
    """
    if ctx.invoked_subcommand is not None:
        return
    from vocfleet.db.registry import detector_records

    chosen = list_filter(fmt, **filters)
    with database(read=True) as s:
        every = detector_records(s, show_all or "inactive" in chosen.statuses)
    rows, more = chosen.apply(every)
    if nothing_to_show(fmt, rows, "no detectors yet: vocfleet submit ... then vocfleet run", every, "detectors"):
        return
    if plots:
        echo_listing(render([columns(r) for r in rows], ["id", "class", "curves", "pr_curve"], fmt))
        more_line(fmt, more, "detectors")
        return
    shown, labels = with_labels([columns(r) for r in rows], fmt)
    cols = DETECTOR_COLUMNS[:2] + labels + DETECTOR_COLUMNS[2:] + (["active"] if show_all else []) + TRAINING_COLUMNS
    cols += ["start", "checkpoint", "curves", "pr_curve", "decision"] if fmt != "table" else []
    echo_listing(render(shown, cols, fmt))
    more_line(fmt, more, "detectors")


@detectors.command("history")
@click.argument("voc_class")
@format_option
def detectors_history(voc_class: str, fmt: str) -> None:
    """Every detector of a class, oldest first, with the promotion decision made when it finished."""
    from vocfleet.db.registry import detector_records

    from ..configs import parse_classes

    (voc_class,) = parse_classes(voc_class)
    with database(read=True) as s:
        rows = [columns(r) for r in detector_records(s, True) if r.voc_class == voc_class]  # by id: oldest first
    if not rows:
        click.echo(f"no {voc_class} detectors yet")
        return
    click.echo(render(rows, ["id", "active", "ap", "split", *TRAINING_COLUMNS, "decision", *(["changes"] if fmt != "table" else [])], fmt))
    if fmt == "table":  # every decision, oldest first: the column above holds only the latest of each
        timeline = sorted(({"at": c["at"], "detector": r["id"], "what": c["what"]} for r in rows for c in r["changes"]), key=lambda c: c["at"])
        click.echo("\nchanges, oldest first:\n" + render(timeline, ["at", "detector", "what"], fmt))


@detectors.command("mistakes")
@click.argument("detector_id", type=ID)
@click.option("--limit", type=click.IntRange(1, 500), default=10, show_default=True, help="Pictures of each kind.")
@format_option
def detectors_mistakes(detector_id: int, limit: int, fmt: str) -> None:
    """Where a detector is wrong on its evaluation pictures: false alarms (surest first), misses (least sure first), and right-but-only-just."""
    from pathlib import Path

    from vocfleet.db.truth import mistakes

    with database(read=True) as s:
        m = mistakes(s, detector_id, limit)
    if m is None:
        raise ConfigError(f"no detector {detector_id}: see 'vocfleet detectors --all'")
    if not m.recorded:
        raise ConfigError(f"detector {detector_id} was trained before vocfleet 0.10 kept its evaluation pictures: train {m.voc_class} again to see them")
    c = m.confusion
    kinds = (("false positive", m.false_positives), ("false negative", m.false_negatives), ("near threshold", m.near_threshold))
    where = Path(m.voc_root, "JPEGImages") if m.voc_root else None
    rows = [
        {"kind": kind, "picture": j.picture, "label": j.label, "probability": j.probability, "path": str(where / f"{j.picture}.jpg") if where else None}
        for kind, pics in kinds
        for j in pics
    ]
    if fmt != "table":
        emit(fmt, {"detector": detector_id, "class": m.voc_class, "threshold": m.threshold, "confusion": asdict(c), "pictures": rows})
        return
    click.echo(
        f"detector {detector_id} ({m.voc_class}) at threshold {m.threshold:.3f}: {c.true_positives} found, {c.false_negatives} missed, "
        f"{c.false_positives} false alarms, {c.true_negatives} rightly absent (precision {c.precision or 0:.3f}, recall {c.recall or 0:.3f})"
    )
    click.echo(render(rows, ["kind", "picture", "label", "probability", "path"], fmt))


@detectors.command("activate")
@click.argument("detector_id", type=ID)
@click.option("--reason", default=None, help="Why, kept in 'vocfleet detectors history'.")
def detectors_activate(detector_id: int, reason: str | None) -> None:
    """Make a detector the active one of its class (new scoring runs use it); recorded in the history with --reason."""
    from vocfleet.db.registry import activate_usable
    from vocfleet.db.session import ensure_schema
    from vocfleet.db.states import plain_text
    from vocfleet.model.artifacts import ArtifactStore

    try:
        plain_text("--reason", reason, lines=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ensure_schema()
    done = activate_usable(ArtifactStore.from_settings(get_settings()), detector_id, reason)
    if done is None:
        raise ConfigError(f"no detector {detector_id}: see 'vocfleet detectors --all'")
    detector, before = done
    said = f"detector {detector.id} ({detector.voc_class}, AP {detector.ap:.3f}) is active"
    if before is detector:
        said += " already: nothing changed" + (", the reason is not recorded" if reason else "")
    elif before is not None:
        said += f"; detector {before.id} (AP {before.ap:.3f}) no longer"
    click.echo(said)


COMPARED = ["class", "status", "name", "tags", "ap", "auc", "accuracy", "always_absent", "f1", "threshold", "eval_images", "split", "eval_data", "train_data"]
COMPARED.append("init")  # scratch, imagenet, a file, or the start job it began from


@click.command()
@click.argument("detector_ids", nargs=-1, required=True, type=ID)
@click.option("--plot", "plot_path", default=None, help="Write their curves overlaid to this PNG (a new name, or an existing file with --force).")
@click.option("--force", is_flag=True, help="Replace --plot if it exists.")
@format_option
def compare(detector_ids: tuple[int, ...], plot_path: str | None, force: bool, fmt: str) -> None:
    """Detectors side by side: metrics beside always-absent, the data each saw, the settings that differ, and their curves in one PNG."""
    from vocfleet.db.listing import tag_text
    from vocfleet.db.registry import detector_comparison
    from vocfleet.db.truth import judged
    from vocfleet.model.files import output_path, writing

    if len(set(detector_ids)) < 2:
        raise ConfigError("compare needs two or more different detector ids (see 'vocfleet detectors --all')")
    out = output_path(plot_path, option="--plot", force=force, protected=get_settings().own_paths()) if plot_path is not None else None
    with database(read=True) as s:
        try:
            records, differ, epochs = detector_comparison(s, list(detector_ids))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        pictures = judged(s, list(detector_ids)) if out is not None else {}
    labels = {r.detector_id: " ".join(str(x) for x in (r.detector_id, r.voc_class, r.name or tag_text(r.tags)) if x) for r in records}
    rows = [columns(r) for r in records]
    curves = {labels[i]: epochs[i] for i in detector_ids if epochs[i]}
    if out is not None and curves:
        from vocfleet.model.plots import save_comparison_plot  # numpy and matplotlib only where a plot is made

        with writing(out) as fh:
            save_comparison_plot(fh, curves, title="detectors " + ", ".join(map(str, detector_ids)), pr={labels[i]: pr for i, pr in pictures.items()})
    elif out is not None:
        out = None
    if fmt != "table":
        emit(fmt, {"detectors": rows, "settings_that_differ": differ, "plot": str(out) if out else None})
        return
    table = [{"": key, **{str(r["id"]): tag_text(r[key]) if key == "tags" else r[key] for r in rows}} for key in COMPARED]
    table += [{"": key, **{str(i): v for i, v in zip(detector_ids, values, strict=True)}} for key, values in differ.items()]
    click.echo(render(table, ["", *map(str, detector_ids)], fmt))
    if len({r["eval_data"] for r in rows}) > 1:
        click.echo("note: they were evaluated on different pictures (eval_data differs): their APs are not directly comparable")
    if out is not None:
        curves_said = f"curves overlaid in {plot_path}"
    else:
        curves_said = "--plot FILE.png overlays their curves" if curves else "no curves: their jobs' epochs are gone"
    click.echo(f"settings that differ: {', '.join(differ) or 'none'}; {curves_said}")


@click.command()
@stale_option
@action_format_option
def run(stale_after: float | None, fmt: str) -> None:
    """Embedded default: run every queued job in this process, then print the detector table.

    Jobs left 'running' by an interrupted earlier run resume from their last checkpoint.
    """
    from vocfleet.db.claims import reap_stale, work_states
    from vocfleet.db.estimates import queue_left
    from vocfleet.db.listing import read_connection
    from vocfleet.db.models import TrainJob
    from vocfleet.db.registry import detector_records
    from vocfleet.db.training import next_queued

    from ..progress import TrainProgress

    if executor().fleet:
        raise ConfigError("VOCFLEET_BROKER_URL is set, so jobs go to the fleet: start 'vocfleet worker' instead (or unset it)")
    with database() as s:
        requeued, failed = reap_stale(s, TrainJob, stale_window(stale_after))
    for job_id in requeued:
        click.echo(f"job {job_id}: its worker stopped; requeued to resume from its checkpoint", err=True)
    for job_id in failed:
        click.echo(f"job {job_id}: failed after too many attempts", err=True)
    any_failed = False
    ran: list[dict[str, Any]] = []
    while True:
        with database() as s:
            job_id, voc_class = next_queued(s) or (None, None)
        if job_id is None:
            break
        from vocfleet.worker.runner import Outcome, run_train_job  # torch, only once there is a job to train

        with read_connection() as conn:
            what = "the shared start (one network on all 20 labels)" if voc_class == START_CLASS else voc_class
            click.echo(f"job {job_id}: training {what}; {queue_line(*queue_left(conn))}", err=True)
        try:
            with interruptible():
                outcome = run_train_job(job_id, progress=TrainProgress(f"job {job_id} {voc_class}"))
        except KeyboardInterrupt as exc:
            exit_interrupted(exc, f"job {job_id} will resume from its last checkpoint on the next 'vocfleet run'")
        ran.append({"job": job_id, "class": voc_class, "outcome": outcome.value, "error": None})
        if outcome == Outcome.failed:
            any_failed = True
            with database() as s:
                ran[-1]["error"] = (work_states(s, TrainJob, [job_id])[job_id].error or "").splitlines()[0]
            click.echo(f"job {job_id} ({voc_class}) failed: {ran[-1]['error']}", err=True)
    waiting = _say_what_is_left(ran_any=bool(ran), stale_after=stale_after)
    with database() as s:
        rows = [columns(r) for r in detector_records(s)]
    if rows and fmt == "text":
        click.echo(render(rows, DETECTOR_COLUMNS))
    blocked = [{"start_job": w.start_job_id, "start_status": w.start_status.value, "jobs": list(w.job_ids)} for w in waiting]
    emit(fmt, {"jobs": ran, "requeued": requeued, "failed_stale": failed, "waiting": blocked})
    if any_failed or any(w.start_status.finished for w in waiting):
        sys.exit(1)


@click.command("export")
@click.argument("detector_id", type=ID)
@click.option("--format", "fmt", type=click.Choice(("torchscript", "onnx")), default="torchscript", show_default=True)
@click.option("--out", required=True, help="The file to write (.pt for TorchScript, .onnx); never inside the data folder.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def export(detector_id: int, fmt: str, out: str, force: bool) -> None:
    """One detector as a single file for plain PyTorch or ONNX Runtime: uint8 RGB in, probability out.

    Its threshold, input size and the exact preprocessing are in the file's metadata.
    """
    from vocfleet import __version__
    from vocfleet.db.registry import detector_file, export_metadata
    from vocfleet.model.artifacts import ArtifactStore
    from vocfleet.model.export import export_detector
    from vocfleet.model.files import output_path

    settings = get_settings()
    store = ArtifactStore.from_settings(settings)
    path = output_path(out, option="--out", force=force, protected=settings.own_paths())
    with database(read=True) as s:
        spec, meta = detector_file(s, detector_id), export_metadata(s, detector_id)
    if spec is None or meta is None:
        raise ConfigError(f"no detector {detector_id}: see 'vocfleet detectors --all'")
    meta = {"vocfleet_version": __version__, **meta}
    try:
        checkpoint = store.local_copy(*spec)
    except DetectorUnavailable as exc:
        raise ConfigError(f"detector {detector_id}: {exc}") from None
    export_detector(checkpoint, path, fmt, meta)
    click.echo(f"wrote {out}: {fmt}, {meta['class']} detector {detector_id}, threshold {meta['threshold']:.3f}")


COMMANDS = [submit, run, status, detectors, compare, export]
