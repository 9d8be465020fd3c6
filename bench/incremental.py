"""Scoring a library again: the second pass of an unchanged folder, and one with 1% new pictures, against the first.

Through the product's own path (``create_run`` + ``run_score_run`` on the embedded default): a
folder of the sample's JPEGs (distinct pictures), two detectors (trained a few batches: their
speed, not their quality, matters here). Prints each pass's time and its ratio to the first,
measured one after another in this process, and what each run reused.

``--images`` above the sample's 2,500: a library of that many distinct files, each a thumbnail of a
sample picture (``--thumb`` px, its long side) with bytes of its own after the JPEG's end, in
folders of 1,000. Small pictures and ``--arch tiny`` make the first pass cheap, so the ratios are
harder to meet than with a library of photos scored by ResNet-50s: what a second pass costs (a
``stat`` per file, the lookups, copying the rows) is the same either way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import machine, table, voc_root
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import distinct_pictures  # the test suite's way to make pictures of their own content


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--added", type=float, default=0.01, help="share of new pictures in the third pass")
    ap.add_argument("--arch", default="resnet50", help="the detectors' network (tiny: a cheap first pass)")
    ap.add_argument("--thumb", type=int, default=128, help="the long side of the thumbnails above 2,500 images")
    args = ap.parse_args()
    root = voc_root(args.voc_root)
    work = Path(tempfile.mkdtemp(prefix="vocfleet-incremental-"))
    os.environ["VOCFLEET_DATA_DIR"] = str(work / "data")
    from vocfleet.db.registry import active_detectors
    from vocfleet.db.runs import create_run
    from vocfleet.db.session import ensure_schema, session_scope
    from vocfleet.db.training import create_jobs
    from vocfleet.model.config import TrainConfig
    from vocfleet.model.thumbnails import render
    from vocfleet.worker.runner import run_train_job
    from vocfleet.worker.scoring import run_score_run

    try:
        print(f"machine: {machine()}")
        library = work / "library"
        library.mkdir()
        samples = sorted((root / "JPEGImages").glob("*.jpg"))
        if args.images <= len(samples):
            for path in samples[: args.images]:
                shutil.copy(path, library / path.name)  # a copy: its own modification time, as a user's library has
        else:
            thumbs = work / "thumbs"
            thumbs.mkdir()
            for path in samples:
                (thumbs / path.name).write_bytes(render(path.read_bytes(), args.thumb))  # the web app's thumbnails
            distinct_pictures(sorted(thumbs.iterdir()), library, args.images, 1000)  # the test suite's: bytes after each JPEG's end
        ensure_schema()
        with session_scope() as s:
            cfgs = [TrainConfig(voc_class=c, voc_root=str(root), arch=args.arch, image_size=args.size, epochs=1, max_batches=1) for c in ("car", "dog")]
            ids = [j.id for j in create_jobs(s, cfgs)]
        for job_id in ids:
            run_train_job(job_id)

        def score_pass() -> tuple[float, int, int]:
            with session_scope() as s:
                run_id = create_run(s, [str(library)], active_detectors(s), batch_size=64, max_attempts=1).id
            t = time.perf_counter()
            run_score_run(run_id)
            seconds = time.perf_counter() - t
            from vocfleet.db.models import ScoreRun

            with session_scope() as s:
                run = s.get(ScoreRun, run_id)
                return seconds, run.scored_images, run.reused

        rows = []
        first = score_pass()
        rows.append(("first pass", *first, "1.00"))
        second = score_pass()
        rows.append(("again, unchanged", *second, f"{second[0] / first[0]:.3f}"))
        sources = sorted(library.rglob("*.jpg"))[: max(1, round(args.images * args.added))]
        for i, path in enumerate(sources):  # new pictures: flipped copies, new content
            Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path.with_name(f"new-{i:05d}.jpg"), quality=90)
        third = score_pass()
        rows.append((f"again, {len(sources)} new ({args.added:.0%})", *third, f"{third[0] / first[0]:.3f}"))
        print(table([(n, f"{s:.1f} s", scored, reused, r) for n, s, scored, reused, r in rows], ("pass", "time", "scored", "reused", "time / first pass")))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
