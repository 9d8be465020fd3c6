"""Self-contained HTML reports: one scoring run (thumbnails, classes, errors) or the whole fleet."""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vocfleet.db.models import Detector, ScoreRun
from vocfleet.db.registry import detector_rows
from vocfleet.db.results import ResultQuery, error_rows, image_scores, iter_results, summary_rows
from vocfleet.db.settings import get_settings
from vocfleet.model import ConfigError
from vocfleet.model.artifacts import ArtifactStore
from vocfleet.model.data import open_rgb
from vocfleet.model.scan import MAX_FILE_BYTES, read_inside

THUMB = 160
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;font-size:.9rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
#grid{display:flex;flex-wrap:wrap;gap:.8rem}
.card{width:180px;border:1px solid #ddd;border-radius:6px;padding:.4rem;font-size:.8rem}
.card img{width:160px;height:160px;object-fit:contain;background:#eee;display:block;margin:auto}
.card .path{word-break:break-all;font-weight:600;margin:.3rem 0}
.present{color:#0a6b0a;font-weight:700}.absent{color:#777}
.controls{margin:.6rem 0}.muted{color:#777}
"""


def _data_uri(png_or_jpeg: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(png_or_jpeg).decode()}"


def thumbnail(folder: str, rel_path: str) -> str | None:
    """A small JPEG of the picture as a data URI (None if it is gone, unreadable, or no longer a file inside its folder).

    Read as scoring reads (:func:`read_inside`): a file swapped since for a link out of the folder
    is not embedded, and a pipe does not hang the report.
    """
    try:
        im = open_rgb(io.BytesIO(read_inside(folder, rel_path, MAX_FILE_BYTES)), THUMB)
    except Exception:  # noqa: BLE001 - a report still renders without the picture
        return None
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return _data_uri(buf.getvalue(), "image/jpeg")


def _png(store: ArtifactStore, uri: str | None) -> str | None:
    """A plot from the artifact store (a local folder or object storage) as a data URI; None if it is gone."""
    data = store.read_bytes(uri) if uri else None
    return _data_uri(data, "image/png") if data else None


# (heading, detector_rows key, format): evaluation metrics, then how the detector was trained.
DETECTOR_TABLE = (
    ("class", "class", "{}"),
    ("AP", "ap", "{:.3f}"),
    ("AP (11-pt)", "ap11", "{:.3f}"),
    ("ROC AUC", "auc", "{:.3f}"),
    ("F1", "f1", "{:.3f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("always absent", "always_absent", "{:.3f}"),
    ("threshold", "threshold", "{:.3f}"),
    ("eval images", "eval_images", "{}"),
    ("eval split", "split", "{}"),
    ("job", "job", "{}"),
    ("image size", "image_size", "{} px"),
    ("epochs", "epochs", "{}"),
    ("batch", "batch_size", "{}"),
    ("peak LR", "lr", "{:g}"),
    ("init", "init", "{}"),
    ("EMA", "ema", "{:g}"),
    ("seed", "seed", "{}"),
)


def _detector_table(rows: list[dict[str, Any]]) -> str:
    """Rows of :func:`vocfleet.db.registry.detector_rows` as an HTML table (a blank for what a row lacks)."""

    def cell(value: Any, fmt: str) -> str:
        return "" if value is None else html.escape(fmt.format(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in DETECTOR_TABLE)
    body = "".join("<tr>" + "".join(f"<td class=num>{cell(r.get(k), f)}</td>" for _, k, f in DETECTOR_TABLE) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str, script: str = "") -> str:
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}<script>{script}</script></body></html>"
    )


RUN_SCRIPT = """
const cards = Array.from(document.querySelectorAll('.card'));
const grid = document.getElementById('grid');
const select = document.getElementById('cls');
const presentOnly = document.getElementById('present');
const count = document.getElementById('count');
function update() {
  const c = select.value;
  const keyOf = card => { const p = JSON.parse(card.dataset.probs); return c ? (p[c] ?? -1) : Math.max(...Object.values(p)); };
  const shown = cards.filter(card => {
    const present = JSON.parse(card.dataset.present);
    return !presentOnly.checked || (c ? present.includes(c) : present.length > 0);
  });
  cards.forEach(card => { card.hidden = !shown.includes(card); });
  shown.sort((a, b) => keyOf(b) - keyOf(a)).forEach(card => grid.appendChild(card));
  count.textContent = shown.length + ' of ' + cards.length + ' pictures';
}
select.addEventListener('change', update);
presentOnly.addEventListener('change', update);
update();
"""


PER_CLASS = 24  # pictures per class in a run's report: the most confident present ones
MAX_ERRORS = 500  # files not scored listed in a report (the count is always shown)


def run_report(s: Session, run_id: int) -> str:
    """HTML for one scoring run, the same size at any run size: per-class counts, the most confident
    pictures of each class (filterable), the files not scored (the first few hundred), the detectors.
    """
    run = s.get(ScoreRun, run_id)
    if run is None:
        raise ConfigError(f"no scoring run {run_id}: see 'vocfleet runs'")
    dets = list(s.scalars(select(Detector).where(Detector.id.in_(run.detector_ids)).order_by(Detector.voc_class)))
    picked: dict[int, dict[str, Any]] = {}
    for d in dets:
        for r in iter_results(s, ResultQuery((run_id,), voc_class=d.voc_class, present=True, sort="margin", limit=PER_CLASS)):
            picked.setdefault(r["image_id"], r)
    scores = image_scores(s, list(picked))
    cards = []
    for image_id, first in picked.items():
        rows = scores[image_id]
        folder, rel = first["folder"], first["image"]
        probs = {r["class"]: round(r["probability"], 4) for r in rows}
        present = [r["class"] for r in rows if r["present"]]
        src = thumbnail(folder, rel)
        img = f"<img alt='{html.escape(rel)}' src='{src}'>" if src else "<div class=muted>(file no longer readable)</div>"
        lines = "".join(f"<div class={'present' if r['present'] else 'absent'}>{html.escape(r['class'])} {r['probability']:.2f}</div>" for r in rows)
        cards.append(
            f"<div class=card data-probs='{html.escape(json.dumps(probs))}' data-present='{html.escape(json.dumps(present))}'>"
            f"{img}<div class=path>{html.escape(rel)}</div>{lines}</div>"
        )
    counts = summary_rows(s, (run_id,))
    count_html = (
        "<table><tr><th>class</th><th>images</th><th>present</th><th>mean probability</th></tr>"
        + "".join(
            f"<tr><td>{html.escape(c['class'])}</td><td>{c['images']}</td><td>{c['present']}</td><td>{c['mean_probability']:.3f}</td></tr>" for c in counts
        )
        + "</table>"
    )
    errors = error_rows(s, run_id, limit=MAX_ERRORS)
    err_html = (
        "<table><tr><th>file</th><th>reason</th></tr>"
        + "".join(f"<tr><td>{html.escape(e['file'])}</td><td>{html.escape(e['reason'])}</td></tr>" for e in errors)
        + "</table>"
        + (
            f"<p class=muted>The first {len(errors)} of {run.error_files}: vocfleet results {run_id} --errors lists all.</p>"
            if run.error_files > len(errors)
            else ""
        )
        if errors
        else "<p class=muted>none</p>"
    )
    options = "".join(f"<option value='{html.escape(d.voc_class)}'>{html.escape(d.voc_class)}</option>" for d in dets)
    body = (
        f"<h1>vocfleet scoring run {run.id}</h1>"
        f"<p>{html.escape(', '.join(run.folders))} — {run.status.value}: {run.scored_images} pictures scored, "
        f"{run.error_files} files not scored, of {run.total_files} seen. Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>"
        f"<h2>Classes</h2>{count_html}"
        f"<h2>Pictures</h2><p class=muted>For each class, up to {PER_CLASS} pictures where it is present, the most confident first; "
        f"query the rest with vocfleet results {run_id}.</p>"
        f"<div class=controls><label>class <select id=cls><option value=''>any class</option>{options}</select></label> "
        f"<label><input type=checkbox id=present> present only</label> <span id=count class=muted></span></div>"
        f"<div id=grid>{''.join(cards)}</div>"
        f"<h2>Files not scored ({run.error_files})</h2>{err_html}"
        f"<h2>Detectors used</h2>{_detector_table([r for r in detector_rows(s, include_inactive=True) if r['id'] in {d.id for d in dets}])}"
        "<p class=muted>Accuracy is shown beside the accuracy of answering 'absent' for every image; AP is the measure that matters.</p>"
    )
    return _page(f"vocfleet run {run.id}", body, RUN_SCRIPT)


def fleet_report(s: Session) -> str:
    """HTML for the active detectors: the per-class table and each one's training curves."""
    dets = list(s.scalars(select(Detector).where(Detector.active.is_(True)).order_by(Detector.voc_class)))
    if not dets:
        raise ConfigError("no trained detectors yet: run 'vocfleet submit ...' and 'vocfleet run' first")
    sections, store = [], ArtifactStore.from_settings(get_settings())
    for d in dets:
        plots = d.metrics.get("plots", {})
        imgs = "".join(f"<img alt='{k} of {html.escape(d.voc_class)}' src='{uri}'> " for k in ("curves", "pr") if (uri := _png(store, plots.get(k))))
        sections.append(f"<h2>{html.escape(d.voc_class)} (detector {d.id}, job {d.job_id})</h2>{imgs or '<p class=muted>no plots</p>'}")
    body = (
        f"<h1>vocfleet detectors</h1><p>{len(dets)} active detector(s). Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>"
        f"{_detector_table(detector_rows(s))}{''.join(sections)}"
    )
    return _page("vocfleet detectors", body)
