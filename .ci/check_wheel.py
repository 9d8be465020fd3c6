"""Build the wheel and check it: one top-level package (`vocfleet`), and it works without the source tree.

Run by `make wheel-check` (so by `make test` and CI). Exits non-zero with the reason on the first failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(ROOT)], check=True)
        (wheel,) = (tmp / "dist").glob("vocfleet-*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        if top != {"vocfleet"}:
            sys.exit(f"{wheel.name}: top-level entries {sorted(top)}; only 'vocfleet' may be installed")
        for needed in (
            "vocfleet/db/migrations/env.py",
            "vocfleet/db/migrations/script.py.mako",
            "vocfleet/db/migrations/versions/0001_training_jobs_epoch_metrics_detectors.py",
        ):
            if needed not in names:
                sys.exit(f"{wheel.name}: {needed} is missing")
        # Installed on its own and run from an empty folder: imports and migrations come from the wheel.
        site = tmp / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True)
        env = dict(os.environ, PYTHONPATH=str(site), VOCFLEET_DATA_DIR=str(tmp / "data"))
        env.pop("VOCFLEET_DATABASE_URL", None)
        where = subprocess.run(
            [sys.executable, "-c", "import vocfleet.scheduler.cli, vocfleet.worker.tasks, vocfleet.model.score; print(vocfleet.model.score.__file__)"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not where.startswith(str(site)):
            sys.exit(f"the installed wheel was not the one imported ({where})")
        subprocess.run([sys.executable, "-m", "vocfleet", "db", "upgrade"], cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"{wheel.name}: only 'vocfleet' at the top ({len(names)} files); imports and 'db upgrade' work from the wheel alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
