"""The results database at scale: a synthetic run of N images x 20 detectors, queried by the real CLI.

Builds the run straight into the database (no models): scored_images and scores with COPY on
PostgreSQL (VOCFLEET_BENCH_PG_URL, default the database ``vocfleet_scale`` on the local server,
its schema recreated) or executemany on SQLite (a temporary file). Then runs `vocfleet` commands
as subprocesses, as a user would, each with its wall time and peak memory (the export's lines
are counted by `wc -l` in a pipe). Targets (issue 12, PostgreSQL, N = 1,000,000): full csv export
at least 300,000 rows/s in at most 300 MB (jsonl: memory only); --class car --present --limit 100 and --image at most
1 s; --by-image streams in at most 300 MB; --help, runs, status at most 0.5 s and 150 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import fresh_database, machine, table

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOCFLEET = [sys.executable, "-m", "vocfleet"]


def build(url: str, n: int) -> None:
    """One finished run of ``n`` images, each scored by the 20 detectors (deterministic pseudo-random probabilities)."""
    from sqlalchemy import create_engine, text

    from vocfleet.db.models import Detector, JobStatus, Score
    from vocfleet.db.runs import create_run
    from vocfleet.db.session import session_scope

    fresh_database(url)
    with session_scope(url) as s:
        dets = [Detector(voc_class=c, checkpoint_path="/x", sha256="0" * 64, threshold=0.5, ap=0.5, metrics={"ap": 0.5}, active=True) for c in CLASSES]
        s.add_all(dets)
        s.flush()
        run = create_run(s, ["/photos"], dets, batch_size=64, max_attempts=3)
        run.status, run.scanned, run.total_files, run.scored_images = JobStatus.succeeded, True, n, n
        det_ids = [d.id for d in dets]

    def images():
        for i in range(1, n + 1):
            yield (i, 1, "/photos", f"{i // 1000:04d}/IMG_{i:08d}.jpg", 250_000, hashlib.sha256(str(i).encode()).hexdigest(), 640, 480)

    def scores():
        x = 12345
        for i in range(1, n + 1):
            for d, cls in zip(det_ids, CLASSES, strict=True):
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF  # a fast deterministic spread of probabilities
                p = (x % 10_000) / 10_000
                yield (1, i, d, cls, p, p >= 0.5)

    img_cols = ("id", "run_id", "folder", "rel_path", "size_bytes", "sha256", "width", "height")
    score_cols = ("run_id", "image_id", "detector_id", "voc_class", "probability", "present")
    eng = create_engine(url)
    with eng.begin() as conn:
        if url.startswith("postgresql"):
            raw = conn.connection.driver_connection
            with raw.cursor() as cur:
                # Loading, then indexing, is several times faster than keeping the indexes up to date.
                cur.execute("ALTER TABLE scores DROP CONSTRAINT scores_pkey")
                for index in Score.__table__.indexes:
                    cur.execute(f"DROP INDEX {index.name}")
                for name, cols, rows in (("scored_images", img_cols, images()), ("scores", score_cols, scores())):
                    with cur.copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                cur.execute("ALTER TABLE scores ADD CONSTRAINT scores_pkey PRIMARY KEY (image_id, detector_id)")
            for index in Score.__table__.indexes:  # the indexes the models declare, whatever their names
                index.create(conn)
            with raw.cursor() as cur:
                cur.execute("SELECT setval(pg_get_serial_sequence('scored_images', 'id'), %s)", (n,))
            conn.execute(text("ANALYZE"))
        else:
            raw = conn.connection.driver_connection
            for name, cols, rows in (("scored_images", img_cols, images()), ("scores", score_cols, scores())):
                sql = f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                batch = []
                for row in rows:
                    batch.append(row)
                    if len(batch) == 100_000:
                        raw.executemany(sql, batch)
                        batch = []
                raw.executemany(sql, batch)
            conn.execute(text("ANALYZE"))
    eng.dispose()


def measure(cmd: list[str], env: dict[str, str], count_lines: bool, tmp: Path) -> tuple[float, float, int | None]:
    """(seconds, peak MiB of the vocfleet process, lines written or None).

    Peak memory from GNU time, started fresh: a child forked from this process would count the
    parent's pages in its own peak.
    """
    report = tmp / "time.txt"
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *cmd], env=env, stdout=subprocess.PIPE if count_lines else subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    counter = subprocess.Popen(["wc", "-l"], stdin=proc.stdout, stdout=subprocess.PIPE, text=True) if count_lines else None
    if proc.stdout:
        proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait()
    lines = int(counter.communicate()[0]) if counter else None
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed: {err[-500:]}")
    return seconds, int(report.read_text().split()[-1]) / 1024, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--keep", action="store_true", help="reuse the database built by an earlier run of the same size")
    ap.add_argument("--only", default="", help="run only the commands whose name contains one of these ('|'-separated)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vocfleet-scale-"))
    if args.db == "postgresql":
        url = os.environ.get("VOCFLEET_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/vocfleet_scale")
    else:
        url = f"sqlite:///{Path(tempfile.gettempdir()) / f'vocfleet-scale-{args.images}.db'}"
    print(f"machine: {machine(torch_info=False)}")
    t = time.perf_counter()
    if not args.keep:
        if url.startswith("sqlite"):
            Path(url.split("///", 1)[1]).unlink(missing_ok=True)
        build(url, args.images)
    rows = args.images * 20
    print(f"{args.db}: {args.images:,} images x 20 detectors = {rows:,} score rows, built in {time.perf_counter() - t:.0f} s")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOCFLEET_")} | {"VOCFLEET_DATABASE_URL": url, "VOCFLEET_DATA_DIR": str(tmp)}
    probe = f"{(args.images // 2) // 1000:04d}/IMG_{args.images // 2:08d}.jpg"
    cases = [
        ("vocfleet --help", ["--help"], False, 0.5, 150),
        ("vocfleet runs", ["runs"], False, 0.5, 150),
        ("vocfleet status", ["status"], False, 0.5, 150),
        ("results 1 --class car --present --limit 100", ["results", "1", "--class", "car", "--present", "--limit", "100"], True, 1.0, None),
        (f"results 1 --image {probe}", ["results", "1", "--image", probe], True, 1.0, None),
        ("results 1 --summary", ["results", "1", "--summary"], True, None, None),
        ("results 1 --format csv (everything)", ["results", "1", "--format", "csv"], True, None, 300),
        ("results 1 --format jsonl (everything)", ["results", "1", "--format", "jsonl"], True, None, 300),
        ("results 1 --by-image --format csv", ["results", "1", "--by-image", "--format", "csv"], True, None, 300),
    ]
    out = []
    for name, argv, count, max_s, max_mb in (c for c in cases if any(part in c[0] for part in args.only.split("|"))):
        # The commands with a time target run five times (median time, largest memory): one slow moment of the VM is not the answer.
        runs = [measure([*VOCFLEET, *argv], env, count, tmp) for _ in range(5 if max_s else 1)]
        seconds, mib, lines = statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[0][2]
        rate = f"{(lines - 1) / seconds:,.0f} rows/s" if lines and lines > 1000 else ""
        target = " and ".join(x for x in (f"<= {max_s} s" if max_s else "", f"<= {max_mb} MB" if max_mb else "") if x)
        ok = (max_s is None or seconds <= max_s) and (max_mb is None or mib <= max_mb)
        if "csv (everything)" in name and args.images >= 1_000_000:
            target += " and >= 300,000 rows/s"
            ok = ok and (lines - 1) / seconds >= 300_000
        verdict = ("met" if ok else "MISSED") if target else ""
        out.append((name, f"{seconds:.2f} s", f"{mib:.0f} MiB", f"{lines:,}" if lines is not None else "", rate, target or "-", verdict))
    print(table(out, ("command", "time (median of 5 where timed)", "peak memory", "lines out", "rate", "target", "")))


if __name__ == "__main__":
    main()
