"""Scoring and results commands: score, resume-run, runs, results, predict, report."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import click

from vocfleet.db.settings import get_settings
from vocfleet.db.states import MAX_ID, SORTS, JobStatus
from vocfleet.model import ConfigError, utf8
from vocfleet.worker.executor import executor

from ..output import render, stream
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


def _detectors_for(s, classes: str | None) -> list:
    """The active detectors to score with: every one, or those of ``classes`` (each must exist)."""
    from vocfleet.db.registry import active_detectors

    from ..configs import parse_classes

    wanted = parse_classes(classes) if classes else None
    found = active_detectors(s, wanted)
    if wanted:
        missing = [c for c in wanted if c not in {d.voc_class for d in found}]
        if missing:
            raise ConfigError(f"no trained detector for {', '.join(missing)}: train with 'vocfleet submit --classes {','.join(missing)} ...' first")
    if not found:
        raise ConfigError("no trained detectors yet: run 'vocfleet submit ...' and 'vocfleet run' first")
    return found


@click.command()
@click.argument("folders", nargs=-1, required=True)
@click.option("--classes", default=None, help="Comma-separated classes [default: every active detector].", shell_complete=complete_classes)
@click.option("--batch-size", type=int, default=64)
@click.option("--max-attempts", type=int, default=3, help="Attempts per shard before a shard whose worker keeps dying fails.")
@click.option("--shard-size", type=int, default=2000, help="Files per shard: the unit of work one score worker takes at a time.")
@click.option("--wait", is_flag=True, help="In a fleet: show progress until the run has finished.")
@click.option("--fresh", is_flag=True, help="Decode and score every picture again (by default one scored before, same content, is reused).")
@labels_options
@action_format_option
def score(
    folders: tuple[str, ...],
    classes: str | None,
    batch_size: int,
    max_attempts: int,
    shard_size: int,
    wait: bool,
    fresh: bool,
    fmt: str,
    name: str | None,
    tags: tuple[str, ...],
    note: str | None,
) -> None:
    """Score every picture under FOLDERS with every active detector (or --classes).

    The folders are scanned once into shards of --shard-size files. On the embedded default the
    shards are scored now, one after another, with progress; in a fleet every score worker takes
    shards of the run at once. Files that are not pictures, broken or unsafe are recorded with a
    reason. A folder given twice, or inside another given folder, is scored once.

    Only what changed is computed: a picture an earlier run scored (the same content: known by its
    size and modification time where unchanged, else by its sha256) is not decoded again, its
    scores are reused, and only the detectors it lacks run on it. --fresh scores everything.
    """
    from vocfleet.db.models import ScoreRun
    from vocfleet.db.runs import create_run
    from vocfleet.worker.dispatch import check_broker
    from vocfleet.worker.safety import check_score_folder, distinct_folders

    labels = labels_from(name, tags, note)
    for option, value in (("--batch-size", batch_size), ("--max-attempts", max_attempts), ("--shard-size", shard_size)):
        if not 1 <= value <= MAX_ID:
            raise ConfigError(f"{option} {value}: must be between 1 and {MAX_ID}")
    resolved = [str(f) for f in distinct_folders([check_score_folder(f) for f in folders])]
    check_broker()
    with database() as s:
        run = create_run(
            s, resolved, _detectors_for(s, classes), batch_size=batch_size, max_attempts=max_attempts, shard_size=shard_size, labels=labels, fresh=fresh
        )
        run_id, names = run.id, list(run.classes)
    if executor().fleet:
        executor().hand_over(ScoreRun, [run_id])
        say(fmt, f"scoring run {run_id} queued for {', '.join(names)}; follow it with: vocfleet runs")
        if wait:
            _wait_for_run(run_id, fmt)
        else:
            emit(fmt, {"run": run_id, "status": "queued", "classes": names})
        return
    _run_scoring(run_id, names, fmt)


def _run_result(run) -> dict:
    """What --format json says of a run."""
    return {
        "run": run.id,
        "status": run.status.value,
        "classes": list(run.classes),
        "files": run.total_files,
        "scored": run.scored_images,
        "reused": run.reused,
        "errors": run.error_files,
        "reason": run.error,
    }


def _said(result: dict) -> str:
    """What a finished run did, in one phrase: scored (reused of them), not scored, of seen."""
    reused = f" ({result['reused']} reused from earlier runs, {result['scored'] - result['reused']} computed)" if result["reused"] else ""
    return f"{result['scored']} image(s) scored{reused}, {result['errors']} file(s) not scored, of {_seen(result['files'])} seen"


def _seen(total: int | None) -> str:
    """A run's file count; None until its scan finishes."""
    return str(total) if total is not None else "? (the scan did not finish)"


def _wait_for_run(run_id: int, fmt: str = "text", interval: float = 1.0) -> None:
    """Progress of a run the fleet is scoring (files done of total), until it finishes."""
    from vocfleet.db.models import JobStatus
    from vocfleet.db.runs import run_state

    from ..progress import CountProgress

    with CountProgress(f"run {run_id}", "file", total_grows=True) as progress:
        while True:
            with database(read=True) as s:
                run = run_state(s, run_id)
                status, done, total, error, result = run.status, run.scored_images + run.error_files, run.total_files, run.error, _run_result(run)
            progress(done, total)
            if status.finished:
                break
            time.sleep(interval)
    say(fmt, f"run {run_id} {status.value}: {_said(result)}" + (f": vocfleet results {run_id} --errors" if result["errors"] else ""))
    emit(fmt, result)
    if status != JobStatus.succeeded:
        click.echo(f"vocfleet: error: run {run_id} {status.value}: {error or 'no reason recorded'}", err=True)
        sys.exit(1)


def _run_scoring(run_id: int, names: list[str], fmt: str = "text") -> None:
    """The embedded default: score the run in this process, with progress, then print what was not scored."""
    from vocfleet.db.results import error_rows
    from vocfleet.db.runs import run_state
    from vocfleet.worker.runner import Outcome
    from vocfleet.worker.scoring import run_score_run

    from ..progress import CountProgress

    click.echo(f"scoring run {run_id} with {len(names)} detector(s): {', '.join(names)}", err=True)
    try:
        with interruptible(), CountProgress(f"run {run_id}", "file", total_grows=True) as progress:
            outcome = run_score_run(run_id, progress=progress)
    except KeyboardInterrupt as exc:
        exit_interrupted(exc, f"resume with 'vocfleet resume-run {run_id}'")
    with database() as s:
        run = run_state(s, run_id)
        errors = error_rows(s, run_id, limit=50)
        result = _run_result(run)
        say(fmt, f"run {run_id} {run.status.value}: {_said(result)}")
        if run.error:
            click.echo(f"reason: {run.error}", err=True)
    if errors:
        say(fmt, render(errors, ["file", "reason"]))
        if run.error_files > len(errors):
            say(fmt, f"... and {run.error_files - len(errors)} more: vocfleet results {run_id} --errors")
    say(fmt, f"results: vocfleet results {run_id} [--by-image] [--present] [--format csv|jsonl|json]")
    emit(fmt, result)
    if outcome != Outcome.succeeded:
        sys.exit(1)


@click.command("resume-run")
@click.argument("run_id", type=ID)
@stale_option
def resume_run(run_id: int, stale_after: float | None) -> None:
    """Continue an interrupted scoring run where it stopped (already recorded files are not redone)."""
    from vocfleet.db.models import ScoreRun
    from vocfleet.db.runs import Reopen, last_heartbeat, missing_run, reopen_run

    with database() as s:
        state, run = reopen_run(s, run_id, stale_window(stale_after))
        if state == Reopen.missing:
            raise missing_run(run_id)
        if state == Reopen.running:
            beat, host = last_heartbeat(s, run_id)
            note = takeback_note(beat, host, stale_window(stale_after), f"'vocfleet resume-run {run_id}'")
            raise ConfigError(f"run {run_id} is running ({note}); or cancel it: vocfleet cancel --run {run_id}")
        names = list(run.classes)
    if state == Reopen.finished:
        click.echo(f"run {run_id} already finished")
        return
    if executor().fleet:
        executor().hand_over(ScoreRun, [run_id])
        click.echo(f"scoring run {run_id} queued again")
        return
    _run_scoring(run_id, names)


@click.command()
@filter_options(tuple(JobStatus))
@format_option
def runs(fmt: str, **filters: Any) -> None:
    """Scoring runs with status and counts (--status, --class, --tag, --since, --limit choose which)."""
    from vocfleet.db.listing import read_connection, run_records

    chosen = list_filter(fmt, **filters)
    with read_connection() as conn:
        every = run_records(conn)
        warn_idle_queue(conn, "score")
    rows, more = chosen.apply(every, classes="classes")
    if nothing_to_show(fmt, rows, "no scoring runs yet: vocfleet score FOLDER", every, "runs"):
        return
    shown, labels = with_labels([columns(r) for r in rows], fmt)
    echo_listing(render(shown, ["run", *labels, "status", "files", "scored", "reused", "errors", "classes", "created", "finished", "folders", "error"], fmt))
    more_line(fmt, more, "runs")


@click.command()
@click.argument("run_ids", nargs=-1, type=ID)
@click.option("--all-runs", is_flag=True, help="Every run: the newest score of each file and class.")
@click.option("--class", "voc_class", default=None, help="Only this class.", shell_complete=complete_classes)
@click.option("--min-prob", type=Finite(0, 1), default=None, help="Only probabilities at or above this.")
@click.option("--present", "only_present", is_flag=True, help="Only images judged present at the detector's threshold.")
@click.option("--absent", "only_absent", is_flag=True, help="Only images judged absent at the detector's threshold.")
@click.option("--also", default=None, help="Only pictures where these classes are present too (comma-separated).", shell_complete=complete_classes)
@click.option(
    "--without",
    default=None,
    help="Only pictures where these classes are absent (comma-separated): --class dog --without person.",
    shell_complete=complete_classes,
)
@click.option("--image", default=None, help="One image (path relative to its folder, or sha256): which classes are in it.")
@click.option("--by-image", is_flag=True, help="One row per image: the classes present, and the three most above their threshold.")
@click.option("--summary", is_flag=True, help="Per class: images, images present, mean probability.")
@click.option("--errors", "show_errors", is_flag=True, help="The files that could not be scored, with reasons.")
@click.option(
    "--sort",
    type=click.Choice(SORTS),
    default=None,
    help="image (as recorded), probability, or margin (above the threshold) [default: margin with --present, else image].",
)
@click.option("--limit", type=int, default=None, help="At most this many rows.")
@format_option
def results(run_ids, all_runs, voc_class, min_prob, only_present, only_absent, also, without, image, by_image, summary, show_errors, sort, limit, fmt) -> None:  # noqa: C901 - one command, four output modes (rows, --by-image, --summary, --errors) in one read transaction
    """Query scoring results: one run, several (the newest score of each file and class), or --all-runs.

    Streamed: an export of millions of rows starts at once and holds a few thousand in memory.
    """
    from vocfleet.db.results import ResultQuery, export_csv, export_json, iter_by_image, iter_errors, iter_results, runs_have_class, summary_rows
    from vocfleet.db.runs import scoring_run

    present, voc_class = _check_results_options(run_ids, all_runs, voc_class, min_prob, only_present, only_absent, image, by_image, summary, show_errors, limit)
    also, without = _pictures_with(also, without, voc_class, summary or show_errors)
    with database(read=True) as s:
        for run_id in run_ids:
            scoring_run(s, run_id)
        runs = None if all_runs else tuple(dict.fromkeys(run_ids))
        for cls in filter(None, (voc_class, *also, *without)):
            if not runs_have_class(s, runs, cls):
                where = f"run {', '.join(map(str, runs))}" if runs else "any run"
                raise ConfigError(f"{where} has no {cls} detector: see 'vocfleet runs' for the classes each run scored")
        if show_errors:
            if runs is None or len(runs) != 1:
                raise ConfigError("--errors takes one run id")
            stream(iter_errors(s, runs[0], limit), ["file", "reason", "folder"], fmt)
            return
        if summary:
            stream(summary_rows(s, runs), ["class", "images", "present", "present_rate", "mean_probability"], fmt)
            return
        query = ResultQuery(runs, voc_class, min_prob, present, image, sort or ("margin" if present else "image"), limit, also, without)
        if image and next(iter_results(s, dataclasses.replace(query, limit=1)), None) is None:
            raise ConfigError(f"no scored image {image!r} there: see 'vocfleet results {' '.join(map(str, run_ids))} --by-image'")
        many = runs is None or len(runs) > 1
        if by_image:
            columns = ["image", "present", "top"] + (["run"] if many else []) + (["folder", "sha256"] if fmt != "table" else [])
            rows = iter_by_image(s, query)
            if fmt == "table":  # for people: "car 0.91, dog 0.12"; scripts get the list of classes and probabilities
                rows = ({**r, "top": ", ".join(f"{t['class']} {t['probability']:.2f}" for t in r["top"])} for r in rows)
            stream(rows, columns, fmt)
            return
        columns = ["image", "class", "probability", "present"] + (["run"] if many else [])
        columns += ["margin", "threshold", "folder", "detector", "sha256"] if fmt != "table" else []
        if fmt != "table":  # the bulk export: rows formatted by the database where it can
            sys.stdout.flush()
            if fmt == "csv":
                export_csv(s, query, columns, sys.stdout.buffer)
            else:
                export_json(s, query, columns, sys.stdout.buffer, lines=fmt == "jsonl")
            sys.stdout.buffer.flush()
            return
        stream((r.as_row() for r in iter_results(s, query)), columns, fmt)


def _pictures_with(also: str | None, without: str | None, voc_class: str | None, counting: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--also and --without as classes; refused where they would contradict each other or filter nothing."""
    from ..configs import parse_classes

    given = [(name, text) for name, text in (("--also", also), ("--without", without)) if text is not None]
    if given and counting:
        raise ConfigError(f"{given[0][0]} picks pictures, which --summary and --errors do not list: drop it")
    for name, text in given:
        if not text.strip():
            raise ConfigError(f"{name} '': name one or more classes, comma-separated")
    yes, no = (tuple(parse_classes(t)) if t else () for t in (also, without))
    if both := sorted(set(yes) & set(no)):
        raise ConfigError(f"{', '.join(both)} is in both --also and --without: choose one")
    if voc_class and voc_class in no:
        raise ConfigError(f"--class {voc_class} --without {voc_class}: no picture can be both; drop one")
    return yes, no


def _check_results_options(run_ids, all_runs, voc_class, min_prob, only_present, only_absent, image, by_image, summary, show_errors, limit):
    """What ``results`` refuses before reading anything; (present: True/False/None, the class or None for every class)."""
    from ..configs import parse_classes

    if bool(run_ids) == all_runs:
        raise ConfigError("give run ids (see 'vocfleet runs') or --all-runs")
    if only_present and only_absent:
        raise ConfigError("--present and --absent contradict each other: choose one (or neither, for both)")
    present = True if only_present else False if only_absent else None
    if limit is not None and not 1 <= limit <= 2**62:
        raise ConfigError(f"--limit {limit}: must be between 1 and 2**62")
    modes = [name for name, on in (("--by-image", by_image), ("--summary", summary), ("--errors", show_errors)) if on]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} contradict each other: choose one")
    given = (("--class", voc_class), ("--min-prob", min_prob is not None), ("--present", only_present), ("--absent", only_absent), ("--image", image))
    filters = [name for name, on in given if on]
    if show_errors and filters:
        raise ConfigError(f"--errors lists the files not scored, which have no scores: drop {', '.join(filters)}")
    if image is not None and not image.strip():
        raise ConfigError("--image '': name a picture (its path relative to its folder) or its sha256")
    if image is not None:  # raw bytes from the shell: a name that is not UTF-8 was never scored
        utf8("--image", image, "such names are not scored: see 'vocfleet results RUN --errors'")
    if voc_class and voc_class.strip().lower() == "all":
        return present, None  # every class the runs scored, as without --class
    return present, parse_classes(voc_class)[0] if voc_class else None


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--classes", default=None, help="Comma-separated classes [default: every active detector].", shell_complete=complete_classes)
@format_option
def predict(images: tuple[str, ...], classes: str | None, fmt: str) -> None:
    """Quick answer for a few images, without creating a run: classes by probability."""
    from vocfleet.model.artifacts import ArtifactStore
    from vocfleet.model.engine import resolve_device
    from vocfleet.model.scan import FileEntry
    from vocfleet.model.score import DetectorSpec, iter_chunks, load_detectors

    with database(read=True) as s:
        specs = [DetectorSpec.of(d) for d in _detectors_for(s, classes)]
    entries = []
    for img in images:
        p = Path(img).expanduser().resolve()
        if not p.is_file():
            raise ConfigError(f"image {img!r} does not exist or is not a file")
        entries.append(FileEntry(str(p.parent), p.name))
    device = resolve_device()
    # A few images: compiling would cost more than it saves, unless asked for explicitly.
    settings = get_settings()
    loaded = load_detectors(specs, device, compile=bool(settings.score_compile), store=ArtifactStore.from_settings(settings))
    rows, failed = [], 0
    for chunk in iter_chunks(entries, loaded, device):
        for j, f in enumerate(chunk.scored):
            per = sorted(((*d.spec.answer(chunk.probs[k, j]), d) for k, d in enumerate(loaded)), key=lambda t: -t[0])
            rows += [{"image": str(f.entry.path), "class": d.spec.voc_class, "probability": p, "present": present} for p, present, d in per]
        for e, reason in chunk.errors:
            click.echo(f"vocfleet: error: {e.path}: {reason}", err=True)
            failed += 1
    if rows:
        click.echo(render(rows, ["image", "class", "probability", "present"], fmt))
    if failed:
        sys.exit(1)


@click.command()
@click.argument("run_id", type=ID, required=False)
@click.option("--fleet", is_flag=True, help="Report on the active detectors (table and training curves) instead of a run.")
@click.option("--out", required=True, help="The HTML file to write (a new name, or an existing file with --force); never inside the data folder.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--dry-run", is_flag=True, help="Check the arguments and that --out may be written; write nothing (make demo checks REPORT before it trains).")
def report(run_id: int | None, fleet: bool, out: str, force: bool, dry_run: bool) -> None:
    """Write a self-contained HTML page: a scoring run (RUN_ID) or the fleet's detectors (--fleet)."""
    from vocfleet.db.reports import fleet_report, run_report
    from vocfleet.db.runs import scoring_run
    from vocfleet.model.artifacts import ArtifactStore
    from vocfleet.model.files import output_path, write_bytes

    from ..report import render_fleet, render_run

    if (run_id is None) == (not fleet):
        raise ConfigError("give a scoring run id, or --fleet (not both)")
    settings = get_settings()
    path = output_path(out, option="--out", force=force, protected=settings.own_paths())
    if dry_run:
        if run_id is not None:
            with database(read=True) as s:
                scoring_run(s, run_id)
        click.echo(f"would write {out}; nothing written (dry run)")
        return
    with database(read=True) as s:
        page = render_fleet(fleet_report(s), ArtifactStore.from_settings(settings)) if fleet else render_run(run_report(s, run_id))
    data = page.encode("utf-8")
    write_bytes(path, data)
    click.echo(f"wrote {out} ({len(data) // 1024} KiB)")


@click.group(invoke_without_command=True)
@click.option("--class", "voc_class", default=None, help="Only this class.", shell_complete=complete_classes)
@format_option
@click.pass_context
def labels(ctx: click.Context, voc_class: str | None, fmt: str) -> None:
    """What people said of pictures (marked on a picture's page in 'vocfleet serve --allow-actions'): the latest word on each class of each picture.

    Kept by the picture's sha256, so a label follows the file; --format csv|json exports them with who, when, and where a run last saw the picture.
    'vocfleet labels export DIR' writes them as a VOC folder to train on ('submit --voc-root VOC2007 --voc-root DIR');
    'vocfleet labels evaluate' scores the active detectors against them.
    """
    if ctx.invoked_subcommand is not None:
        return
    from vocfleet.db.labels import latest_labels

    with database(read=True) as s:
        found = latest_labels(s, voc_class=voc_class)
    if nothing_to_show(fmt, found, "no labels yet: mark classes on a picture's page (vocfleet serve --allow-actions)"):
        return
    rows = [{"sha256": r.sha256, "class": r.voc_class, "present": r.present, "who": r.who, "at": r.at, "earlier": r.earlier, "path": r.path} for r in found]
    echo_listing(render(rows, ["class", "present", "who", "at", "earlier", "path", "sha256"], fmt))


@labels.command("export")
@click.argument("folder")
def labels_export(folder: str) -> None:
    """Write the labels as a VOC year folder (JPEGImages/, ImageSets/Main/<class>_train.txt): 1 there, -1 not there, 0 not said.

    Train on them beside VOC with 'vocfleet submit --voc-root VOC2007 --voc-root FOLDER' (0, "not said", is left out of training):
    a picture of that VOC folder (one of a detector's evaluation pictures, say) keeps its id, and the word replaces its label there.
    The folder must be new; each picture is copied as a run last saw it (or as a person saw it), checked against its sha256.
    """
    import hashlib
    from pathlib import Path

    from vocfleet.db.labels import labelled_files, latest_labels
    from vocfleet.model import VOC_CLASSES
    from vocfleet.model.data import PEOPLES_LABELS
    from vocfleet.model.files import write_bytes
    from vocfleet.model.scan import MAX_FILE_BYTES, UnsafeFile, read_inside

    out = Path(folder).expanduser().absolute()
    if out.exists():
        raise ConfigError(f"{folder}: exists; name a new folder (the labels are written as a whole VOC folder)")
    if not out.parent.is_dir():
        raise ConfigError(f"{folder}: the folder {out.parent} does not exist; create it first")
    with database(read=True) as s:
        said = latest_labels(s)
        where = labelled_files(s)
    if not said:
        raise ConfigError("no labels yet: mark classes on a picture's page (vocfleet serve --allow-actions)")
    pictures: dict[str, bytes] = {}
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for sha, (top, rel) in where.items():
        try:
            data = read_inside(top, rel, MAX_FILE_BYTES)
        except (OSError, UnsafeFile) as exc:
            click.echo(f"{top}/{rel}: left out ({exc})", err=True)
            continue
        if hashlib.sha256(data).hexdigest() != sha:
            click.echo(f"{top}/{rel}: left out (changed since it was scored)", err=True)
            continue
        pictures[sha] = data
        # A picture of a VOC folder keeps its id, so a job on that folder takes the word as a correction of the same picture.
        whole = Path(top, rel)
        in_voc = whole.suffix == ".jpg" and whole.parent.name == "JPEGImages" and whole.parent.parent.joinpath("ImageSets", "Main").is_dir()
        ids[sha] = whole.stem if in_voc and whole.stem not in taken else sha[:16]
        taken.add(ids[sha])
    labels_of = {(r.sha256, r.voc_class): r.present for r in said}
    (out / "JPEGImages").mkdir(parents=True)
    (out / "ImageSets" / "Main").mkdir(parents=True)
    for sha, data in pictures.items():
        write_bytes(out / "JPEGImages" / f"{ids[sha]}.jpg", data)  # any format Pillow reads: decoding goes by content
    order = sorted(ids.values())
    back = {i: sha for sha, i in ids.items()}
    for split in ("train", "trainval"):  # what a job's --train-split names: VOC2007's train, or trainval
        write_bytes(out / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in order).encode())
        for cls in VOC_CLASSES:
            lines = [f"{i} {({True: 1, False: -1}).get(labels_of.get((back[i], cls)), 0)}\n" for i in order]
            write_bytes(out / "ImageSets" / "Main" / f"{cls}_{split}.txt", "".join(lines).encode())
    relabelled = sum(1 for sha in pictures if ids[sha] != sha[:16])
    marker = f"vocfleet labels export: {len(pictures)} pictures, {relabelled} of them from a VOC folder (named by their id there)\n"
    write_bytes(out / PEOPLES_LABELS, marker.encode())
    click.echo(
        f"wrote {len(pictures)} labelled picture(s) to {out} ({relabelled} from a VOC folder: their word replaces its label); "
        f"train on them with: vocfleet submit --voc-root VOC2007 --voc-root {out}"
    )


@labels.command("evaluate")
@format_option
def labels_evaluate(fmt: str) -> None:
    """Each active detector on the pictures people labelled for its class: AP and AUC on your own photos, beside its AP on VOC."""
    from vocfleet.db.labels import judged_by_people
    from vocfleet.db.registry import active_detectors
    from vocfleet.model.metrics import average_precision, roc_auc

    rows = []
    with database(read=True) as s:
        for d in active_detectors(s):
            probs, labels = judged_by_people(s, d.id, d.voc_class)
            if not probs:
                continue
            both = 0 < sum(labels) < len(labels)
            rows.append(
                {
                    "detector": d.id,
                    "class": d.voc_class,
                    "pictures": len(labels),
                    "there": sum(labels),
                    "ap": average_precision(probs, labels) if both else None,
                    "auc": roc_auc(probs, labels) if both else None,
                    "ap_on_voc": d.ap,
                }
            )
    if nothing_to_show(fmt, rows, "no labelled picture scored by an active detector yet: label pictures of a run (vocfleet serve --allow-actions)"):
        return
    echo_listing(render(rows, ["detector", "class", "pictures", "there", "ap", "auc", "ap_on_voc"], fmt))


COMMANDS = [score, resume_run, runs, results, predict, report, labels]
