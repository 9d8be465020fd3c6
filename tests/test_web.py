"""`vocfleet serve` for real: the server in a subprocess, its JSON API read over HTTP, its pages driven in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import SHARED_VOC, free_port, make_fake_voc, wait_for
from vocfleet.db.session import dispose_engines

VOCFLEET = [sys.executable, "-m", "vocfleet"]
TOKEN = "a-token-of-at-least-16-chars"


def cli(*args: str) -> str:
    """The CLI in this process (click's runner), on the environment the fixture set: no interpreter start per command."""
    from click.testing import CliRunner

    from vocfleet.scheduler.cli import cli as vocfleet

    res = CliRunner().invoke(vocfleet, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def pictures(folder: Path, n: int, seed: int) -> None:
    """Photos in two subfolders: the shared VOC sample's (copied: a test changes some), else blobs of colour."""
    photos = sorted(SHARED_VOC.glob("JPEGImages/*.jpg"))[:n]
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / ("street" if i % 2 else "park")
        sub.mkdir(parents=True, exist_ok=True)
        if len(photos) == n:
            shutil.copyfile(photos[i], sub / f"img{i:03d}.jpg")
            continue
        arr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        arr[8:30, 10 + i % 30 : 30 + i % 30] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(arr).save(sub / f"img{i:03d}.jpg", quality=85)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two detectors trained by `vocfleet run`, a folder scored twice, and `vocfleet serve` (with actions) on a spare port."""
    base = tmp_path_factory.mktemp("web")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOCFLEET_")}
    env |= {"VOCFLEET_DATA_DIR": str(base / "data"), "VOCFLEET_WEB_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    voc = make_fake_voc(base / "VOC2007", n=48)
    quick = ["--arch", "tiny", "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--max-batches", "2"]
    folder = base / "holiday"
    pictures(folder, 120, seed=1)
    (folder / "park" / "notes.jpg").write_text("not a picture")
    os.symlink("/etc/passwd", folder / "street" / "secret.jpg")  # a link out of the folder: never read
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("VOCFLEET_")]:
            mp.delenv(name)
        mp.setenv("VOCFLEET_DATA_DIR", env["VOCFLEET_DATA_DIR"])
        dispose_engines()
        cli("submit", "--classes", "car,dog", "--start", "none", "--voc-root", voc, *quick)
        cli("run")
        cli("score", folder)
        cli("score", folder / "park")  # the same pictures again: a picture's page lists the other run
        cli("submit", "--classes", "dog", "--voc-root", voc, *quick, "--seed", "7", "--promote", "always")
        cli("run")  # a second dog detector, active now
        cli("score", folder / "park")  # run 3: the park again, with the new dog detector
        dispose_engines()
    port = free_port()
    log = open(base / "serve.log", "w")
    proc = subprocess.Popen([*VOCFLEET, "serve", "--port", str(port), "--allow-actions"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(url + "/api/runs") == 200, 60, "vocfleet serve to answer")
        yield {"url": url, "env": env, "folder": folder, "base": base}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _status(url: str) -> int | None:
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def get(site, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    """(status, headers, body) of a request to the server; 4xx and 5xx are returned, not raised."""
    req = urllib.request.Request(site["url"] + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def api(site, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    status, hdrs, body = get(site, path, method, headers)
    assert hdrs["content-type"].startswith("application/json"), (path, hdrs["content-type"])
    return status, json.loads(body)


def test_every_endpoint_answers_with_the_data_the_cli_shows(site):
    status, runs = api(site, "/api/runs")
    assert status == 200 and [r["run_id"] for r in runs] == [3, 2, 1]
    first = runs[-1]
    assert (first["status"], first["files"], first["scored"], first["errors"]) == ("succeeded", 122, 120, 2)
    assert first["classes"] == ["car", "dog"] and first["folders"] == [str(site["folder"])]  # lists, as /api/runs/ID gives them
    status, run = api(site, "/api/runs/1")
    assert status == 200 and [c["voc_class"] for c in run["classes"]] == ["car", "dog"]
    listed = subprocess.run([*VOCFLEET, "results", "1", "--summary", "--format", "json"], env=site["env"], capture_output=True, text=True, check=True)
    summary = {r["class"]: r["present"] for r in json.loads(listed.stdout)}
    assert {c["voc_class"]: c["present"] for c in run["classes"]} == summary  # the counts the CLI gives

    status, page = api(site, "/api/runs/1/gallery?class=car&limit=7")
    assert status == 200 and page["class"] == "car" and len(page["pictures"]) == min(7, summary["car"])
    probs = [p["probability"] for p in page["pictures"]]
    assert probs == sorted(probs, reverse=True) and all(p["present"] for p in page["pictures"])

    image_id = page["pictures"][0]["image_id"]
    status, pic = api(site, f"/api/pictures/{image_id}")
    assert status == 200 and {s["voc_class"] for s in pic["scores"]} == {"car", "dog"}
    assert all(s["detector_id"] and s["training"]["arch"] == "tiny" for s in pic["scores"])
    status, errors = api(site, "/api/runs/1/errors")
    assert status == 200 and errors["total"] == 2 and {e["file"] for e in errors["errors"]} == {"park/notes.jpg", "street/secret.jpg"}

    status, registry = api(site, "/api/detectors")
    assert status == 200 and [c["voc_class"] for c in registry] == ["car", "dog"] and all(c["active_id"] for c in registry)
    assert [len(c["detectors"]) for c in registry] == [1, 2] and registry[1]["detectors"][0]["active"]  # the active one first
    status, det = api(site, f"/api/detectors/{registry[0]['active_id']}")
    assert status == 200 and [e["epoch"] for e in det["epochs"]] == [1, 2] and det["detector"]["always_absent"] is not None
    assert set(det["plots"]) == {"curves", "pr"}
    assert get(site, f"/detectors/{det['detector']['detector_id']}/pr.png")[1]["content-type"] == "image/png"
    car_id = det["detector"]["detector_id"]
    status, m = api(site, f"/api/detectors/{car_id}/mistakes?limit=3")
    c = m["confusion"]
    assert status == 200 and m["recorded"] and sum(c.values()) == det["detector"]["eval_images"]
    assert (c["true_positives"] + c["true_negatives"]) / sum(c.values()) == pytest.approx(det["detector"]["accuracy"])  # the same threshold
    assert all(not j["label"] and j["probability"] >= m["threshold"] for j in m["false_positives"]) and len(m["false_positives"]) <= 3
    probs = [j["probability"] for j in m["false_negatives"]]
    assert probs == sorted(probs) and all(j["label"] and j["probability"] < m["threshold"] for j in m["false_negatives"])
    shown = (m["false_positives"] + m["false_negatives"] + m["near_threshold"])[0]["picture"]
    status, headers, body = get(site, f"/detectors/{car_id}/pictures/{shown}.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert get(site, f"/detectors/{car_id}/pictures/not-one-of-its.jpg")[0] == 404  # only pictures it was judged on
    assert get(site, f"/detectors/{car_id}/pictures/..%2F..%2Fetc%2Fpasswd.jpg")[0] in (400, 404)
    assert api(site, "/api/runs?tag=exp=nothing-has-it")[1] == [] and api(site, "/api/jobs?tag=exp=none")[1] == []  # tags filter as --tag does
    status, body = api(site, "/api/runs?tag=no-equals-sign")
    assert status == 400 and body["error"].startswith("tag='no-equals-sign'")
    status, jobs = api(site, "/api/jobs")
    assert status == 200 and sorted((j["voc_class"], j["status"], j["epochs_done"]) for j in jobs) == [("car", "succeeded", 2), *[("dog", "succeeded", 2)] * 2]

    pages = ["/runs", "/runs/1", "/runs/1/errors", "/runs/1/compare?other=3&class=dog", f"/pictures/{image_id}", "/detectors", "/jobs", "/api"]
    pages.append(f"/detectors/{det['detector']['detector_id']}")
    for page in pages:
        status, headers, body = get(site, page)
        assert status == 200 and headers["content-type"].startswith("text/html") and b"<h1>" in body, page

    dogs = sorted(d["detector_id"] for d in registry[1]["detectors"])
    status, both = api(site, f"/api/detectors/compare?ids={dogs[0]}&ids={dogs[1]}")
    assert status == 200 and [d["detector_id"] for d in both["detectors"]] == dogs and both["settings_that_differ"]["seed"] == [0, 7]
    status, headers, html = get(site, f"/detectors/compare?ids={dogs[0]}&ids={dogs[1]}")
    assert status == 200 and b"Settings that differ" in html and b"<th>seed</th><td>0</td><td>7</td>" in html
    status, headers, png = get(site, f"/detectors/compare.png?ids={dogs[0]}&ids={dogs[1]}&ids={car_id}")
    assert status == 200 and headers["content-type"] == "image/png" and png[:4] == b"\x89PNG"
    assert api(site, f"/api/detectors/compare?ids={car_id}")[0] == 400 and api(site, "/api/detectors/compare?ids=1&ids=99")[0] == 404
    assert b'name=ids value="1"' in get(site, "/detectors")[2]  # chosen on the registry page
    api_page = get(site, "/api")[2].decode()
    assert "/api/detectors/{detector_id}/mistakes" in api_page and "Where a detector is right and wrong" in api_page  # from the schema
    status, headers, body = get(site, f"/detectors/{car_id}")
    assert b"Where it is right and wrong" in body and f"/detectors/{car_id}/pictures/".encode() in body
    status, spec = api(site, "/openapi.json")
    paths = set(spec["paths"])
    assert {"/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/gallery", "/api/runs/{run_id}/export", "/api/pictures/{image_id}"} <= paths
    assert all(p.startswith("/api/") for p in paths)


def test_gallery_pages_follow_each_other_and_filters_combine(site):
    seen, after, pages, answers = [], "", 0, []
    while True:
        status, page = api(site, f"/api/runs/1/gallery?class=dog&min=0&limit=25{after}")
        assert status == 200 and (page["total"], page["total_is_exact"], page["start"]) == (120, True, 1 + 25 * pages)  # where you are
        assert (page["previous"] is None) == (pages == 0)
        seen += page["pictures"]
        answers.append(page)
        pages += 1
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    assert pages == 5 and len(seen) == 120 and len({p["image_id"] for p in seen}) == 120  # every picture once, over five pages
    for i in (4, 1):  # back from a page: the page before it, the same pictures
        back = api(site, f"/api/runs/1/gallery?class=dog&min=0&limit=25&before={answers[i]['previous']}")[1]
        assert back["pictures"] == answers[i - 1]["pictures"] and back["start"] == 1 + 25 * (i - 1) and back["next"] == answers[i - 1]["next"]
    html = get(site, f"/runs/1?class=dog&min=0&limit=25&after={answers[0]['next']}")[2].decode()
    assert "pictures 26–50 of 120" in html and 'id=previous href="/runs/1?' in html and "id=next" in html
    second = seen[1]["image_id"]  # a picture's page, reached from the gallery, steps through the same filter
    html = get(site, f"/pictures/{second}?class=dog&min=0")[2].decode()
    assert f'href="/pictures/{seen[0]["image_id"]}?class=dog&amp;min=0">previous' in html.replace("id=previous ", "")
    assert f'href="/pictures/{seen[2]["image_id"]}?class=dog&amp;min=0">next' in html.replace("id=next ", "") and "picture 2 of 120" in html
    assert "/pictures/" in get(site, "/runs/1?class=dog&min=0")[2].decode().split("id=grid")[1][:400]
    relative = api(site, "/api/runs/1/gallery?class=dog&min=0&limit=200&folder=park")[1]  # as tiles show paths
    assert relative["total"] == 60 and all(p["rel_path"].startswith("park/") for p in relative["pictures"])
    keys = [(p["present"], p["probability"], p["image_id"]) for p in seen]
    assert keys == sorted(keys, reverse=True)  # present first, then by probability

    both = api(site, "/api/runs/1/gallery?class=dog&also=car&limit=200")[1]["pictures"]
    assert all(set(p["filtered"]) == {"car"} for p in both)  # a tile shows the classes its filter names too
    not_car = api(site, "/api/runs/1/gallery?class=dog&without=car&limit=200")[1]["pictures"]
    dog = [p for p in seen if p["present"]]
    assert len(both) + len(not_car) == len(dog) and not {p["image_id"] for p in both} & {p["image_id"] for p in not_car}
    park = api(site, f"/api/runs/1/gallery?class=dog&min=0&limit=200&folder={site['folder']}/park")[1]["pictures"]
    assert len(park) == 60 and all(p["rel_path"].startswith("park/") for p in park)
    t = seen[0]["threshold"]
    near = api(site, f"/api/runs/1/gallery?class=dog&min={t - 0.05:.4f}&max={t + 0.05:.4f}&limit=200")[1]["pictures"]
    assert near and all(abs(p["margin"]) <= 0.0501 for p in near)


def test_a_run_page_and_a_picture_page_read_the_run_once(site, monkeypatch):
    """The gallery takes the run's scope (classes, folders, detectors, counts) from the page that read
    the run, and gives what the API's gallery, reading it alone, gives."""
    from sqlalchemy import event
    from starlette.requests import Request

    from vocfleet.db.session import session_scope
    from vocfleet.scheduler.web import pages
    from vocfleet.scheduler.web.app import create_app
    from vocfleet.scheduler.web.common import GalleryFilter

    monkeypatch.setenv("VOCFLEET_DATA_DIR", site["env"]["VOCFLEET_DATA_DIR"])
    dispose_engines()
    app = create_app()

    def request(path: str, query: str) -> Request:
        scope = {"type": "http", "method": "GET", "scheme": "http", "server": ("t", 80), "path": path, "headers": [], "app": app}
        return Request({**scope, "query_string": query.encode()})

    def listen(_conn, _cursor, statement: str, *_) -> None:
        if "FROM score_runs" in statement and "score_runs.id =" in statement:  # the run's row, not the list of runs
            reads.append(statement)

    reads: list[str] = []
    dog = GalleryFilter("dog", None, None, None, None, None)
    first = api(site, "/api/runs/1/gallery?class=dog&limit=2")[1]
    try:
        with session_scope() as s:
            event.listen(s.get_bind(), "before_cursor_execute", listen)
            run_html = pages.run_page(request("/runs/1", "class=dog"), s, 1, dog, limit=2).body.decode()
            run_reads, reads[:] = len(reads), []
            picture = first["pictures"][1]["image_id"]
            picture_html = pages.picture_page(request(f"/pictures/{picture}", "class=dog"), s, picture, dog).body.decode()
            event.remove(s.get_bind(), "before_cursor_execute", listen)
    finally:
        dispose_engines()
    assert (run_reads, len(reads)) == (1, 1)
    assert f"pictures 1–2 of {first['total']}" in run_html and f"picture 2 of {first['total']}" in picture_html
    assert f'href="/pictures/{first["pictures"][0]["image_id"]}?class=dog">previous' in picture_html.replace("id=previous ", "")


@pytest.mark.parametrize(
    "path, status, says",
    [
        ("/api/runs/99", 404, "run 99: no such run"),
        ("/api/runs/x", 400, "run_id='x'"),
        ("/api/runs/1/gallery?class=horse", 400, "class='horse': run 1 scored car, dog"),
        ("/api/runs/1/gallery?class=dog&without=dog", 400, "dog: asked to be both present and absent"),
        ("/api/runs/1/gallery?min=1.5", 400, "min='1.5'"),
        ("/api/runs/1/gallery?limit=0", 400, "limit='0'"),
        ("/api/runs/1/gallery?after=1_x_2", 400, "after='1_x_2': not a page cursor"),
        ("/api/runs/1/export?format=xml", 400, "format='xml'"),
        ("/api/runs/1/gallery?class=dog&folder=/etc", 400, "folder='/etc': not under the run's folders"),
        ("/api/pictures/99999", 404, "picture 99999: no such picture"),
        ("/api/detectors/99", 404, "detector 99: no such detector"),
        ("/api/nothing", 404, "/api/nothing: no such page"),
        (f"/api/runs/{2**63}", 400, f"run_id='{2**63}'"),  # past any integer column: refused, not the driver's overflow
        (f"/api/pictures/{2**64}", 400, f"image_id='{2**64}'"),
        (f"/api/detectors/{2**63}", 400, f"detector_id='{2**63}'"),
        (f"/api/runs/1/compare?other={2**63}&class=dog", 400, f"other='{2**63}'"),
        (f"/api/runs/1/gallery?after=1_0.5_{2**63}", 400, "not a page cursor"),
        ("/api/runs/1/gallery?after=1_nan_2", 400, "not a page cursor"),
        ("/api/runs/1/gallery?class=dog&min=0.8&max=0.2", 400, "min=0.8 is above max=0.2"),
    ],
)
def test_bad_requests_get_one_json_error(site, path, status, says):
    got, body = api(site, path)
    assert got == status and list(body) == ["error"] and says in body["error"] and "\n" not in body["error"], body


def test_where_two_detectors_of_a_class_disagree(site):
    """Runs 1 and 3 scored the park's pictures with different dog detectors: the comparison lists exactly the pictures they disagree on."""

    def dog_scores(run_id):
        rows = [json.loads(line) for line in get(site, f"/api/runs/{run_id}/export")[2].splitlines()]
        return {(r["sha256"], r["image"].split("/")[-1]): (r["present"], r["probability"]) for r in rows if r["class"] == "dog"}

    first, third = dog_scores(1), dog_scores(3)
    expected = {key for key in first.keys() & third.keys() if first[key][0] != third[key][0]}
    found, offset = [], 0
    while offset is not None:
        status, page = api(site, f"/api/runs/1/compare?other=3&class=dog&limit=7&offset={offset}")
        assert status == 200
        found += page["pictures"]
        offset = page["next_offset"]
    assert expected and {(p["rel_path"].split("/")[-1]) for p in found} == {name for _, name in expected} and len(found) == len(expected)
    gaps = [abs(p["probability"] - p["other_probability"]) for p in found]
    assert gaps == sorted(gaps, reverse=True) and all(p["present"] != p["other_present"] and p["detector_id"] != p["other_detector_id"] for p in found)
    status, body = api(site, "/api/runs/1/compare?other=99&class=dog")
    assert status == 404 and "run 99" in body["error"]


def test_thumbnails_only_of_recorded_files_and_a_placeholder_when_gone_or_changed(site):
    pics = api(site, "/api/runs/1/gallery?class=dog&min=0&limit=3")[1]["pictures"]
    status, headers, body = get(site, f"/thumbs/{pics[0]['image_id']}.jpg?size=320")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    for attempt in ("/thumbs/..%2F..%2F..%2Fetc%2Fpasswd.jpg", "/thumbs/%2Fetc%2Fpasswd.jpg", "/thumbs/1.jpg/../../etc/passwd", "/thumbs/1.jpg?size=99"):
        status, headers, body = get(site, attempt)
        assert status in (400, 404) and b"root:" not in body, attempt
    # Gone: a placeholder. Changed since it was scored (same name, other bytes): a placeholder, not the cached thumbnail.
    gone, changed = (site["folder"] / p["rel_path"] for p in pics[1:3])
    assert get(site, f"/thumbs/{pics[2]['image_id']}.jpg")[1].get("X-Vocfleet-Placeholder") is None  # cached now
    gone.rename(gone.with_suffix(".moved"))
    Image.new("RGB", (48, 64), "red").save(changed)
    try:
        for p in pics[1:3]:
            status, headers, body = get(site, f"/thumbs/{p['image_id']}.jpg")
            assert status == 200 and headers["X-Vocfleet-Placeholder"] == "1" and body.startswith(b"<svg")
    finally:
        gone.with_suffix(".moved").rename(gone)


def test_whole_run_export_streams(site):
    """The export arrives in chunks as the database reads it (no length known up front); a client reads it a chunk at a time."""
    req = urllib.request.urlopen(site["url"] + "/api/runs/1/export?format=jsonl", timeout=60)
    assert req.headers.get("transfer-encoding") == "chunked" and req.headers.get("content-length") is None
    rows, biggest, tail = 0, 0, b""
    while chunk := req.read(4096):
        biggest = max(biggest, len(chunk))
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            row = json.loads(line)
            assert set(row) >= {"image", "class", "probability", "present", "folder", "run"}
            rows += 1
    assert tail == b"" and rows == 120 * 2 and biggest <= 4096  # every score of the run, read in a fixed buffer
    csv = get(site, "/api/runs/1/export?format=csv")[2].decode().splitlines()
    assert csv[0].startswith("image,class,probability") and len(csv) == 1 + 240


def test_actions_need_the_token(site):
    dog = api(site, "/api/detectors")[1][1]
    status, body = api(site, f"/api/detectors/{dog['active_id']}/activate", "POST")
    assert status == 403 and "X-Vocfleet-Token" in body["error"]
    status, body = api(site, f"/api/detectors/{dog['active_id']}/activate", "POST", {"X-Vocfleet-Token": "wrong" * 5})
    assert status == 403
    status, body = api(site, f"/api/detectors/{dog['active_id']}/activate", "POST", {"X-Vocfleet-Token": TOKEN})
    assert status == 200 and "active dog detector" in body["done"]
    # What the CLI refuses, the app refuses: the first dog detector's file gone, or changed.
    data = Path(site["env"]["VOCFLEET_DATA_DIR"])
    with sqlite3.connect(data / "vocfleet.db") as conn:
        first, where = conn.execute("SELECT id, checkpoint_path FROM detectors WHERE voc_class = 'dog' ORDER BY id").fetchone()
    weights = data / "artifacts" / where
    weights.rename(weights.with_suffix(".moved"))
    try:
        status, body = api(site, f"/api/detectors/{first}/activate", "POST", {"X-Vocfleet-Token": TOKEN})
        assert status == 409 and body["error"].startswith(f"detector {first} not activated: ") and "missing" in body["error"], body
        weights.write_bytes(b"not the detector")
        status, body = api(site, f"/api/detectors/{first}/activate", "POST", {"X-Vocfleet-Token": TOKEN})
        assert status == 409 and "sha256" in body["error"], body
    finally:
        weights.with_suffix(".moved").replace(weights)
    assert api(site, "/api/detectors")[1][1]["active_id"] == dog["active_id"]  # still the one it was
    status, body = api(site, "/api/jobs/1/retry", "POST", {"X-Vocfleet-Token": TOKEN})
    assert status == 409 and "succeeded, not retried" in body["error"]
    status, body = api(site, "/api/jobs/99/cancel", "POST", {"X-Vocfleet-Token": TOKEN})
    assert status == 409


def _label(site, image_id: int, body: dict, token: str | None = TOKEN):
    return _post(site, f"/api/pictures/{image_id}/labels", json.dumps(body).encode(), "application/json", {"X-Vocfleet-Token": token} if token else {})


def test_people_label_pictures_and_the_label_follows_the_content(site):
    """A class marked present or absent on a picture is kept by its sha256 with who and when; the latest word counts, the rest is history."""
    tile = api(site, "/api/runs/1/gallery?class=dog&min=0&limit=1")[1]["pictures"][0]
    assert _label(site, tile["image_id"], {"class": "dog", "present": False}, token=None)[0] == 403  # an action: off without the token
    assert _label(site, tile["image_id"], {"class": "dog", "present": False, "who": "ana"})[0] == 200
    assert _label(site, tile["image_id"], {"class": "dog", "present": True, "who": "ben"})[0] == 200
    assert _label(site, tile["image_id"], {"class": "unicorn", "present": True})[0] == 400
    assert _label(site, 10**9, {"class": "dog", "present": True})[0] == 404
    same = [p for p in api(site, f"/api/pictures/{tile['image_id']}")[1]["elsewhere"]]
    for image_id in [tile["image_id"], *(o["image_id"] for o in same)]:  # every copy of the content carries it
        labels = api(site, f"/api/pictures/{image_id}")[1]["labels"]
        assert [(lb["voc_class"], lb["present"], lb["who"], lb["earlier"]) for lb in labels] == [("dog", True, "ben", 1)]
    listed = subprocess.run([*VOCFLEET, "labels", "--format", "json"], env=site["env"], capture_output=True, text=True, check=True)
    [row] = json.loads(listed.stdout)
    assert (row["class"], row["present"], row["who"], row["sha256"]) == ("dog", True, "ben", tile["sha256"]) and row["path"]
    assert b"people say" in get(site, f"/pictures/{tile['image_id']}")[2]


def test_a_detectors_mistake_is_marked_exported_and_trained_with(site, browser, tmp_path):
    """A detector's evaluation picture -> its page -> marked against its label -> `vocfleet labels` lists it -> exported
    under its VOC id -> a job on that VOC folder trains with the person's word instead of the list's."""
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept(TOKEN))  # the token prompt
    page.goto(site["url"] + "/detectors/1")
    page.locator("#mistakes ~ .grid .tile a").first.click()
    picture = page.url.rsplit("/", 1)[1]
    assert page.locator("h1").inner_text() == picture
    page.wait_for_function("document.getElementById('picture').naturalWidth > 0")
    was_there = page.locator("#verdict td").first.inner_text() == "car"
    with page.expect_navigation():  # marked, then the page reloads with the word
        page.click(f"#people tr[data-class=car] button[data-present={'false' if was_there else 'true'}]")
    row = page.locator("#people tr[data-class=car]").inner_text()
    assert ("not there" if was_there else "there") in row and "its label disagrees" in row, row
    assert errors == []

    listed = subprocess.run([*VOCFLEET, "labels", "--format", "json"], env=site["env"], capture_output=True, text=True, check=True)
    mine = [r for r in json.loads(listed.stdout) if r["path"] and r["path"].endswith(f"JPEGImages/{picture}.jpg")]
    assert [(r["class"], r["present"], r["who"]) for r in mine] == [("car", not was_there, "web")]
    status, body = api(site, f"/api/detectors/1/evaluation/{picture}/labels", "POST", {"X-Vocfleet-Token": TOKEN})
    assert status == 400 and "required" in body["error"]  # no body: refused before anything is stored
    assert get(site, "/detectors/1/evaluation/999999")[0] == 404  # not one of its pictures

    out = tmp_path / "ours"
    subprocess.run([*VOCFLEET, "labels", "export", out], env=site["env"], capture_output=True, text=True, check=True)
    said = dict(line.split() for line in (out / "ImageSets" / "Main" / "car_trainval.txt").read_text().splitlines())
    assert said[picture] == ("-1" if was_there else "1") and (out / "JPEGImages" / f"{picture}.jpg").is_file()

    from vocfleet.model.config import TrainConfig
    from vocfleet.model.data import role_labels

    voc = site["base"] / "VOC2007"
    env = {**site["env"], "VOCFLEET_DATA_DIR": str(tmp_path / "data")}  # a job of its own, in a database of its own
    quick = ["--arch", "tiny", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--max-batches", "2"]
    submit = [*VOCFLEET, "submit", "--classes", "car", "--start", "none", "--voc-root", voc, "--voc-root", out, *quick]
    subprocess.run(submit, env=env, check=True, capture_output=True)
    subprocess.run([*VOCFLEET, "run"], env=env, check=True, capture_output=True)
    [job] = json.loads(subprocess.run([*VOCFLEET, "status", "--format", "json"], env=env, capture_output=True, text=True, check=True).stdout)
    assert job["status"] == "succeeded"
    train, evaluation = role_labels(TrainConfig(voc_class="car", voc_root=str(voc), more_roots=(str(out),)), voc)
    assert {**train, **evaluation}[picture] == (0 if was_there else 1)  # the person's word, where the job uses the picture


def test_several_pictures_are_marked_from_the_gallery(site, browser):
    """Three tiles chosen (a click on a box does not open the picture), one word for all of them; all or nothing by the API."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.on("dialog", lambda d: d.accept(TOKEN))
    page.goto(site["url"] + "/runs/1?class=car&min=0")
    boxes = page.locator("#grid input.pick")
    chosen = [boxes.nth(i).get_attribute("value") for i in (1, 2, 3)]
    for i in (1, 2, 3):
        boxes.nth(i).click()
    assert page.url.endswith("/runs/1?class=car&min=0") and page.locator("#picked").inner_text() == "3 chosen"
    page.select_option("#mark select", "bird")
    page.click("#mark button[data-present=true]")
    page.wait_for_function("document.getElementById('picked').textContent.startsWith('marked')")
    assert "3 picture(s): bird present" in page.locator("#picked").inner_text() and boxes.nth(1).is_checked() is False
    for image_id in chosen:
        assert ("bird", True, "web") in {(lb["voc_class"], lb["present"], lb["who"]) for lb in api(site, f"/api/pictures/{image_id}")[1]["labels"]}
    untouched = boxes.nth(0).get_attribute("value")
    body = json.dumps({"pictures": [int(untouched), 10**9], "class": "bird", "present": True}).encode()
    status, answer = _post(site, "/api/labels", body, "application/json", {"X-Vocfleet-Token": TOKEN})
    assert status == 404 and "nothing labelled" in answer["error"]
    assert not [lb for lb in api(site, f"/api/pictures/{untouched}")[1]["labels"] if lb["voc_class"] == "bird"]  # all or nothing
    assert _post(site, "/api/labels", body, "application/json")[0] == 403  # an action: the token

    car = api(site, "/api/runs/1/gallery?class=car&min=0&limit=4")[1]["pictures"]  # the run's answers beside people's word
    for tile, there in zip(car, (True, False, True, False), strict=True):
        body = json.dumps({"pictures": [tile["image_id"]], "class": "car", "present": there}).encode()
        assert _post(site, "/api/labels", body, "application/json", {"X-Vocfleet-Token": TOKEN})[0] == 200
    said = [(t["present"], there) for t, there in zip(car, (True, False, True, False), strict=True)]
    k = api(site, "/api/runs/1")[1]["judged_by_people"]["car"]
    assert (k["true_positives"], k["false_positives"], k["false_negatives"], k["true_negatives"]) == (
        said.count((True, True)),
        said.count((True, False)),
        said.count((False, True)),
        said.count((False, False)),
    )
    page.goto(site["url"] + "/runs/1")
    assert "4 labelled by people" in page.locator("#classes tr[data-class=car]").inner_text()


def test_jobs_lead_to_their_detectors_and_compare_and_detectors_sort(site, browser):
    """A job's id opens its detector; jobs chosen on the jobs page are compared; the detectors page sorts by a setting or tag."""
    page = browser.new_page()
    page.goto(site["url"] + "/jobs")
    made = {r.get_attribute("data-job"): r.locator("a[title='its detector']").get_attribute("href") for r in page.locator("#jobs tr[data-job]").all()}
    assert made == {"1": "/detectors/1", "2": "/detectors/2", "3": "/detectors/3"}
    page.check("#jobs tr[data-job='2'] input[name=ids]")
    page.check("#jobs tr[data-job='3'] input[name=ids]")
    page.click("#choose button")
    assert page.locator("h1").inner_text() in ("Detectors 2, 3 side by side", "Detectors 3, 2 side by side") and "seed" in page.locator("#differ").inner_text()

    def order(query: str) -> list[str]:
        page.goto(site["url"] + "/detectors" + query)
        return [r.get_attribute("data-detector") for r in page.locator("#class-dog + table tr[data-detector]").all()]

    assert order("") == ["3", "2"] and order("?sort=seed") == ["3", "2"]  # the active one first, whatever the order
    assert page.locator("#sorting select").input_value() == "seed"
    assert get(site, "/detectors?sort=colour")[0] == 400
    assert get(site, "/detectors?tag=recipe")[0] == 200  # no detector has it: the order stays


def test_a_person_scores_one_picture_from_the_browser(site, browser, tmp_path):
    """The upload form: a picture chosen, every active detector's answer shown as the API gives it; a text file refused in one line."""
    photo = next(p for p in sorted(site["folder"].rglob("*.jpg")) if p.is_file() and not p.is_symlink() and p.name != "notes.jpg")
    expected = _post(site, "/api/score", photo.read_bytes())[1]
    page = browser.new_page()
    page.goto(site["url"] + "/score")
    page.set_input_files("#picture", str(photo))
    page.click("#upload button")
    page.wait_for_selector("#answer:not([hidden])")
    shown = [r.locator("td").all_inner_texts() for r in page.locator("#answer tbody tr").all()]
    assert [(c[0], c[1]) for c in shown] == [(a["class"], f"{a['probability']:.3f}") for a in expected["classes"]]
    assert page.locator("#said").inner_text().startswith(f"{expected['width']} x {expected['height']} px")
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    page.set_input_files("#picture", str(text))
    page.click("#upload button")
    page.wait_for_function("document.getElementById('said').textContent.startsWith('not a picture')")


def test_read_only_by_default_a_password_when_set_and_setup_mistakes_in_one_line(site, invoke, monkeypatch):
    # Each setup mistake is refused before anything is served: the CLI in this process, on the site's data.
    monkeypatch.setenv("VOCFLEET_DATA_DIR", site["env"]["VOCFLEET_DATA_DIR"])
    monkeypatch.setenv("VOCFLEET_WEB_TOKEN", "short")
    res = invoke("serve", "--allow-actions", "--port", free_port())
    assert res.exit_code == 2 and res.output.startswith("vocfleet: error: --allow-actions needs a secret of at least 16 characters")
    with monkeypatch.context() as without_extra:
        without_extra.setitem(sys.modules, "uvicorn", None)
        res = invoke("serve")
    assert res.exit_code == 2 and res.output.splitlines() == [
        "vocfleet: error: vocfleet serve needs the web extra (uvicorn is missing): pip install 'vocfleet[web]'"
    ]
    for token in (" " * 16, "a" * 20, "  a-token-of-at-least-16  "):  # guessable, or spaces a copy and paste may add
        monkeypatch.setenv("VOCFLEET_WEB_TOKEN", token)
        res = invoke("serve", "--allow-actions", "--port", free_port())
        assert res.exit_code == 2 and "not easily guessed and without spaces" in res.output, (token, res.output)
    port = free_port()
    res = invoke("serve", "--host", "0.0.0.0", "--port", port)
    assert res.exit_code == 2 and res.output.splitlines() == [
        f"vocfleet: error: --host 0.0.0.0: every machine that reaches port {port} could read the results; set VOCFLEET_WEB_PASSWORD, "
        "or pass --no-password to serve them to all"
    ]
    taken = site["url"].rsplit(":", 1)[1].rstrip("/")
    res = invoke("serve", "--port", taken)
    assert res.exit_code == 2 and "cannot listen there (Address already in use)" in res.output and "serving" not in res.output, res.output
    port = free_port()
    env = {**site["env"], "VOCFLEET_WEB_PASSWORD": "sesame"}  # behind a password, as compose runs it
    proc = subprocess.Popen([*VOCFLEET, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _status(f"http://127.0.0.1:{port}/api/runs") == 401, 60, "a read-only server behind a password")
        login = {"Authorization": "Basic " + base64.b64encode(b"anyone:sesame").decode()}
        assert urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/runs", headers=login), timeout=10).status == 200
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs/1/retry", method="POST", headers={"X-Vocfleet-Token": TOKEN, **login})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 403 and "read-only" in json.loads(refused.value.read())["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_without_a_password_only_its_own_names_are_answered(site):
    """A page on evil.example whose name resolves to 127.0.0.1 (DNS rebinding) sends Host: evil.example: refused."""
    for host, status in (("evil.example", 421), (f"evil.example:{site['url'].rsplit(':', 1)[1].rstrip('/')}", 421), ("localhost", 200), ("127.0.0.1:1", 200)):
        got = get(site, "/api/runs", headers={"Host": host})[0]
        assert got == status, (host, got)


def test_a_person_browses_runs_gallery_picture_and_detector(site, browser):
    """Runs -> a run -> the gallery filtered to dog -> the next page -> a picture -> its detector; screenshots kept in docs/."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    shots = {}

    def shot(name: str) -> None:
        shots[name] = page.screenshot()

    page.goto(site["url"] + "/")
    assert page.locator("h1").inner_text() == "Scoring runs"
    assert page.locator("#runs tr[data-run='1'] .status").inner_text() == "succeeded"
    shot("runs")
    page.click("#runs a[href='/runs/1']")
    assert page.locator("h1").inner_text().startswith("Scoring run 1")
    counts = {r.get_attribute("data-class") for r in page.locator("#classes tr[data-class]").all()}
    assert counts == {"car", "dog"}

    page.select_option("#filters select[name=class]", "dog")
    page.fill("#filters input[name=min]", "0")
    page.click("#filters button")
    assert "Pictures with dog" in page.locator("#gallery-title").inner_text()
    tiles = page.locator("#grid .tile")
    assert tiles.count() == 48
    first_page = [t.get_attribute("data-image") for t in tiles.all()]
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")  # every thumbnail shows
    shot("run")
    page.click("#next")
    second_page = [t.get_attribute("data-image") for t in page.locator("#grid .tile").all()]
    assert len(second_page) == 48 and not set(first_page) & set(second_page)

    page.locator("#grid .tile").first.click()
    assert page.locator("#scores tr[data-class]").count() == 2
    page.wait_for_function("document.getElementById('picture').naturalWidth > 0")
    assert page.locator("#elsewhere li").count() in (0, 1)
    shot("picture")
    page.locator("#scores tr[data-class='dog'] a").first.click()
    assert page.locator("h1").inner_text().startswith("Detector") and "dog" in page.locator("h1").inner_text()
    assert page.locator("#epochs tr").count() == 3  # a header and two epochs
    # the curves and the PR curve (the mistakes' thumbnails below load lazily, as they are scrolled to)
    page.wait_for_function("Array.from(document.querySelectorAll('figure img')).every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("figure img").count() == 2
    shot("detector")
    assert errors == []
    keep = Path(os.environ.get("WEB_SCREENSHOTS") or site["base"])  # WEB_SCREENSHOTS=docs: refresh the README's pictures
    for name, png in shots.items():
        (keep / f"web-{name}.png").write_bytes(png)


def test_a_detectors_page_keeps_every_decision(site):
    with sqlite3.connect(Path(site["env"]["VOCFLEET_DATA_DIR"]) / "vocfleet.db") as conn:
        (first,) = conn.execute("SELECT min(id) FROM detectors WHERE voc_class = 'dog'").fetchone()
    status, _, body = get(site, f"/detectors/{first}")
    page = body.decode()
    assert status == 200 and "every decision (" in page and "first detector of its class" in page and "replaced by detector" in page, page[:2000]
    assert "32 px, 2 epochs, init" in page  # the job's settings, counted as `submit` counts them ("1 epoch")


def test_text_stored_before_it_was_refused_still_renders(fake_voc, invoke, data_dir):
    """A tag holding a byte that is not UTF-8 (older versions stored it) took /jobs, /api/jobs and /api/detectors down with 500s."""
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--tag", "team=x", "--name", "mine").exit_code == 0
    with sqlite3.connect(data_dir / "vocfleet.db") as conn:
        conn.execute("""UPDATE train_jobs SET tags = '{"team": "caf\\udce9"}'""")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOCFLEET_")} | {"VOCFLEET_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen([*VOCFLEET, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _status(f"http://127.0.0.1:{port}/api/jobs") == 200, 60, "the server")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=10).read()
        assert json.loads(body)[0]["tags"] == {"team": "caf\udce9"}  # escaped in the JSON, read back as stored
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs", timeout=10).read().decode()
        assert "caf\\udce9" in page
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_openapi_describes_every_answer(data_dir):
    """Every /api/ route names what it answers (typed records), so a client can be generated from /openapi.json."""
    from vocfleet.scheduler.web.app import create_app

    spec = create_app().openapi()
    undescribed = [
        f"{method.upper()} {path}"
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if not all(media.get("schema") for media in op["responses"]["200"].get("content", {}).values()) or not op["responses"]["200"].get("content")
    ]
    assert not undescribed and all(p.startswith("/api/") for p in spec["paths"])  # the pages are not in the schema
    jobs = spec["paths"]["/api/jobs"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert jobs["items"]["$ref"].endswith("/JobRecord")
    record = spec["components"]["schemas"]["JobRecord"]["properties"]
    assert {"job_id", "voc_class", "status", "epochs_done", "epochs", "tags"} <= set(record)
    assert spec["components"]["schemas"]["RunRecord"]["properties"]["folders"]["type"] == "array"  # lists are lists


def _post(site, path: str, body: bytes, content_type: str = "image/jpeg", headers: dict[str, str] | None = None):
    req = urllib.request.Request(site["url"] + path, data=body, method="POST", headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_one_picture_scored_over_http_as_a_run_scores_it(site):
    """POST /api/score: every active detector's answer for one picture, the same numbers a scoring run gave it; nothing stored."""
    from concurrent.futures import ThreadPoolExecutor

    status, pics = api(site, "/api/runs/3/gallery?class=dog&min=0&max=1&limit=1")  # run 3 scored with the active detectors
    tile = pics["pictures"][0]
    photo = (Path(tile["folder"]) / tile["rel_path"]).read_bytes()
    status, got = _post(site, "/api/score", photo)
    assert status == 200 and got["sha256"] == tile["sha256"] and {c["class"] for c in got["classes"]} == {"car", "dog"}
    status, picture = api(site, f"/api/pictures/{tile['image_id']}")
    scored = {c["voc_class"]: (c["probability"], c["detector_id"]) for c in picture["scores"]}
    for c in got["classes"]:
        assert c["probability"] == pytest.approx(scored[c["class"]][0], abs=1e-4) and c["detector_id"] == scored[c["class"]][1]
        assert c["present"] == (c["probability"] >= c["threshold"])
    margins = [c["probability"] - c["threshold"] for c in got["classes"]]
    assert margins == sorted(margins, reverse=True)  # the class most above its threshold first
    with ThreadPoolExecutor(6) as pool:  # requests together: each gets its own answer
        answers = list(pool.map(lambda _: _post(site, "/api/score", photo), range(6)))
    # the same answer, to float noise: a batch of several runs other kernels than a batch of one
    for status, a in answers:
        assert status == 200 and [(c["class"], c["detector_id"]) for c in a["classes"]] == [(c["class"], c["detector_id"]) for c in got["classes"]]
        assert [c["probability"] for c in a["classes"]] == pytest.approx([c["probability"] for c in got["classes"]], abs=1e-5)
    assert api(site, "/api/runs")[1][0]["run_id"] == 3  # no run was made

    assert _post(site, "/api/score", b"")[0] == 400
    status, said = _post(site, "/api/score", b"just text, not a picture", "text/plain")
    assert status == 400 and said["error"].startswith("not a picture vocfleet scores: not an image")
    status, said = _post(site, "/api/score", b"\xff" * (33 * 2**20))
    assert status == 413 and "over 32 MB" in said["error"]
    if shutil.which("curl"):  # as the page tells a shell user to
        out = subprocess.run(["curl", "-s", "--data-binary", "@-", site["url"] + "/api/score"], input=photo, capture_output=True, check=True)
        assert json.loads(out.stdout)["classes"] == got["classes"]
    assert b"/api/score" in get(site, "/score")[2]
