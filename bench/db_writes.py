"""Benchmark 4: score rows written per second, bulk (the scoring path) vs one ORM object per row.

Runs on SQLite (a temporary file) and PostgreSQL (VOCFLEET_BENCH_PG_URL, default a database
``vocfleet_bench`` on the local server, created if missing; its public schema is recreated). Prints rows/s and the bulk/ORM ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from common import fresh_database, machine, table

from vocfleet.db.claims import claim_job
from vocfleet.db.models import Detector, Score, ScoredImage, ScoreRun
from vocfleet.db.score_writer import store_chunk
from vocfleet.db.session import dispose_engines, session_scope


def setup(url: str, detectors: int) -> tuple[int, str, list[int]]:
    fresh_database(url)
    with session_scope(url) as s:
        dets = [Detector(voc_class=f"c{i}", checkpoint_path="/x", sha256="0" * 64, threshold=0.5, ap=0.5, metrics={}, active=False) for i in range(detectors)]
        s.add_all(dets)
        run = ScoreRun(folders=["/bench"], classes=[], detector_ids=[])
        s.add(run)
        s.flush()
        token = claim_job(s, ScoreRun, run.id, "bench")
        return run.id, token, [d.id for d in dets]


def bulk(url: str, images: int, detectors: int, chunk: int) -> float:
    run_id, token, det_ids = setup(url, detectors)
    start = time.perf_counter()
    for c0 in range(0, images, chunk):
        imgs = [
            {"folder": "/bench", "rel_path": f"img{i}.jpg", "size_bytes": 1000, "sha256": f"{i:064d}", "width": 500, "height": 375}
            for i in range(c0, min(c0 + chunk, images))
        ]
        scores = [[(d, "c", 0.5, False) for d in det_ids] for _ in imgs]
        with session_scope(url) as s:
            store_chunk(s, run_id, token, imgs, scores, [])
    return images * detectors / (time.perf_counter() - start)


def orm(url: str, images: int, detectors: int, chunk: int) -> float:
    run_id, token, det_ids = setup(url, detectors)
    start = time.perf_counter()
    for c0 in range(0, images, chunk):
        with session_scope(url) as s:
            for i in range(c0, min(c0 + chunk, images)):
                img = ScoredImage(run_id=run_id, folder="/bench", rel_path=f"img{i}.jpg", size_bytes=1000, sha256=f"{i:064d}", width=500, height=375)
                s.add(img)
                s.flush()
                for d in det_ids:
                    s.add(Score(run_id=run_id, image_id=img.id, detector_id=d, voc_class="c", probability=0.5, present=False))
    return images * detectors / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--orm-images", type=int, default=250)
    ap.add_argument("--detectors", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=256, help="images per transaction (the scoring chunk)")
    ap.add_argument("--pg-url", default=os.environ.get("VOCFLEET_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/vocfleet_bench"))
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.detectors} detectors, {args.chunk} images per transaction; bulk {args.images} images, ORM {args.orm_images}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, url in (("sqlite", f"sqlite:///{tmp}/bench.db"), ("postgresql", args.pg_url)):
            try:
                b = bulk(url, args.images, args.detectors, args.chunk)
                o = orm(url, args.orm_images, args.detectors, args.chunk)
            except Exception as exc:  # noqa: BLE001
                print(f"{name}: skipped ({exc.__class__.__name__}: {exc})", file=sys.stderr)
                continue
            finally:
                dispose_engines()
            rows.append((name, f"{b:,.0f}", f"{o:,.0f}", f"{b / o:.1f}x"))
    print(table(rows, ("database", "bulk rows/s", "ORM rows/s", "bulk/ORM")))


if __name__ == "__main__":
    main()
