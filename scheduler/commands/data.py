"""Data commands: download and check PASCAL VOC."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vocfleet.db.settings import get_settings
from vocfleet.model import ConfigError

from ..output import render
from .base import format_option


@click.group()
def data() -> None:
    """Get and check PASCAL VOC data."""


@data.command("download")
@click.option("--year", default="2007", help="VOC year (2007: trainval and test).")
@click.option("--dest", default=None, type=click.Path(file_okay=False), help="Folder for archives and VOCdevkit [default: VOCFLEET_DATA_DIR/voc].")
@click.option("--timeout", type=float, default=20.0, help="Seconds without data before giving up.")
def data_download(year: str, dest: str | None, timeout: float) -> None:
    """Download VOC (torchvision's archive list and MD5s), verify, extract; resumes an interrupted download."""
    from tqdm import tqdm

    from vocfleet.model.download import download_voc

    dest_path = Path(dest) if dest else get_settings().data_dir / "voc"
    bars: dict[str, tqdm] = {}
    tty = sys.stderr.isatty()
    last = {}

    def progress(name: str, done: int, total: int) -> None:
        if tty:
            bar = bars.setdefault(name, tqdm(desc=name, total=total or None, unit="B", unit_scale=True, file=sys.stderr, initial=done))
            bar.update(done - bar.n)
        elif done - last.get(name, 0) >= 50 << 20 or done == total:  # a line every 50 MB
            last[name] = done
            click.echo(f"{name}: {done >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""), err=True)

    try:
        root = download_voc(dest_path, year, progress=progress, timeout=timeout)
    finally:
        for bar in bars.values():
            bar.close()
    click.echo(f"VOC{year} ready at {root}; next: vocfleet data check {root}")


@data.command("check")
@click.argument("voc_root", type=click.Path())
@format_option
def data_check(voc_root: str, fmt: str) -> None:
    """Validate a VOC root: images per split, positives per class, files listed but missing."""
    from vocfleet.model.data import check_voc_root, voc_summary

    root = check_voc_root(voc_root)
    summary = voc_summary(root)
    if not summary["splits"]:
        raise ConfigError(f"{root}/ImageSets/Main has no <class>_<split>.txt lists: is this a VOC year folder?")
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
        return
    split_rows = [
        {
            "split": k,
            "listed": v["listed"],
            "present": v["present"],
            "missing": len(v["missing"]),
            "missing_ids": " ".join(v["missing"][:8]) + (" ..." if len(v["missing"]) > 8 else ""),
        }
        for k, v in summary["splits"].items()
    ]
    click.echo(render(split_rows, ["split", "listed", "present", "missing", "missing_ids"], fmt))
    splits = list(summary["splits"])
    class_rows = [{"class": c, **{f"{sp}_pos": v.get(sp, {}).get("positive") for sp in splits}} for c, v in summary["classes"].items()]
    click.echo("")
    click.echo(render(class_rows, ["class", *[f"{sp}_pos" for sp in splits]], fmt))


COMMANDS = [data]
