"""Shared helpers for the benchmarks: machine description, the sample location, a timer."""

from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
try:
    import vocfleet.model  # installed (pip install -e . or the wheel)
except ModuleNotFoundError:  # a bare checkout (a lent GPU host): map the folders as pyproject's package-dir does
    import vocfleet

    vocfleet.__path__.append(str(ROOT))
DEFAULT_VOC = ROOT.parent / "shared" / "voc2007" / "VOCdevkit" / "VOC2007"


def machine(torch_info: bool = True) -> str:
    """CPU, cores, GPU and torch; ``torch_info=False`` leaves torch unimported (benchmarks of the CLI)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if not torch_info:
        return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def voc_root(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("VOCFLEET_VOC_ROOT") or DEFAULT_VOC)
    if not (root / "JPEGImages").is_dir():
        sys.exit(f"no VOC images at {root}: pass --voc-root (a VOCdevkit/VOC2007 folder)")
    return root.resolve()  # absolute, as a scan gives scoring its folders (read_inside opens from /)


def jpeg_ids(root: Path, limit: int | None = None) -> list[str]:
    ids = sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))
    return ids[:limit] if limit else ids


def sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


@contextmanager
def timed(out: dict, key: str, device=None):
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    out[key] = time.perf_counter() - start


def table(rows: list[tuple], header: tuple) -> str:
    cells = [tuple(str(c) for c in r) for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def ensure_pg_database(url: str) -> None:
    """A benchmark gets its own PostgreSQL database, never the one the tests use."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if not c.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": u.database}).scalar():
            c.execute(text(f'CREATE DATABASE "{u.database}"'))
    admin.dispose()


def fresh_database(url: str) -> None:
    """An empty database at the newest schema (PostgreSQL: its public schema recreated)."""
    from sqlalchemy import create_engine, text

    from vocfleet.db.session import upgrade_database

    if url.startswith("postgresql"):
        ensure_pg_database(url)
        engine = create_engine(url)
        with engine.begin() as c:
            c.execute(text("DROP SCHEMA public CASCADE"))
            c.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    upgrade_database(url)


@contextmanager
def served(env: dict[str, str], port: int):
    """`vocfleet serve` on ``port`` as a subprocess with ``env``, once it answers: (its process, its base URL); stopped after."""
    import subprocess
    import urllib.request

    server = subprocess.Popen([sys.executable, "-m", "vocfleet", "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/api/runs", timeout=5).read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit(f"vocfleet serve did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.3)
        yield server, base
    finally:
        server.terminate()
        server.wait(timeout=30)
