"""The results database: query options, streamed formats, views and indexes, on SQLite and PostgreSQL."""

import csv
import io
import json
import shutil

import pytest
from sqlalchemy import text

from tests.support import detectors_on_postgres
from vocfleet.db.session import ensure_schema, get_engine, session_scope

FORMULA = '=HYPERLINK("x").jpg'
ODD = 'line\nbreak "q" back\\slash.jpg'
DBS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


@pytest.fixture(params=DBS)
def scored(request, detectors, wild, invoke):
    """Two runs of the wild folder (18 pictures, 4 files not scored) with the car and dog detectors.

    Two of its pictures have hostile names: a spreadsheet formula, and a newline, quote and backslash.
    """
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")
        detectors_on_postgres(detectors)
    for name in (FORMULA, ODD):
        shutil.copy(wild / "grey.jpg", wild / name)
    assert invoke("score", wild).exit_code == 0
    assert invoke("score", wild, "--classes", "dog").exit_code == 0
    return request.param


def as_json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_formats_agree_and_stream(scored, invoke):
    rows = as_json(invoke("results", 1, "--format", "json"))
    lines = [json.loads(line) for line in invoke("results", 1, "--format", "jsonl").output.splitlines()]
    table = invoke("results", 1).output.strip().splitlines()
    parsed = list(csv.DictReader(io.StringIO(invoke("results", 1, "--format", "csv").output)))
    assert rows == lines and len(rows) == len(parsed) == 36
    assert len(table) == 36 + 1  # the newline in a name is escaped on a terminal, not printed
    assert sum("line\\x0abreak" in t for t in table) == 2 and not any(t.startswith("break") for t in table)
    images = [r["image"] for r in rows]
    assert FORMULA in images and ODD in images  # JSON keeps names exactly
    assert [("'" + i if i.startswith("=") else i) for i in images] == [r["image"] for r in parsed]  # CSV defuses formulas
    assert all(float(p["probability"]) == pytest.approx(r["probability"]) for p, r in zip(parsed, rows, strict=True))
    assert all(r["margin"] == pytest.approx(r["probability"] - r["threshold"]) for r in rows)
    assert all(r["present"] == (r["margin"] >= 0) for r in rows)
    by_image = [r["image"] for r in rows]
    assert all(by_image[i] == by_image[i + 1] for i in range(0, 36, 2))  # image by image
    for i in range(0, 36, 2):  # within an image, the class most above its threshold first
        assert rows[i]["margin"] >= rows[i + 1]["margin"]
    assert as_json(invoke("results", 1, "--class", "car", "--limit", 0 + 1, "--format", "json"))[0]["class"] == "car"


def test_sort_limit_and_present_by_margin(scored, invoke):
    by_prob = as_json(invoke("results", 1, "--sort", "probability", "--format", "json"))
    assert [r["probability"] for r in by_prob] == sorted((r["probability"] for r in by_prob), reverse=True)
    present = as_json(invoke("results", 1, "--present", "--format", "json"))
    assert present and all(r["present"] for r in present)
    assert [r["margin"] for r in present] == sorted((r["margin"] for r in present), reverse=True)  # default for --present
    top = as_json(invoke("results", 1, "--class", "car", "--present", "--limit", 3, "--format", "json"))
    assert len(top) == min(3, sum(r["class"] == "car" for r in present))
    assert top == [r for r in present if r["class"] == "car"][:3]
    by_image = as_json(invoke("results", 1, "--by-image", "--limit", 5, "--format", "json"))
    assert len(by_image) == 5
    for row in by_image:  # 'top' lists classes by margin: a present class before an absent one
        first = row["top"][0]["class"]
        if row["present"]:
            assert first in row["present"] and isinstance(row["present"], list)
    table = invoke("results", 1, "--by-image", "--limit", 1).output.splitlines()[1]
    assert f"{by_image[0]['top'][0]['class']} {by_image[0]['top'][0]['probability']:.2f}" in table


def test_also_and_without_pick_pictures_as_the_gallery_does(scored, invoke):
    """'dog, and car there too' and 'dog, no car': the web gallery's filters, in the CLI, on both databases."""
    rows = as_json(invoke("results", 1, "--format", "json"))
    has = {cls: {r["image"] for r in rows if r["class"] == cls and r["present"]} for cls in ("car", "dog")}
    dogs = {r["image"] for r in as_json(invoke("results", 1, "--class", "dog", "--also", "car", "--format", "json"))}
    assert dogs == {r["image"] for r in rows if r["class"] == "dog" and r["image"] in has["car"]}
    no_car = as_json(invoke("results", 1, "--class", "dog", "--present", "--without", "car", "--format", "json"))
    assert {r["image"] for r in no_car} == has["dog"] - has["car"] and all(r["present"] for r in no_car)
    by_image = as_json(invoke("results", 1, "--by-image", "--also", "dog", "--format", "json"))
    assert {r["image"] for r in by_image} == has["dog"] and all("dog" in r["present"] for r in by_image)


def test_across_runs_newest_score_and_summary(scored, invoke):
    newest = as_json(invoke("results", 1, 2, "--format", "json"))
    assert len(newest) == 36  # each file and class once
    assert {r["run"] for r in newest if r["class"] == "dog"} == {2} and {r["run"] for r in newest if r["class"] == "car"} == {1}
    assert as_json(invoke("results", "--all-runs", "--format", "json")) == newest
    summary = as_json(invoke("results", 1, "--summary", "--format", "json"))
    assert [s["class"] for s in summary] == ["car", "dog"] and all(s["images"] == 18 for s in summary)
    one = as_json(invoke("results", 1, "--format", "json"))
    for s in summary:
        mine = [r for r in one if r["class"] == s["class"]]
        assert s["present"] == sum(r["present"] for r in mine)
        assert s["mean_probability"] == pytest.approx(sum(r["probability"] for r in mine) / 18)
    assert [s["images"] for s in as_json(invoke("results", 1, 2, "--summary", "--format", "json"))] == [18, 18]  # each file once, newest score
    assert as_json(invoke("results", 1, "--class", "all", "--format", "json")) == one  # completion offers 'all': every class


def test_a_subfolder_scored_again_counts_its_pictures_once(scored, wild, invoke):
    holiday = sum(1 for r in as_json(invoke("results", 1, "--class", "car", "--format", "json")) if r["image"].startswith("holiday/"))
    assert holiday and invoke("score", wild / "holiday").exit_code == 0  # run 3: a subfolder of run 1's folder
    summary = as_json(invoke("results", 1, 3, "--summary", "--format", "json"))
    assert [s["images"] for s in summary] == [18, 18]
    newest = as_json(invoke("results", 1, 3, "--class", "car", "--format", "json"))
    assert len(newest) == 18 and sum(r["run"] == 3 for r in newest) == holiday


def test_bad_queries_one_line(scored, invoke):
    for args, message in (
        ((), "give run ids"),
        ((1, "--all-runs"), "give run ids"),
        ((99,), "no scoring run 99"),
        ((2, "--class", "car"), "run 2 has no car detector"),
        ((1, "--class", "sheep"), "run 1 has no sheep detector"),
        ((1, "--limit", 0), "--limit 0"),
        ((1, 2, "--errors"), "--errors takes one run id"),
        ((1, "--image", "nope.jpg"), "no scored image 'nope.jpg'"),
        ((1, "--image", ""), "--image ''"),
        ((1, "--summary", "--by-image"), "--by-image and --summary contradict each other"),
        ((1, "--errors", "--class", "car"), "--errors lists the files not scored"),
        ((1, "--limit", 2**70), "--limit 1180591620717411303424"),
        ((1, "--also", "dog", "--without", "dog"), "dog is in both --also and --without"),
        ((1, "--class", "dog", "--without", "dog"), "--class dog --without dog: no picture can be both"),
        ((2, "--also", "car"), "run 2 has no car detector"),
        ((1, "--summary", "--also", "car"), "--also picks pictures, which --summary and --errors do not list"),
        ((1, "--without", ""), "--without '': name one or more classes"),
    ):
        res = invoke("results", *args)
        assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, (args, res.output)


def test_views(scored):
    with get_engine().connect() as conn:
        labels = conn.execute(text('SELECT run_id, image, "class", probability, threshold, present FROM image_labels WHERE run_id = 1')).all()
        assert len(labels) == 36 and all(r.present == (r.probability >= r.threshold) for r in labels)
        dets = conn.execute(text('SELECT "class", ap, auc, always_absent, eval_images, split, threshold FROM active_detectors ORDER BY "class"')).all()
        assert [d[0] for d in dets] == ["car", "dog"] and all(isinstance(d.auc, float) and d.eval_images > 0 for d in dets)


@pytest.mark.services
def test_queries_are_index_scans_on_postgresql(pg_url):
    """20,000 images x 2 detectors written with SQL and analysed, then the plans of the two point queries."""
    from sqlalchemy.dialects import postgresql

    from vocfleet.db.models import Detector, Score, ScoredImage
    from vocfleet.db.results import ResultQuery, _select
    from vocfleet.db.runs import create_run

    ensure_schema()
    with session_scope() as s:
        dets = [Detector(voc_class=c, checkpoint_path="/x", sha256="0" * 64, threshold=0.5, ap=0.5, metrics={}) for c in ("car", "dog")]
        s.add_all(dets)
        s.flush()
        create_run(s, ["/pics"], dets, batch_size=64, max_attempts=3)
    with get_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scored_images (run_id, folder, rel_path, size_bytes, sha256, width, height) "
                "SELECT 1, '/pics', 'd' || (i / 1000) || '/' || i || '.jpg', 1000, md5(i::text) || md5((-i)::text), 64, 64 FROM generate_series(1, 20000) i"
            )
        )
        conn.execute(
            text(
                "INSERT INTO scores (run_id, image_id, detector_id, voc_class, probability, present) "
                "SELECT 1, i.id, d.id, d.voc_class, p, p >= 0.5 FROM scored_images i CROSS JOIN detectors d "
                "CROSS JOIN LATERAL (SELECT random() + i.id * 0 AS p) r"
            )
        )
        conn.execute(text("ANALYZE"))

        def plan(q: ResultQuery, order) -> str:
            stmt = _select(q).order_by(*order).limit(q.limit)
            sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
            return "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))

        top = plan(ResultQuery((1,), voc_class="car", present=True, limit=100), [Score.probability.desc()])
        assert "Index Scan Backward using ix_scores_gallery" in top and "Sort" not in top, top
        one = plan(ResultQuery((1,), image="d3/3333.jpg"), [ScoredImage.id])
        assert "ix_scored_images_run_rel_path" in one and "Seq Scan" not in one, one


def test_report_is_capped(scored, invoke, tmp_path, monkeypatch):
    import vocfleet.db.reports as report

    monkeypatch.setattr(report, "PER_CLASS", 2)
    monkeypatch.setattr(report, "MAX_ERRORS", 1)
    out = tmp_path / "r.html"
    assert invoke("report", 1, "--out", out).exit_code == 0
    page = out.read_text()
    assert page.count("class=card ") <= 4 and "The first 1 of 4" in page
    assert "<h2>Classes</h2>" in page and "<tr><td>car</td><td>18</td>" in page  # the counts cover every picture


def test_a_folders_gallery_is_the_same_read_from_its_pictures_or_by_the_walk(scored, wild, monkeypatch):
    """A small folder is read from its pictures (their scores by key, then sorted), a large one by walking the class's
    scores in gallery order: the same tiles, order, totals and positions either way, page after page."""
    from vocfleet.db import gallery

    def pages(**kw):
        out = []
        with session_scope() as s:
            q = gallery.GalleryQuery(run_id=1, limit=1, **kw)
            while True:
                p = gallery.gallery_page(s, q)
                out.append(([t.image_id for t in p.tiles], p.total, p.total_is_exact, p.start, p.previous is not None))
                if p.next is None:
                    return out
                q = gallery.GalleryQuery(run_id=1, limit=1, after=p.next, **kw)

    cases = [
        {"voc_class": "car", "folder": str(wild), "min_prob": 0.0},
        {"voc_class": "car", "folder": str(wild / "holiday"), "min_prob": 0.0, "max_prob": 1.0},
        {"voc_class": "dog", "folder": str(wild), "min_prob": 0.0, "without": ("car",)},
    ]
    small = [pages(**kw) for kw in cases]
    monkeypatch.setattr(gallery, "FEW_PICTURES", 0)  # every folder is large
    assert [pages(**kw) for kw in cases] == small
    assert [len(p) > 1 for p in small] == [True, True, True], small  # several pages each


def test_gallery_counts_exactly_from_the_runs_counts_else_up_to_a_cap(scored, monkeypatch):
    """A class alone: the run's own per-class count, exact at any size; with a filter: counted to a cap, then "more than"."""
    from vocfleet.db import gallery
    from vocfleet.db.models import ScoreRun

    monkeypatch.setattr(gallery, "COUNT_CAP", 5)
    with session_scope() as s:
        counts = s.get(ScoreRun, 1).class_counts
        page = lambda **kw: gallery.gallery_page(s, gallery.GalleryQuery(run_id=1, limit=2, **kw))
        plain = page(voc_class="car")
        assert (plain.total, plain.total_is_exact) == (counts["car"], True) and counts["car"] > 5
        ranged = page(voc_class="car", min_prob=0.0)  # every picture: counted, up to the cap
        assert (ranged.total, ranged.total_is_exact, ranged.start) == (5, False, 1)
        filtered = page(voc_class="car", min_prob=0.0, without=("dog",))
        from sqlalchemy import select

        from vocfleet.db.models import Score

        dogs = set(s.scalars(select(Score.image_id).where(Score.run_id == 1, Score.voc_class == "dog", Score.present)))
        cars = set(s.scalars(select(Score.image_id).where(Score.run_id == 1, Score.voc_class == "car")))
        really = len(cars - dogs)
        assert (filtered.total, filtered.total_is_exact) == (min(really, 5), really <= 5)
        deeper = page(voc_class="car", min_prob=0.0, after=ranged.next)
        assert deeper.start == 3  # two pictures ahead: its position, counted from the cursor
        far = page(voc_class="car", min_prob=0.0, after=page(voc_class="car", min_prob=0.0, after=deeper.next).next)
        assert far.start is None  # six pictures ahead, past the cap of five: no position claimed
