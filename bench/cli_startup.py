"""How fast the CLI answers: `vocfleet --help`, `status`, `runs`, a dry run, against a bare interpreter and an `import torch`.

Each command runs as a fresh subprocess (as a user types it) on an empty embedded database; the
median wall time and the peak memory of each are printed beside the bare interpreter's, so the
ratios hold on a noisy machine. `import torch` is what every command paid before the CLI imported
torch lazily. The dry run (`submit --dry-run` on the shared sample) estimates from an epoch recorded
in the database beforehand, as it does once a machine has trained at that size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import table, voc_root

SEED = """
from vocfleet.db.claims import claim_job
from vocfleet.db.models import TrainJob
from vocfleet.db.session import session_scope
from vocfleet.db.training import create_jobs, record_epoch
from vocfleet.model.config import TrainConfig
from vocfleet.model.events import EpochRecord
with session_scope() as s:
    job_id = create_jobs(s, [TrainConfig(voc_class="car", voc_root={root!r}, image_size=64)])[0].id
with session_scope() as s:
    token = claim_job(s, TrainJob, job_id, "bench")
with session_scope() as s:
    record_epoch(s, job_id, token, EpochRecord(1, 0.5, 0.5, 0.3, 1e-3, 20.0, 90.0))
"""

VOCFLEET = [sys.executable, "-m", "vocfleet"]
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "vocfleet --help": [*VOCFLEET, "--help"],
    "vocfleet status": [*VOCFLEET, "status"],
    "vocfleet runs": [*VOCFLEET, "runs"],
    "vocfleet detectors": [*VOCFLEET, "detectors"],
}


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak MiB) of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOCFLEET_")} | {"VOCFLEET_DATA_DIR": data}
        subprocess.run([*VOCFLEET, "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
        root = str(voc_root(None))
        subprocess.run([sys.executable, "-c", SEED.format(root=root)], env=env, check=True)
        CASES["vocfleet submit --dry-run"] = [*VOCFLEET, "submit", "--classes", "car", "--dry-run", "--voc-root", root, "--image-size", "64", "--start", "none"]
        results = {}
        for _ in range(args.repeat):  # interleaved, so a slow moment of the machine hits every case
            for name, cmd in CASES.items():
                results.setdefault(name, []).append(measure(cmd, env))
    bare = statistics.median(t for t, _ in results["python -c pass"])
    torch_s = statistics.median(t for t, _ in results["python -c 'import torch'"])
    rows = []
    for name, runs in results.items():
        t = statistics.median(s for s, _ in runs)
        rows.append((name, f"{t:.3f} s", f"{max(m for _, m in runs):.0f} MiB", f"{t / bare:.1f}x", f"{t / torch_s:.2f}"))
    print(table(rows, ("command", f"median of {args.repeat}", "peak memory", "vs bare python", "vs import torch")))


if __name__ == "__main__":
    main()
