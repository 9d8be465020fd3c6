"""Helpers the tests import (conftest.py holds only fixtures): paths of the shared data, a fake VOC tree, ports and waiting."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_VOC = Path(__file__).resolve().parents[1].parent / "shared" / "voc2007" / "VOCdevkit" / "VOC2007"
WILD = Path(__file__).resolve().parents[1].parent / "shared" / "wild"
PG_URL = os.environ.get("VOCFLEET_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
if worker := os.environ.get("PYTEST_XDIST_WORKER"):  # tests run in two processes (make test): each its own database
    PG_URL = f"{PG_URL}_{worker}"
# A job that runs the whole path in about a second: the tiny network (the same torchvision ResNet
# code at 1/8 width), 32 px, two batches of 8. Tests that need ResNet-50's size say so.
QUICK = ["--arch", "tiny", "--image-size", 32, "--batch-size", 8, "--max-batches", 2]


def make_fake_voc(root: Path, n: int = 48, classes=("car", "dog"), size: int = 40, missing=("000007",), seed: int = 0) -> Path:
    """A VOC-shaped tree: car images carry a red square, dog images a blue one, so a net can learn them."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    ids = [f"{i:06d}" for i in range(1, n + 1)]
    labels = {c: {} for c in classes}
    for k, image_id in enumerate(ids):
        arr = rng.integers(60, 120, size=(size, size + 8, 3), dtype=np.uint8)
        for ci, c in enumerate(classes):
            lab = 1 if (k + ci) % 3 == 0 else -1
            if k % 11 == 5:
                lab = 0
            labels[c][image_id] = lab
            if lab == 1:
                arr[5:20, 5 + ci * 15 : 20 + ci * 15, ci * 2 % 3] = 250
        if image_id not in missing:
            Image.fromarray(arr).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
    for c in classes:
        (main / f"{c}_train.txt").write_text("".join(f"{i} {labels[c][i]:>2}\n" for i in ids))
    (main / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


# Debian's Chromium for the browser tests (playwright drives it: no browser download), and its flags for a headless VM.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def migrate_to(url: str, revision: str) -> None:
    """The schema of an older vocfleet at ``url``: the migrations up to ``revision`` and no further."""
    from alembic import command
    from alembic.config import Config

    from vocfleet.db.session import MIGRATIONS, get_engine

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    get_engine(url).dispose()


def detectors_on_postgres(detectors) -> None:
    """The detectors fixture wrote its rows to SQLite before pg_url switched databases: add them to PostgreSQL too."""
    from vocfleet.db.models import Detector
    from vocfleet.db.session import ensure_schema, session_scope

    ensure_schema()
    with session_scope() as s:
        for cls, r in detectors.items():
            s.add(Detector(voc_class=cls, checkpoint_path=r.checkpoint, sha256=r.sha256, threshold=r.threshold, ap=r.metrics["ap"], metrics=r.metrics))


def distinct_pictures(sources: list[Path], root: Path, n: int, per_folder: int) -> None:
    """``n`` JPEGs under ``root`` (``per_folder`` to each numbered subfolder), each its own content: a source's bytes and
    four more after its end, which decoders ignore. A copy of another picture would be reused by incremental scoring,
    not scored, and a run meant to be caught part-way would end at once."""
    for i in range(n):
        folder = root / f"{i // per_folder}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:04d}.jpg").write_bytes(sources[i % len(sources)].read_bytes() + i.to_bytes(4, "big"))
