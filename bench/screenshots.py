"""The web app's pictures in docs/, taken from a real database: what `make demo` leaves, with a folder scored.

The browser test takes its screenshots of detectors trained for seconds on made-up pictures; a reader
of the README should see what they will get. This serves the data folder given (the demo's: its SQLite
file and artifacts), scores ``--score`` with the active detectors first if no run exists, and saves
the runs page, a run's gallery filtered to ``--class``, the first picture of it, and that class's
detector, through Debian's headless Chromium.

    python bench/screenshots.py --data-dir ~/.local/share/vocfleet --score ../shared/voc2007/VOCdevkit/VOC2007/JPEGImages
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import served

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402  (the browser the tests drive)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="a vocfleet data folder (VOCFLEET_DATA_DIR) with trained detectors")
    ap.add_argument("--score", help="a folder to score first when the database has no scoring run")
    ap.add_argument("--class", dest="voc_class", default="dog")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOCFLEET_")} | {"VOCFLEET_DATA_DIR": str(Path(args.data_dir).expanduser())}
    vocfleet = [sys.executable, "-m", "vocfleet"]
    runs = json.loads(subprocess.run([*vocfleet, "runs", "--format", "json"], env=env, capture_output=True, text=True, check=True).stdout)
    if not runs:
        if not args.score:
            sys.exit(f"{args.data_dir} has no scoring run: give --score FOLDER")
        subprocess.run([*vocfleet, "score", args.score], env=env, check=True, stdout=subprocess.DEVNULL)
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    with served(env, 8600 + os.getpid() % 200) as (_, base), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 860})

        def shot(name: str) -> None:
            page.wait_for_load_state("networkidle")
            (out / f"web-{name}.png").write_bytes(page.screenshot())
            print(f"{out / f'web-{name}.png'}: {page.url[len(base) :]}")

        page.goto(base + "/")
        shot("runs")
        run = page.locator("#runs tr[data-run]").first.get_attribute("data-run")
        page.goto(f"{base}/runs/{run}?class={args.voc_class}")
        page.wait_for_function("Array.from(document.querySelectorAll('#grid img')).every(i => i.complete && i.naturalWidth > 0)")
        shot("run")
        page.locator("#grid .tile").first.click()
        page.wait_for_function("document.getElementById('picture').naturalWidth > 0")
        shot("picture")
        page.locator(f"#scores tr[data-class='{args.voc_class}'] a").first.click()
        page.wait_for_function("Array.from(document.querySelectorAll('figure img')).every(i => i.complete && i.naturalWidth > 0)")
        shot("detector")
        browser.close()


if __name__ == "__main__":
    main()
