"""One picture scored over HTTP (`POST /api/score`), timed against scoring the same pictures in-process.

Trains one ResNet-50 detector (one batch: its weights do not matter to the time) on the VOC sample
at ``--size`` px and registers it as ``--detectors`` classes' detectors (each loaded and run on its
own), starts the real `vocfleet serve` as a subprocess, and sends
VOC JPEGs from a client on the same machine:
- one request at a time (``--requests`` of them): latency p50 and p99;
- ``--concurrent`` requests at once, ``--rounds`` times: each request's latency, and pictures per
  second over the round;
beside, in this process and on the same device, the same detectors on the same pictures: one
picture decoded and run alone (what a lone request cannot beat), and a batch of ``--concurrent``
(what a round cannot beat). The ratios are measured side by side in this one run.

    python bench/score_http.py [--detectors 20] [--size 64] [--requests 60] [--concurrent 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import machine, served, table, voc_root


def post(url: str, data: bytes) -> float:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "image/jpeg"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()
    return time.perf_counter() - t


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voc-root")
    ap.add_argument("--detectors", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrent", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = voc_root(args.voc_root)
    work = Path(tempfile.mkdtemp(prefix="vocfleet-score-http-"))
    os.environ["VOCFLEET_DATA_DIR"] = str(work / "data")
    import numpy as np
    import torch

    from vocfleet.db.models import Detector
    from vocfleet.db.registry import active_detectors
    from vocfleet.db.session import ensure_schema, session_scope
    from vocfleet.db.settings import get_settings
    from vocfleet.db.training import create_jobs
    from vocfleet.model import VOC_CLASSES
    from vocfleet.model.artifacts import ArtifactStore
    from vocfleet.model.batcher import UPLOAD
    from vocfleet.model.config import TrainConfig
    from vocfleet.model.decode import decode_bytes
    from vocfleet.model.engine import resolve_device
    from vocfleet.model.score import DetectorSpec, load_detectors, run_detectors
    from vocfleet.worker.runner import run_train_job

    print(f"machine: {machine()}")
    ensure_schema()
    with session_scope() as s:
        [job] = create_jobs(s, [TrainConfig(voc_class="car", voc_root=str(root), image_size=args.size, epochs=1, max_batches=1)])
    t = time.perf_counter()
    run_train_job(job.id)
    with session_scope() as s:  # the same weights as the other classes' detectors: each loaded and run on its own, as 20 are
        [car] = active_detectors(s)
        for c in [c for c in VOC_CLASSES if c != "car"][: args.detectors - 1]:
            s.add(
                Detector(
                    voc_class=c, checkpoint_path=car.checkpoint_path, sha256=car.sha256, threshold=car.threshold, ap=car.ap, metrics=car.metrics, active=True
                )
            )
    print(f"{args.detectors} detectors at {args.size} px (one trained for one batch, registered for each class) in {time.perf_counter() - t:.0f} s", flush=True)
    pictures = [p.read_bytes() for p in sorted((root / "JPEGImages").glob("*.jpg"))[: max(args.requests, args.concurrent)]]

    # In-process, the same detectors on the same device as the server: what a request cannot beat.
    device = resolve_device()
    with session_scope() as s:
        specs = [DetectorSpec.of(d) for d in active_detectors(s)]
    dets = load_detectors(specs, device, compile=False, store=ArtifactStore.from_settings(get_settings()))
    sizes = sorted({d.image_size for d in dets})

    def alone(data: bytes) -> float:
        t = time.perf_counter()
        f = decode_bytes(UPLOAD, data, len(data), sizes)
        run_detectors(dets, {s: torch.from_numpy(f.arrays[s][None].copy()).to(device) for s in sizes})
        return time.perf_counter() - t

    def batch(datas: list[bytes]) -> float:
        t = time.perf_counter()
        files = [decode_bytes(UPLOAD, d, len(d), sizes) for d in datas]
        run_detectors(dets, {s: torch.from_numpy(np.stack([f.arrays[s] for f in files])).to(device) for s in sizes})
        return time.perf_counter() - t

    port = 8900 + os.getpid() % 100
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOCFLEET_")} | {"VOCFLEET_DATA_DIR": str(work / "data")}
    with served(env, port) as (_, base):
        url = base + "/api/score"
        post(url, pictures[0])  # loads the detectors once
        for d in pictures[:3]:
            alone(d)  # warm, as the server is
        one = [post(url, d) for d in pictures[: args.requests]]
        here = [alone(d) for d in pictures[: args.requests]]
        latencies, rates, bound = [], [], []
        group = pictures[: args.concurrent]
        with ThreadPoolExecutor(args.concurrent) as pool:
            for _ in range(args.rounds):
                t = time.perf_counter()
                latencies += list(pool.map(lambda d: post(url, d), group))
                rates.append(len(group) / (time.perf_counter() - t))
                bound.append(len(group) / batch(group))
        rows = [
            ("one at a time, over HTTP", f"{1000 * pct(one, 0.5):.1f} ms", f"{1000 * pct(one, 0.99):.1f} ms", f"{1 / statistics.mean(one):.1f}", ""),
            (
                "one at a time, in-process (decode + detectors)",
                f"{1000 * pct(here, 0.5):.1f} ms",
                f"{1000 * pct(here, 0.99):.1f} ms",
                f"{1 / statistics.mean(here):.1f}",
                "",
            ),
            ("  HTTP / in-process (p50)", "", "", "", f"{pct(one, 0.5) / pct(here, 0.5):.2f}x the time"),
            (
                f"{args.concurrent} at once, over HTTP ({args.rounds} rounds)",
                f"{1000 * pct(latencies, 0.5):.1f} ms",
                f"{1000 * pct(latencies, 0.99):.1f} ms",
                f"{statistics.median(rates):.1f}",
                "",
            ),
            (f"a batch of {args.concurrent}, in-process", "", "", f"{statistics.median(bound):.1f}", ""),
            ("  HTTP / in-process (pictures per second)", "", "", "", f"{statistics.median(rates) / statistics.median(bound):.2f} of the bound"),
        ]
        print(f"{len(dets)} detectors at {args.size} px on {device}")
        print(table(rows, ("requests", "p50", "p99", "pictures/s", "")))


if __name__ == "__main__":
    main()
