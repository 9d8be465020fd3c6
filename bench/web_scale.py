"""The web app at scale: `vocfleet serve` over the run of N images x 20 detectors that results_scale.py builds.

Builds the run on PostgreSQL (or reuses it: --keep), stores its per-class counts as a run that
ends does (``db.runs.class_presence``), starts the real server as a subprocess and times each page
with an HTTP client on the same machine (median of 20 requests; wall time at the client, so the
server's own time is a little less). Gallery pages deep in the run are reached with the cursor
the API hands out (the one for page 5,000 is read once from the database, untimed). Then the
whole run is read through the export endpoint, and the server's peak memory (VmHWM) is reported.

Targets (issue 24, PostgreSQL, N = 1,000,000): a run's page and any gallery page (48 pictures'
metadata) at most 150 ms, a picture's page at most 100 ms, the server at most 300 MB.

    python bench/web_scale.py [--images 1000000] [--keep] [--no-export]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from common import machine, served, table
from results_scale import build

REPEAT = 20


def timed(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return time.perf_counter() - start, body


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


LABELLED = 2_000  # pictures people labelled (car and dog): what a run's page counts against its answers


def label_some(s, n: int) -> int:
    """People's word on car and dog for n pictures of run 1 spread over it (kept if an earlier run of this added them)."""
    from sqlalchemy import func, select

    from vocfleet.db.labels import add_label
    from vocfleet.db.models import PictureLabel, ScoredImage

    if s.scalar(select(func.count()).select_from(PictureLabel)):
        return s.scalar(select(func.count(func.distinct(PictureLabel.sha256))))
    last = s.scalar(select(func.max(ScoredImage.id)))
    step = max(1, last // n)
    shas = s.scalars(select(ScoredImage.sha256).where(ScoredImage.id % step == 0).limit(n)).all()
    for i, sha in enumerate(shas):
        add_label(s, sha, "car", i % 3 == 0, "bench")
        add_label(s, sha, "dog", i % 5 == 0, "bench")
    return len(shas)


def cursor_at(url: str, voc_class: str, position: int) -> str:
    """The gallery cursor after ``position`` pictures of a class (OFFSET once, untimed: what paging there would hand out)."""
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    with eng.connect() as c:
        present, prob, image_id = c.execute(
            text(
                "SELECT present, probability, image_id FROM scores WHERE run_id = 1 AND voc_class = :c AND present "
                "ORDER BY present DESC, probability DESC, image_id DESC OFFSET :n LIMIT 1"
            ),
            {"c": voc_class, "n": position - 1},
        ).one()
    eng.dispose()
    return f"{int(present)}_{prob!r}_{image_id}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="reuse the database an earlier run of this or results_scale.py built")
    ap.add_argument("--no-export", action="store_true", help="skip reading the whole run through the export endpoint")
    args = ap.parse_args()
    url = os.environ.get("VOCFLEET_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/vocfleet_scale")
    print(f"machine: {machine(torch_info=False)}")
    t = time.perf_counter()
    if not args.keep:
        build(url, args.images)
    from vocfleet.db.models import ScoreRun
    from vocfleet.db.runs import class_presence
    from vocfleet.db.session import session_scope, upgrade_database

    upgrade_database(url)
    with session_scope(url) as s:
        run = s.get(ScoreRun, 1)
        if run.class_counts is None:
            run.class_counts = class_presence(s, 1)  # what finish_run_if_done writes when a run ends
        labelled = label_some(s, LABELLED)
    print(f"postgresql: {args.images:,} images x 20 detectors, {labelled:,} of them labelled by people, ready in {time.perf_counter() - t:.0f} s")

    tmp = Path(tempfile.mkdtemp(prefix="vocfleet-web-"))
    port = 8700 + os.getpid() % 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOCFLEET_")} | {"VOCFLEET_DATABASE_URL": url, "VOCFLEET_DATA_DIR": str(tmp)}
    with served(env, port) as (server, base):
        deep = cursor_at(url, "car", min(48 * 4999, args.images // 4))  # page 5,000, or deep in a smaller run
        mid = args.images // 2
        cases = [
            ("runs page", "/runs", None),
            ("a run's page (gallery page 1 of car)", "/runs/1?class=car", 0.150),
            ("GET /api/runs/1", "/api/runs/1", 0.150),
            ("gallery page 1 (car), API", "/api/runs/1/gallery?class=car", 0.150),
            ("gallery page 5,000 (car), page", f"/runs/1?class=car&after={deep}", 0.150),
            ("gallery page 5,000 (car), API", f"/api/runs/1/gallery?class=car&after={deep}", 0.150),
            ("dog and not person, page 1", "/runs/1?class=dog&without=person", 0.150),
            ("dog and cat, not person, page 1", "/runs/1?class=dog&also=cat&without=person", 0.150),
            ("car near its threshold (0.45-0.55)", "/runs/1?class=car&min=0.45&max=0.55", 0.150),
            ("car under one folder", "/runs/1?class=car&folder=/photos/0500", 0.150),
            ("gallery page 4,999 (car), going back (before=)", f"/api/runs/1/gallery?class=car&before={deep}", 0.150),
            ("a picture's page", f"/pictures/{mid}", 0.100),
            ("a picture's page from the car gallery (previous, next, position)", f"/pictures/{mid}?class=car&min=0", 0.100),
            ("GET /api/pictures/ID", f"/api/pictures/{mid}", 0.100),
            ("detectors page", "/detectors", None),
        ]
        rows = []
        for name, path, target in cases:
            timed(base + path)  # a first request warms the connection pool, not the answer
            times = [timed(base + path)[0] for _ in range(REPEAT)]
            med = statistics.median(times)
            verdict = "" if target is None else ("met" if med <= target else "MISSED")
            rows.append((name, f"{1000 * med:.1f} ms", f"{1000 * max(times):.0f} ms", f"<= {1000 * target:.0f} ms" if target else "-", verdict))
        if not args.no_export:
            start, size, lines = time.perf_counter(), 0, 0
            with urllib.request.urlopen(base + "/api/runs/1/export?format=csv", timeout=3600) as r:
                while chunk := r.read(1 << 16):
                    size += len(chunk)
                    lines += chunk.count(b"\n")
            seconds = time.perf_counter() - start
            rows.append(("whole-run export, csv", f"{seconds:.1f} s", f"{(lines - 1) / seconds:,.0f} rows/s", f"{lines - 1:,} rows, {size / 1e9:.2f} GB", ""))
        mib = peak_mib(server.pid)
        rows.append(("server peak memory (VmHWM)", f"{mib:.0f} MiB", "", "<= 300 MB", "met" if mib * 1.048576 <= 300 else "MISSED"))
        print(table(rows, ("request", f"median of {REPEAT}", "slowest", "target", "")))


if __name__ == "__main__":
    main()
