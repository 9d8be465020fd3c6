"""HTML reports, checked in a real headless Chromium: no console errors, pictures show, the class filter works."""

from pathlib import Path

import pytest
from sqlalchemy import select

from vocfleet.db.models import Score, ScoredImage
from vocfleet.db.session import session_scope


def open_page(browser, path: Path):
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors


def test_run_report_in_browser(detectors, wild, tmp_path, browser, invoke):
    assert invoke("score", wild).exit_code == 0
    out = tmp_path / "report.html"
    res = invoke("report", 1, "--out", out)
    assert res.exit_code == 0 and out.is_file()
    page, errors = open_page(browser, out)
    with session_scope() as s:  # every picture where some class is present (fewer than the 24 a class shows)
        present = select(ScoredImage.rel_path, Score.voc_class).join(Score, Score.image_id == ScoredImage.id).where(Score.present.is_(True))
        rows = s.execute(present).all()
    shown, car_present = {r.rel_path for r in rows}, {r.rel_path for r in rows if r.voc_class == "car"}
    assert 0 < len(car_present) < len(shown)
    imgs = page.eval_on_selector_all(".card img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert len(imgs) == len(shown) and all(ok and w > 0 for ok, w in imgs)
    assert page.locator("text=truncated.jpg").count() == 1  # the errors table
    assert f"{len(shown)} of {len(shown)} pictures" in page.inner_text("#count")

    page.select_option("#cls", "car")
    page.check("#present")
    visible = page.eval_on_selector_all(".card:not([hidden])", "els => els.map(e => [e.querySelector('.path').textContent, JSON.parse(e.dataset.probs).car])")
    assert {v[0] for v in visible} == car_present
    probs = [v[1] for v in visible]
    assert probs == sorted(probs, reverse=True)
    assert f"{len(car_present)} of {len(shown)} pictures" in page.inner_text("#count")
    assert errors == []


def test_fleet_report_in_browser(detectors, tmp_path, browser, invoke):
    out = tmp_path / "fleet.html"
    assert invoke("report", "--fleet", "--out", out).exit_code == 0
    page, errors = open_page(browser, out)
    assert page.locator("table tr").count() == 3  # header + car + dog
    imgs = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert len(imgs) == 4 and all(w > 0 for w in imgs)
    assert errors == []


def test_report_needs_run_or_fleet(tmp_path, invoke):
    res = invoke("report", "--out", tmp_path / "x.html")
    assert res.exit_code == 2 and "give a scoring run id, or --fleet" in res.output
    assert not (tmp_path / "x.html").exists()


def test_report_unknown_run(tmp_path, invoke):
    res = invoke("report", 42, "--out", tmp_path / "x.html")
    assert res.exit_code == 2 and "no scoring run 42" in res.output
    res = invoke("report", 42, "--out", tmp_path / "x.html", "--dry-run")
    assert res.exit_code == 2 and "no scoring run 42" in res.output


def test_a_dry_run_checks_the_out_path_before_any_training_and_writes_nothing(data_dir, tmp_path, invoke):
    """make demo asks this before it trains: an existing REPORT, or one in the data folder, is refused in seconds, not after the start."""
    out = tmp_path / "fleet.html"
    res = invoke("report", "--fleet", "--out", out, "--dry-run")  # no detectors yet: the path alone is judged
    assert res.exit_code == 0 and "nothing written (dry run)" in res.output and not out.exists()
    out.write_text("a page someone keeps")
    res = invoke("report", "--fleet", "--out", out, "--dry-run")
    assert res.exit_code == 2 and "the file exists; pass --force" in res.output
    assert invoke("report", "--fleet", "--out", out, "--dry-run", "--force").exit_code == 0
    data_dir.mkdir(exist_ok=True)
    res = invoke("report", "--fleet", "--out", data_dir / "fleet.html", "--dry-run")
    assert res.exit_code == 2 and "where vocfleet keeps its own files" in res.output
    assert out.read_text() == "a page someone keeps" and not (data_dir / "fleet.html").exists()


def test_fleet_report_shows_settings_and_f1_and_plots_read_right(fake_voc, tmp_path, invoke):
    import io
    import re

    from PIL import Image

    from vocfleet.db.models import Detector
    from vocfleet.db.session import session_scope

    args = ["--arch", "tiny", "--epochs", 2, "--image-size", 32, "--batch-size", 8, "--max-batches", 2, "--lr", "0.001", "--ema", "0.9", "--seed", 7]
    assert invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", fake_voc, *args).exit_code == 0
    assert invoke("run").exit_code == 0
    assert invoke("report", "--fleet", "--out", tmp_path / "fleet.html").exit_code == 0
    page = (tmp_path / "fleet.html").read_text()
    heads = re.findall(r"<th>([^<]+)</th>", page)
    assert {"F1", "image size", "epochs", "batch", "peak LR", "init", "EMA", "seed", "job"} <= set(heads)
    with session_scope() as s:
        det = s.query(Detector).filter_by(voc_class="car").one()
        f1 = det.metrics["f1"]
    [overlaid] = re.findall(r"<img id=overlaid alt='[^']*' src='data:image/png;base64,([^']+)'>", page)  # both detectors' curves in one picture
    import base64

    assert Image.open(io.BytesIO(base64.b64decode(overlaid))).size[0] > 600
    page = page.replace(overlaid, "")
    row = re.findall(r"<td class=num>([^<]*)</td>", page)[: len(heads)]
    got = dict(zip(heads, row, strict=True))
    assert got["F1"] == f"{f1:.3f}" and got["image size"] == "32 px" and got["peak LR"] == "0.001" and got["EMA"] == "0.9" and got["seed"] == "7"
    for png in re.findall(r"src='data:image/png;base64,([^']+)'", page):
        im = Image.open(io.BytesIO(base64.b64decode(png)))
        assert round(im.info["dpi"][0]) == 150


@pytest.mark.parametrize("epochs", [[1], [1, 2], list(range(1, 21))])
def test_curves_mark_whole_epochs_even_for_a_one_epoch_fine_tune(epochs):
    """A class fine-tuned for one epoch showed 0.945 ... 1.050 under its one point; ticks are whole epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vocfleet.model.plots import _epoch_axis

    fig, ax = plt.subplots()
    ax.plot(epochs, [0.5] * len(epochs), "o")
    _epoch_axis(ax, epochs)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    shown = [t for t in ax.get_xticks() if lo <= t <= hi]
    plt.close(fig)
    assert shown and all(t == int(t) for t in shown) and min(epochs) - 0.5 == lo and hi == max(epochs) + 0.5
