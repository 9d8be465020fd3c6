"""HTML reports, checked in a real headless Chromium: no console errors, pictures show, the class filter works."""

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from vocfleet.db.models import Score, ScoredImage
from vocfleet.db.session import session_scope

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


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
    imgs = page.eval_on_selector_all(".card img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert len(imgs) == 16 and all(ok and w > 0 for ok, w in imgs)
    assert page.locator("text=truncated.jpg").count() == 1  # the errors table
    assert "16 of 16 pictures" in page.inner_text("#count")

    with session_scope() as s:
        car_present = {
            r.rel_path
            for r in s.execute(
                select(ScoredImage.rel_path).join(Score, Score.image_id == ScoredImage.id).where(Score.voc_class == "car", Score.present.is_(True))
            )
        }
    page.select_option("#cls", "car")
    page.check("#present")
    visible = page.eval_on_selector_all(".card:not([hidden])", "els => els.map(e => [e.querySelector('.path').textContent, JSON.parse(e.dataset.probs).car])")
    assert {v[0] for v in visible} == car_present
    probs = [v[1] for v in visible]
    assert probs == sorted(probs, reverse=True)
    assert f"{len(car_present)} of 16 pictures" in page.inner_text("#count")
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
