"""Shared fixtures: an isolated data dir per test and a small fake VOC tree built in tmp_path."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from tests.support import CHROMIUM, CHROMIUM_FLAGS, PG_URL, SHARED_VOC, WILD, connectable, free_port, make_fake_voc, wait_for
from vocfleet.db import session as db_session
from vocfleet.db.models import Detector
from vocfleet.db.session import session_scope
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import fit


def pytest_configure(config):
    """One math thread per process. The suite runs in three processes on a few cores, beside the
    workers, CLIs and servers its tests start; a thread per core in each oversubscribed them."""
    os.environ["OMP_NUM_THREADS"] = "1"  # what the tests start
    torch.set_num_threads(1)  # this process


# Tests whose module-scoped fixture is costly (a site trained and scored, a fleet of two workers,
# 50,000 files): each module runs in one test process, so its fixture is built once.
SHARED_SETUP = ("tests/test_web.py", "tests/test_fleet_shared.py", "tests/test_shards.py")


def pytest_xdist_make_scheduler(config, log):
    """``pytest -n N``: each test to whichever process is free, one at a time, except the modules above,
    which go whole (the largest first). xdist's own ``load`` sends runs of neighbouring tests to one
    process, which put all seven tests/test_fleet.py tests (three minutes) on one; its ``loadgroup``
    marks tests by renaming them, which pytest 9 ignores. Another ``--dist`` is left to xdist."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedSetupTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_SETUP else nodeid

    return SharedSetupTogether(config, log)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    """Every test gets its own data dir (SQLite file, artifacts, cache) and no broker."""
    d = tmp_path / "vocfleet-data"
    monkeypatch.setenv("VOCFLEET_DATA_DIR", str(d))
    for var in ("VOCFLEET_DATABASE_URL", "VOCFLEET_BROKER_URL", "VOCFLEET_ARTIFACT_ROOT", "VOCFLEET_CACHE_DIR", "VOCFLEET_SCORE_ROOTS"):
        monkeypatch.delenv(var, raising=False)
    db_session.dispose_engines()
    yield d
    db_session.dispose_engines()


@pytest.fixture
def invoke():
    """The CLI in-process, as a user types it: ``invoke("score", folder)`` -> click's Result (exit_code, output)."""
    from click.testing import CliRunner

    from vocfleet.scheduler.cli import cli

    runner = CliRunner()
    return lambda *args: runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def fake_voc(tmp_path) -> Path:
    return make_fake_voc(tmp_path / "VOC2007")


@pytest.fixture
def shared_voc() -> Path:
    if not (SHARED_VOC / "ImageSets" / "Main" / "car_train.txt").is_file():
        pytest.skip(f"the shared VOC2007 sample is not at {SHARED_VOC}")
    return SHARED_VOC


@pytest.fixture(scope="session")
def pg_database() -> str:
    """This test process's PostgreSQL database (``test_gw0``, ... under xdist), made on the server if it is not
    there: a fresh server has only ``test``, and whichever test of a process comes first must find its own."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        try:
            _ensure_pg_database(PG_URL)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"PostgreSQL at {PG_URL} is not reachable ({exc}); start it (see .ci/run)")
    return PG_URL


@pytest.fixture
def pg_url(pg_database, monkeypatch) -> str:
    """A clean PostgreSQL database (the real server on 127.0.0.1), used as VOCFLEET_DATABASE_URL."""
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_database)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {pg_database} is not reachable ({exc}); start it (see .ci/run)")
    finally:
        engine.dispose()
    monkeypatch.setenv("VOCFLEET_DATABASE_URL", pg_database)
    db_session.dispose_engines()
    return pg_database


def _ensure_pg_database(url: str) -> None:
    """The database ``url`` names, made on the server if it is not there (each test process has its own)."""
    from sqlalchemy import create_engine, text

    base, _, name = url.rpartition("/")
    engine = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar() is None:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API over HTTP: moto's standalone server, started here for the session."""
    server = Path(sys.executable).with_name("moto_server")
    if not server.is_file():
        pytest.fail(f"moto_server is not installed beside {sys.executable}: pip install -e '.[test]'")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: connectable(port), 30, "moto_server to accept connections")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_root(s3_server, monkeypatch) -> str:
    """A fresh bucket as VOCFLEET_ARTIFACT_ROOT (``s3://<bucket>/vocfleet``), with the endpoint and credentials set."""
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("VOCFLEET_S3_ENDPOINT_URL", s3_server)
    bucket = f"vocfleet-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}).mkdir(bucket)
    root = f"s3://{bucket}/vocfleet"
    monkeypatch.setenv("VOCFLEET_ARTIFACT_ROOT", root)
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Two real detectors (car at 32 px, dog at 48 px), trained briefly on a fake VOC tree: once for
    all test processes of a run (the first to ask trains them while the others wait, then read its result)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each test process's own
    base, result = root / "trained-detectors", root / "trained-detectors.pickle"
    with open(root / "trained-detectors.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result.is_file():
            return pickle.loads(result.read_bytes())
        voc = make_fake_voc(base / "VOC2007")
        out = {}
        for cls, size in (("car", 32), ("dog", 48)):  # two input sizes: scoring decodes once for both
            cfg = TrainConfig(
                voc_class=cls, voc_root=str(voc), arch="tiny", image_size=size, epochs=1, batch_size=8, max_batches=2, eval_fraction=0.3, val_fraction=0.3
            )
            out[cls] = fit(cfg, out_dir=base / cls, cache_dir=base / "cache")
        result.write_bytes(pickle.dumps(out))
        return out


@pytest.fixture
def detectors(trained):
    db_session.ensure_schema()
    with session_scope() as s:
        for cls, r in trained.items():
            s.add(
                Detector(
                    voc_class=cls,
                    checkpoint_path=r.checkpoint,
                    sha256=r.sha256,
                    threshold=r.threshold,
                    ap=r.metrics["ap"],
                    metrics={**r.metrics, "plots": r.plots},
                    active=True,
                )
            )
    return trained


@pytest.fixture
def wild(tmp_path):
    if not WILD.is_dir():
        pytest.skip(f"the shared messy folder is not at {WILD}")
    dst = tmp_path / "wild"
    shutil.copytree(WILD, dst)
    return dst


@pytest.fixture
def browser():
    """Debian's Chromium, headless, driven by playwright (no browser download); skipped with a reason where it is not installed."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()
