"""The fleet for real: Redis broker, PostgreSQL, `celery worker` subprocesses, kill -9, restarts, cancel."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from tests.support import SHARED_VOC, connectable, free_port, make_fake_voc, wait_for
from vocfleet.db.models import Detector, EpochMetric, JobStatus, ScoreRun, ScoreShard, TrainJob
from vocfleet.db.session import dispose_engines, ensure_schema, get_engine, session_scope
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import fit

pytestmark = [pytest.mark.services, pytest.mark.slow]
VOCFLEET = [sys.executable, "-m", "vocfleet"]
REDIS = shutil.which("redis-server")


class Redis:
    """A private, restartable redis-server (no persistence, like the default broker here)."""

    def __init__(self, port: int, workdir: Path):
        self.port, self.workdir, self.proc = port, workdir, None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: connectable(self.port), 20, "redis-server to accept connections")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Fleet:
    def __init__(self, tmp: Path, voc: Path):
        self.tmp, self.voc = tmp, voc
        self.procs: dict[str, subprocess.Popen] = {}

    def start_worker(self, name: str, queues: str = "train,score", env: dict[str, str] | None = None) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [*VOCFLEET, "worker", "--gpus", "none", "--name", name, "--queues", queues, "--loglevel", "info"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, *names: str, timeout: float = 120) -> None:
        """Until each named worker says it is ready (its queues are bound: a message sent before would find no queue)."""
        for name in names:
            self.wait(lambda n=name: " ready." in (self.tmp / f"{n}.log").read_text(), timeout, f"worker {name} to be ready")

    def start_scheduler(self) -> None:
        log = open(self.tmp / "scheduler.log", "w")
        self.procs["scheduler"] = subprocess.Popen(
            [*VOCFLEET, "scheduler", "--interval", "1", "--resend-after", "3"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)  # the worker and its forked child: the whole host is gone
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGKILL)

    def submit(self, classes: str, epochs: int, max_batches: int = 3, image_size: int = 32) -> None:
        """Jobs of the tiny network (the same code as ResNet-50 at 1/8 width): a larger image size paces the epochs."""
        subprocess.run(
            [
                *VOCFLEET,
                "submit",
                "--classes",
                classes,
                "--voc-root",
                str(self.voc),
                "--arch",
                "tiny",
                "--epochs",
                str(epochs),
                "--image-size",
                str(image_size),
                "--batch-size",
                "8",
                "--max-batches",
                str(max_batches),
            ],
            check=True,
            capture_output=True,
            text=True,
        )

    def wait(self, predicate, timeout: float, what: str):
        """wait_for, with the job rows and every process's log in the failure message."""
        try:
            return wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{job_rows()}\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def fleet(tmp_path, pg_url, monkeypatch):
    if REDIS is None:
        pytest.skip("redis-server is not installed")
    voc = make_fake_voc(tmp_path / "VOC2007", n=64, classes=("car", "dog", "cat"))
    redis = Redis(free_port(), tmp_path)
    redis.start()
    monkeypatch.setenv("VOCFLEET_BROKER_URL", f"redis://127.0.0.1:{redis.port}/0")
    monkeypatch.setenv("VOCFLEET_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("VOCFLEET_STALE_SECONDS", "5")
    monkeypatch.setenv("VOCFLEET_VISIBILITY_TIMEOUT", "30")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    ensure_schema()
    f = Fleet(tmp_path, voc)
    f.redis = redis
    yield f
    f.stop_all()
    redis.stop()
    dispose_engines()


def job_rows():
    with session_scope() as s:
        return {j.id: (j.status, j.epochs_done, j.worker_host, j.attempts) for j in s.scalars(select(TrainJob))}


def all_finished(n: int):
    rows = job_rows()
    return len(rows) == n and all(st.finished for st, *_ in rows.values())


def assert_ran_once_each(epochs: int):
    with session_scope() as s:
        for job in s.scalars(select(TrainJob)):
            assert job.status == JobStatus.succeeded, (job, job.error)
            assert [e.epoch for e in job.epochs] == list(range(1, epochs + 1))
            assert s.scalar(select(func.count()).select_from(Detector).where(Detector.job_id == job.id)) == 1
        assert s.scalar(select(func.count()).select_from(Detector).where(Detector.active.is_(True))) == len(job_rows())


def test_three_classes_two_workers(fleet):
    fleet.start_worker("w0")
    fleet.start_worker("w1")
    fleet.submit("car,dog,cat", epochs=2)
    fleet.wait(lambda: all_finished(3), 240, "three jobs to finish")
    assert_ran_once_each(2)
    assert all(attempts == 1 for *_, attempts in job_rows().values())


def test_kill_9_worker_mid_job_resumes_elsewhere(fleet):
    fleet.start_worker("w0")
    fleet.start_scheduler()
    fleet.submit("car", epochs=30, max_batches=4, image_size=96)  # about 0.4 s an epoch
    first = wait_for(lambda: (r := job_rows()[1])[1] >= 2 and r[0] == JobStatus.running and r, 180, "two epochs on the first worker")
    with session_scope() as s:
        epoch1 = s.scalar(select(EpochMetric).where(EpochMetric.epoch == 1))
        epoch1_at, epoch1_loss = epoch1.created_at, epoch1.train_loss
    fleet.start_worker("w1")
    fleet.kill("w0")
    fleet.wait(lambda: all_finished(1), 240, "the job to finish on the other worker")
    status, epochs, host, attempts = job_rows()[1]
    assert first[2].startswith("w0") and host.startswith("w1") and attempts == 2
    assert_ran_once_each(30)
    with session_scope() as s:
        epoch1 = s.scalar(select(EpochMetric).where(EpochMetric.epoch == 1))
        assert (epoch1.created_at, epoch1.train_loss) == (epoch1_at, epoch1_loss)  # resumed, not started over
    assert "requeued" in (fleet.tmp / "scheduler.log").read_text()


def test_two_hosts_without_a_shared_disk_resume_from_s3(fleet, s3_root, tmp_path):
    """Each worker has its own data folder (work files, caches); they share PostgreSQL, Redis and a bucket."""
    hosts = {name: tmp_path / f"host-{name}" for name in ("w0", "w1")}
    fleet.start_worker("w0", env={"VOCFLEET_DATA_DIR": str(hosts["w0"])})
    fleet.start_scheduler()
    fleet.submit("car", epochs=20, max_batches=4, image_size=96)
    first = fleet.wait(lambda: (r := job_rows()[1])[1] >= 2 and r[0] == JobStatus.running and r, 180, "two epochs on the first worker")
    with session_scope() as s:
        key = s.get(TrainJob, 1).key
        epoch1_loss = s.scalar(select(EpochMetric.train_loss).where(EpochMetric.epoch == 1))
    fleet.start_worker("w1", env={"VOCFLEET_DATA_DIR": str(hosts["w1"])})
    fleet.kill("w0")  # the whole host, mid-epoch; its disk goes with it
    shutil.rmtree(hosts["w0"])
    fleet.wait(lambda: all_finished(1), 240, "the job to finish on the other worker")
    status, epochs, host, attempts = job_rows()[1]
    assert first[2].startswith("w0") and host.startswith("w1") and attempts == 2
    assert_ran_once_each(20)
    with session_scope() as s:
        assert s.scalar(select(EpochMetric.train_loss).where(EpochMetric.epoch == 1)) == epoch1_loss  # resumed from S3, not started over
        assert s.scalars(select(Detector)).one().checkpoint_path == f"jobs/{key}/detector.pt"  # in whichever store this database uses
    assert "resuming car from epoch" in (fleet.tmp / "w1.log").read_text()
    # Nothing left on the host: the work copy goes right after the row records the detector.
    fleet.wait(lambda: not list(hosts["w1"].rglob("*.pt")), 30, "the worker to drop its work copy")


def test_redis_restart_mid_run_loses_nothing(fleet):
    fleet.start_worker("w0")
    fleet.start_scheduler()
    fleet.submit("car,dog,cat", epochs=8, image_size=96)  # the first job still trains when the broker goes
    wait_for(lambda: job_rows()[1][1] >= 1, 180, "the first job to train")
    fleet.redis.stop()  # queued messages for jobs 2 and 3 die with it
    time.sleep(2)
    fleet.redis.start()
    fleet.wait(lambda: all_finished(3), 240, "all jobs to finish after the broker restart")
    assert_ran_once_each(8)


def test_postgres_connections_dropped_worker_recovers(fleet):
    fleet.start_worker("w0")
    fleet.start_scheduler()
    fleet.submit("car", epochs=12, max_batches=4, image_size=96)
    wait_for(lambda: job_rows()[1][1] >= 1, 180, "the job to train")
    with get_engine().connect() as conn:
        killed = conn.execute(
            text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        ).scalar()
    assert killed >= 1
    dispose_engines()
    fleet.wait(lambda: all_finished(1), 240, "the job to finish after its connections were dropped")
    assert_ran_once_each(12)


def test_cancel_running_and_queued(fleet):
    fleet.start_worker("w0")
    fleet.submit("car,dog", epochs=200, max_batches=4, image_size=96)
    wait_for(lambda: job_rows()[1][1] >= 1, 180, "the first job to train")
    out = subprocess.run([*VOCFLEET, "cancel", "--all", "-y"], capture_output=True, text=True, check=True).stdout
    assert "job 1: running" in out and "job 2: cancelled" in out
    wait_for(lambda: job_rows()[1][0] == JobStatus.cancelled, 30, "the running job to stop")
    rows = job_rows()
    assert rows[1][1] < 200 and rows[2][0] == JobStatus.cancelled and rows[2][1] == 0
    with session_scope() as s:
        assert s.get(TrainJob, 1).error == "cancelled by user"


def add_detectors(fleet, tmp_path) -> None:
    """Two small real detectors (car, dog) trained on the fleet's fake VOC tree, made active."""
    for cls in ("car", "dog"):
        cfg = TrainConfig(
            voc_class=cls, voc_root=str(fleet.voc), arch="tiny", image_size=32, epochs=1, batch_size=8, max_batches=2, eval_fraction=0.3, val_fraction=0.3
        )
        r = fit(cfg, out_dir=tmp_path / "det" / cls, cache_dir=tmp_path / "cache")
        with session_scope() as s:
            s.add(Detector(voc_class=cls, checkpoint_path=r.checkpoint, sha256=r.sha256, threshold=r.threshold, ap=r.metrics["ap"], metrics=r.metrics))


def test_twenty_scoring_runs_at_once(fleet, tmp_path, monkeypatch, invoke):
    add_detectors(fleet, tmp_path)
    pics = tmp_path / "roots" / "pics"
    pics.mkdir(parents=True)
    for i, p in enumerate(sorted((fleet.voc / "JPEGImages").glob("*.jpg"))[:12]):
        shutil.copy(p, pics / f"img{i}.jpg")
    (pics / "broken.jpg").write_bytes(b"nope")
    monkeypatch.setenv("VOCFLEET_SCORE_ROOTS", str(tmp_path / "roots"))
    fleet.start_worker("w0", queues="score")
    fleet.start_worker("w1", queues="score")
    fleet.wait_ready("w0", "w1")
    fleet.start_scheduler()  # as in a real fleet: re-sends what a broker lost (tested on its own elsewhere)

    for _ in range(19):  # submitted back to back, before the workers get far
        res = invoke("score", pics)
        assert res.exit_code == 0 and "queued" in res.output, res.output
    res = invoke("score", pics, "--wait")
    assert res.exit_code == 0 and "run 20 succeeded: 13 of 13 files" in res.output, res.output

    def done():
        with session_scope() as s:
            runs = s.scalars(select(ScoreRun)).all()
            return len(runs) == 20 and all(r.status.finished for r in runs) and runs

    runs = fleet.wait(done, 240, "twenty scoring runs")
    assert all((r.status, r.total_files, r.scored_images, r.error_files) == (JobStatus.succeeded, 13, 12, 1) for r in runs)
    with session_scope() as s:  # the scoring itself (the shards) spread over both workers
        assert {h.split("-")[0] for h in s.scalars(select(ScoreShard.worker_host))} == {"w0", "w1"}


def shard_rows(run_id: int = 1):
    with session_scope() as s:
        return s.execute(
            select(ScoreShard.number, ScoreShard.status, ScoreShard.worker_host, ScoreShard.attempts)
            .where(ScoreShard.run_id == run_id)
            .order_by(ScoreShard.number)
        ).all()


def test_one_run_sharded_over_three_workers_survives_kill_9(fleet, tmp_path, monkeypatch, invoke):
    add_detectors(fleet, tmp_path)
    pics = tmp_path / "roots" / "pics"
    pics.mkdir(parents=True)
    sources = sorted(SHARED_VOC.glob("JPEGImages/*.jpg"))[:150] or sorted((fleet.voc / "JPEGImages").glob("*.jpg"))
    for i in range(3000):  # hard links: 3,000 files in 6 folders to scan and score, little disk
        folder = pics / f"{i // 500}"
        folder.mkdir(exist_ok=True)
        os.link(sources[i % len(sources)], folder / f"img{i:04d}.jpg")
    (pics / "broken.jpg").write_bytes(b"nope")
    (pics / "notes.txt").write_text("not a picture")
    monkeypatch.setenv("VOCFLEET_SCORE_ROOTS", str(tmp_path / "roots"))
    for name in ("w0", "w1", "w2"):
        fleet.start_worker(name, queues="score")
    fleet.start_scheduler()
    res = invoke("score", pics, "--shard-size", 100)
    assert res.exit_code == 0 and "queued" in res.output, res.output

    def w0_mid_shard():
        rows = shard_rows()
        mine = [r for r in rows if (r.worker_host or "").startswith("w0-")]
        return any(r.status == JobStatus.succeeded for r in mine) and any(r.status == JobStatus.running for r in mine) and rows

    fleet.wait(w0_mid_shard, 240, "w0 to finish one shard and start another")
    fleet.kill("w0")  # the whole host, mid-shard

    def run_done():
        with session_scope() as s:
            run = s.get(ScoreRun, 1)
            return run.status.finished and run

    run = fleet.wait(run_done, 300, "the run to finish without w0")
    assert (run.status, run.error) == (JobStatus.succeeded, None)
    assert (run.total_files, run.scored_images, run.error_files) == (3002, 3000, 2)
    rows = shard_rows()
    assert len(rows) == 31 and all(r.status == JobStatus.succeeded for r in rows)
    took = {r.worker_host.split("-")[0] for r in rows}
    assert took == {"w0", "w1", "w2"} and any(r.attempts == 2 for r in rows), rows  # w0's last shard was finished elsewhere
    with session_scope() as s:  # no duplicates: every file once, every image scored by each detector once
        files = s.execute(
            text(
                "SELECT count(*), count(DISTINCT folder || '/' || rel_path) FROM "
                "(SELECT folder, rel_path FROM scored_images WHERE run_id = 1 UNION ALL SELECT folder, rel_path FROM file_errors WHERE run_id = 1) f"
            )
        ).one()
        assert tuple(files) == (3002, 3002)
        assert s.execute(text("SELECT count(*), count(DISTINCT (image_id, detector_id)) FROM scores WHERE run_id = 1")).one() == (6000, 6000)
