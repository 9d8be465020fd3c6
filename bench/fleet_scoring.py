"""Fleet scoring: one folder of real VOC JPEGs scored by 1 and by 2 real `vocfleet worker` processes.

Redis (a private redis-server) and PostgreSQL (VOCFLEET_BENCH_PG_URL, default the database
``vocfleet_bench`` on the local server, its schema recreated); every worker is a CPU worker held
to one thread (OMP_NUM_THREADS=1, VOCFLEET_DECODE_THREADS=1). The workers are started and ready
before the clock starts, and a warm-up run has each worker load the detectors (a long-running fleet
does that once per process); each measurement is one `vocfleet score FOLDER` from submit to the
run's end. For 1 worker the second stops consuming (Celery's cancel_consumer) but stays up; 1 and
2 workers alternate, so a slow moment of the machine hits both. Prints images/s, the
speed-up, and how many shards each worker took.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import fresh_database, jpeg_ids, machine, table, voc_root

VOCFLEET = [sys.executable, "-m", "vocfleet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voc-root")
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--detectors", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3, help="measurements of each worker count")
    args = ap.parse_args()
    root = voc_root(args.voc_root)
    url = os.environ.get("VOCFLEET_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/vocfleet_bench")
    tmp = Path(tempfile.mkdtemp(prefix="vocfleet-fleet-bench-"))
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOCFLEET_")}
    env.update(
        VOCFLEET_DATA_DIR=str(tmp / "data"),
        VOCFLEET_DATABASE_URL=url,
        VOCFLEET_BROKER_URL=f"redis://127.0.0.1:{port}/0",
        VOCFLEET_SCORE_ROOTS=str(tmp / "pics"),
        VOCFLEET_SCORE_COMPILE="off",
        OMP_NUM_THREADS="1",
        VOCFLEET_DECODE_THREADS="1",
    )
    os.environ.update(env)
    workers: dict[str, subprocess.Popen] = {}
    try:
        from sqlalchemy import func, select

        from vocfleet.db.models import Detector, ScoreRun, ScoreShard
        from vocfleet.db.session import session_scope
        from vocfleet.worker.celery_app import app

        fresh_database(url)
        from scoring import make_detectors

        specs = make_detectors(args.detectors, args.size, tmp)
        with session_scope() as s:
            for spec in specs:
                s.add(Detector(voc_class=spec.voc_class, checkpoint_path=spec.checkpoint_path, sha256=spec.sha256, threshold=0.5, ap=0.5, metrics={}))
        pics = tmp / "pics" / "voc"
        pics.mkdir(parents=True)
        for image_id in jpeg_ids(root, args.images):
            os.link(root / "JPEGImages" / f"{image_id}.jpg", pics / f"{image_id}.jpg")

        def start(name: str) -> str:
            """Start a worker and return its node name once it answers."""
            log = open(tmp / f"{name}.log", "w")
            workers[name] = subprocess.Popen(
                [*VOCFLEET, "worker", "--gpus", "none", "--queues", "score", "--name", name],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            return wait_for(lambda: next((node for reply in app.control.ping(timeout=0.5) or [] for node in reply if node.startswith(name)), None), 120, name)

        def stop(name: str) -> None:
            proc = workers.pop(name)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)

        def score_once() -> tuple[float, int]:
            start_t = time.perf_counter()
            out = subprocess.run([*VOCFLEET, "score", str(pics), "--shard-size", str(args.shard_size)], env=env, capture_output=True, text=True, check=True)
            run_id = int(out.stdout.split()[2])

            def finished():
                with session_scope() as s:
                    run = s.get(ScoreRun, run_id)
                    return run.status.finished and run

            run = wait_for(finished, 600, f"run {run_id}")
            if run.status.value != "succeeded" or run.scored_images != args.images:
                sys.exit(f"run {run_id} ended {run.status.value}: {run.scored_images} of {args.images} scored ({run.error})")
            return time.perf_counter() - start_t, run_id

        print(f"machine: {machine()}")
        print(f"{args.images} VOC JPEGs, {args.detectors} ResNet-50 detectors at {args.size} px, shards of {args.shard_size}; CPU workers of one thread each")
        start("w0")
        w1 = start("w1")
        score_once()  # warm-up: each worker's process loads the detectors once, as in a long-running fleet
        times: dict[int, list[float]] = {1: [], 2: []}
        shards_by_worker = {}
        for _ in range(args.repeat):
            app.control.cancel_consumer("score", destination=[w1], reply=True)  # w1 stays up, idle
            seconds, _ = score_once()
            times[1].append(seconds)
            app.control.add_consumer("score", destination=[w1], reply=True)
            seconds, run_id = score_once()
            times[2].append(seconds)
            with session_scope() as s:
                shards_by_worker = dict(
                    s.execute(
                        select(func.split_part(ScoreShard.worker_host, "-", 1), func.count())
                        .where(ScoreShard.run_id == run_id)
                        .group_by(ScoreShard.worker_host)
                    ).all()
                )
        median = {n: statistics.median(ts) for n, ts in times.items()}
        rows = [(n, " ".join(f"{t:.1f}" for t in ts), f"{args.images / median[n]:.1f}") for n, ts in times.items()]
        print(table(rows, ("workers", "seconds per run", "images/s (median run)")))
        speedups = " ".join(f"{a / b:.2f}" for a, b in zip(times[1], times[2], strict=True))
        print(f"speed-up with 2 workers: {median[1] / median[2]:.2f}x of the medians (target 1.8x; pair by pair: {speedups})")
        print(f"shards per worker in the last 2-worker run: {shards_by_worker}")
    finally:
        for name in list(workers):
            stop(name)
        redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
