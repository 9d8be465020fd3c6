"""Self-contained HTML reports: one scoring run (thumbnails, classes, errors) or the whole fleet.

The rows come from :mod:`vocfleet.db.reports`; this module adds the pictures (thumbnails, plots as
data URIs) and renders the Jinja2 templates in ``templates/`` (HTML escaped by the engine).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jinja2

from vocfleet.db.reports import PER_CLASS, FleetReport, RunReport
from vocfleet.model.artifacts import ArtifactStore
from vocfleet.model.thumbnails import thumbnail as make_thumbnail

THUMB = 160


@cache
def templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("vocfleet.scheduler", "templates"), autoescape=True, undefined=jinja2.StrictUndefined)


def _data_uri(png_or_jpeg: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(png_or_jpeg).decode()}"


def thumbnail(folder: str, rel_path: str) -> str | None:
    """A small JPEG of the picture as a data URI (None if it is gone, unreadable, or no longer a file inside its folder).

    Read as scoring reads (:func:`vocfleet.model.thumbnails.thumbnail`): a file swapped since for
    a link out of the folder is not embedded, and a pipe does not hang the report.
    """
    jpeg = make_thumbnail(folder, rel_path, THUMB)
    return _data_uri(jpeg, "image/jpeg") if jpeg else None


def _png(store: ArtifactStore, uri: str | None) -> str | None:
    """A plot from the artifact store (a local folder or object storage) as a data URI; None if it is gone."""
    data = store.read_bytes(uri) if uri else None
    return _data_uri(data, "image/png") if data else None


@dataclass(frozen=True)
class Card:
    path: str
    src: str | None
    scores: list[dict[str, Any]]
    probs: dict[str, float]
    present: list[str]


def _generated() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M}"


def render_run(report: RunReport) -> str:
    """HTML for one scoring run: per-class counts, the most confident pictures of each class (filterable), the files not scored, the detectors."""
    cards = [
        Card(
            p.path,
            thumbnail(p.folder, p.path),
            p.scores,
            {r["class"]: round(r["probability"], 4) for r in p.scores},
            [r["class"] for r in p.scores if r["present"]],
        )
        for p in report.pictures
    ]
    page = templates().get_template("run.html")
    return page.render(title=f"vocfleet run {report.run_id}", r=report, pictures=cards, per_class=PER_CLASS, generated=_generated())


def render_fleet(report: FleetReport, store: ArtifactStore) -> str:
    """HTML for the active detectors: the per-class table and each one's training curves."""
    sections = [
        {"voc_class": d.voc_class, "id": d.id, "job_id": d.job_id, "plots": [(k, uri) for k in ("curves", "pr") if (uri := _png(store, d.plots.get(k)))]}
        for d in report.detectors
    ]
    curves = {f"{d.id} {d.voc_class}": report.epochs[d.id] for d in report.detectors if report.epochs.get(d.id)}
    overlaid = None
    if len(curves) > 1:  # every active detector's curves in one picture: which classes learn, which stall
        from vocfleet.model.plots import save_comparison_plot

        buf = io.BytesIO()
        save_comparison_plot(buf, curves, title="active detectors")
        overlaid = _data_uri(buf.getvalue(), "image/png")
    page = templates().get_template("fleet.html")
    return page.render(title="vocfleet detectors", rows=report.rows, sections=sections, overlaid=overlaid, generated=_generated())
