"""The fleet for real on two workers shared by these tests (they kill no worker): three classes, a broker restart,
dropped database connections, cancel, twenty scoring runs at once."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from tests.fleet import FLEET_ENV, REDIS, VOCFLEET, Fleet, Redis, add_detectors, all_finished, assert_ran_once_each, count_shards, job_rows, run_finished
from tests.support import SHARED_VOC, distinct_pictures, free_port, make_fake_voc, wait_for
from vocfleet.db.models import Base, EpochMetric, JobStatus, ScoreRun, ScoreShard, TrainJob
from vocfleet.db.session import dispose_engines, ensure_schema, get_engine, session_scope

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def shared_workers(tmp_path_factory, pg_database):
    """Redis, a fresh PostgreSQL schema and two workers (w0, w1 on the train and score queues), started once
    for the tests that kill no worker: starting workers (Python, torch, Celery) is most of a fleet test's time."""
    if REDIS is None:
        pytest.skip("redis-server is not installed")
    tmp = tmp_path_factory.mktemp("fleet")
    voc = make_fake_voc(tmp / "VOC2007", n=64, classes=("car", "dog", "cat"))
    redis = Redis(free_port(), tmp)
    redis.start()
    env = {
        **FLEET_ENV,
        "VOCFLEET_DATABASE_URL": pg_database,
        "VOCFLEET_BROKER_URL": f"redis://127.0.0.1:{redis.port}/0",
        "VOCFLEET_DATA_DIR": str(tmp / "data"),
        "VOCFLEET_SCORE_ROOTS": str(tmp / "roots"),
    }
    (tmp / "roots").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        dispose_engines()
        with get_engine().begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        dispose_engines()
        ensure_schema()
        f = Fleet(tmp, voc)
        f.redis, f.env = redis, env
        f.metrics = {name: free_port() for name in ("w0", "w1")}  # each worker's Prometheus endpoint
        for name in ("w0", "w1"):
            f.start_worker(name, env={"VOCFLEET_METRICS_PORT": str(f.metrics[name])})
        f.wait_ready("w0", "w1")
        f.shared = set(f.procs)
    yield f
    f.stop_all()
    redis.stop()
    dispose_engines()


@pytest.fixture
def shared_fleet(shared_workers, monkeypatch):
    """The shared workers with empty tables: each test starts at job 1 and run 1, as with a fleet of its own."""
    f = shared_workers
    for name, value in f.env.items():
        monkeypatch.setenv(name, value)
    dispose_engines()
    if f.redis.proc.poll() is not None:  # a test that restarted the broker failed half-way
        f.redis.start()
    dead = [name for name in f.shared if name not in f.procs or f.procs[name].poll() is not None]
    assert not dead, f"shared worker(s) {dead} died in an earlier test:\n{f.logs()}"
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine().begin() as conn:
        conn.execute(text("SET LOCAL lock_timeout = '20s'"))
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield f
    for name in set(f.procs) - f.shared:  # the scheduler and any extra process of this test
        f.kill(name)
    dispose_engines()


def test_three_classes_two_workers(shared_fleet):
    fleet = shared_fleet
    fleet.submit("car,dog,cat", epochs=2)
    fleet.wait(lambda: all_finished(3), 240, "three jobs to finish")
    assert_ran_once_each(2)
    assert all(attempts == 1 for *_, attempts in job_rows().values())


def test_redis_restart_mid_run_loses_nothing(shared_fleet):
    fleet = shared_fleet
    fleet.start_scheduler()
    fleet.submit("car,dog,cat", epochs=5, image_size=96)  # the first job still trains when the broker goes
    wait_for(lambda: job_rows()[1][1] >= 1, 180, "the first job to train")
    fleet.redis.stop()  # the queued message of job 3 dies with it (both workers are busy)
    time.sleep(2)
    fleet.redis.start()
    fleet.wait(lambda: all_finished(3), 240, "all jobs to finish after the broker restart")
    assert_ran_once_each(5)


def test_redis_restart_mid_scoring_run_loses_nothing(shared_fleet, tmp_path, invoke):
    """2,000 files in 20 shards; the broker restarts empty half-way: the scheduler re-sends the shards it lost."""
    fleet = shared_fleet
    add_detectors(fleet, tmp_path)
    pics = Path(fleet.env["VOCFLEET_SCORE_ROOTS"]) / "many"
    sources = sorted(SHARED_VOC.glob("JPEGImages/*.jpg"))[:200] or sorted((fleet.voc / "JPEGImages").glob("*.jpg"))
    distinct_pictures(sources, pics, 2000, 500)
    (pics / "broken.jpg").write_bytes(b"nope")
    fleet.start_scheduler()
    assert "queued" in invoke("score", pics, "--shard-size", 100).output

    fleet.wait(lambda: count_shards(JobStatus.succeeded) >= 2 and count_shards(JobStatus.queued) >= 4, 120, "the run part-way")
    fleet.redis.stop()  # the messages of the queued shards die with it
    time.sleep(2)
    fleet.redis.start()

    run = fleet.wait(run_finished, 180, "the run to finish after the broker restart")
    assert (run.status, run.total_files, run.scored_images, run.error_files) == (JobStatus.succeeded, 2001, 2000, 1)
    with session_scope() as s:  # each file once, each picture scored once by each detector
        assert s.execute(text("SELECT count(*), count(DISTINCT rel_path) FROM scored_images WHERE run_id = 1")).one() == (2000, 2000)
        assert s.execute(text("SELECT count(*), count(DISTINCT (image_id, detector_id)) FROM scores WHERE run_id = 1")).one() == (4000, 4000)
        assert s.scalar(select(func.count()).select_from(ScoreShard).where(ScoreShard.status != JobStatus.succeeded)) == 0
    assert "resent" in (fleet.tmp / "scheduler.log").read_text()  # what the operator sees: the lost messages were sent again


def test_postgres_connections_dropped_worker_recovers(shared_fleet):
    fleet = shared_fleet
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


def test_cancel_running_and_queued(shared_fleet):
    fleet = shared_fleet
    fleet.submit("car,dog,cat", epochs=200, max_batches=4, image_size=96)  # two run (one per worker), one waits
    wait_for(lambda: (r := job_rows())[1][1] >= 1 and r[2][1] >= 1, 180, "two jobs to train")
    out = subprocess.run([*VOCFLEET, "cancel", "--all", "-y"], capture_output=True, text=True, check=True).stdout
    assert "job 1: running" in out and "job 2: running" in out and "job 3: cancelled" in out
    wait_for(lambda: all_finished(3), 30, "the running jobs to stop")
    rows = job_rows()
    assert all(rows[j][0] == JobStatus.cancelled and rows[j][1] < 200 for j in (1, 2)) and rows[3][:2] == (JobStatus.cancelled, 0)
    with session_scope() as s:
        assert [j.error for j in s.scalars(select(TrainJob).order_by(TrainJob.id))][:2] == ["cancelled by user"] * 2


def test_twenty_scoring_runs_at_once(shared_fleet, tmp_path, invoke):
    fleet = shared_fleet
    add_detectors(fleet, tmp_path)
    pics = Path(fleet.env["VOCFLEET_SCORE_ROOTS"]) / "pics"  # the root the workers were started to read
    pics.mkdir()
    for i, p in enumerate(sorted((fleet.voc / "JPEGImages").glob("*.jpg"))[:12]):
        shutil.copy(p, pics / f"img{i}.jpg")
    (pics / "broken.jpg").write_bytes(b"nope")
    fleet.start_scheduler()  # as in a real fleet: re-sends what a broker lost (tested on its own elsewhere)

    for _ in range(19):  # submitted back to back, before the workers get far
        res = invoke("score", pics)
        assert res.exit_code == 0 and "queued" in res.output, res.output
    res = invoke("score", pics, "--wait")
    assert res.exit_code == 0 and re.search(
        r"run 20 succeeded: \d+ image\(s\) scored( \(\d+ reused[^)]*\))?, \d+ file\(s\) not scored, of 13 seen", res.output
    ), res.output

    def done():
        with session_scope() as s:
            runs = s.scalars(select(ScoreRun)).all()
            return len(runs) == 20 and all(r.status.finished for r in runs) and runs

    runs = fleet.wait(done, 240, "twenty scoring runs")
    assert all((r.status, r.total_files, r.scored_images, r.error_files) == (JobStatus.succeeded, 13, 12, 1) for r in runs)
    with session_scope() as s:  # the scoring itself (the shards) spread over both workers
        assert {h.split("-")[0] for h in s.scalars(select(ScoreShard.worker_host))} == {"w0", "w1"}


def test_workers_say_who_they_are_and_what_they_hold(shared_fleet, invoke):
    from vocfleet import __version__

    fleet = shared_fleet
    fleet.submit("car", epochs=200, max_batches=4, image_size=96)
    wait_for(lambda: job_rows()[1][1] >= 1, 180, "the job to train")
    rows = {r["name"].split("-")[0]: r for r in json.loads(invoke("workers", "--format", "json").stdout)}
    assert set(rows) == {"w0", "w1"}  # unique node names: name, queues and device at the host
    for name, r in rows.items():
        assert r["name"].startswith(f"{name}-train+score-cpu@") and (r["queues"], r["version"], r["device"], r["state"]) == (
            ["score", "train"],
            __version__,
            "cpu",
            "live",
        )
    holder = job_rows()[1][2].split("-")[0]
    assert rows[holder]["holding"] == ["job 1"] and rows[{"w0": "w1", "w1": "w0"}[holder]]["holding"] == []
    assert subprocess.run([*VOCFLEET, "cancel", "1", "-y"], capture_output=True, text=True).returncode == 0
    wait_for(lambda: all_finished(1), 30, "the job to stop")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """One Prometheus scrape, as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text_ = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text_) for s in family.samples}


def test_metrics_move_as_the_database_says(shared_fleet, invoke):
    fleet = shared_fleet

    def workers_total(name: str, labels: tuple = ()) -> float:
        return sum(scrape(port).get((name, labels), 0.0) for port in fleet.metrics.values())

    def counters() -> tuple[float, float, float]:  # the shared workers count from their start: this test reads differences
        epochs = sum(workers_total("vocfleet_epochs_total", (("voc_class", c),)) for c in ("car", "dog"))
        return epochs, workers_total("vocfleet_images_scored_total"), workers_total("vocfleet_files_errored_total")

    before = counters()
    port = free_port()
    fleet.start_scheduler(env={"VOCFLEET_METRICS_PORT": str(port)})
    fleet.submit("car,dog", epochs=3)
    fleet.wait(lambda: all_finished(2), 120, "two jobs")  # their detectors score the pictures below
    pics = Path(fleet.env["VOCFLEET_SCORE_ROOTS"]) / "metrics"
    pics.mkdir()
    for i, p in enumerate(sorted((fleet.voc / "JPEGImages").glob("*.jpg"))[:7]):
        shutil.copy(p, pics / f"img{i}.jpg")
    (pics / "broken.jpg").write_bytes(b"nope")
    said = invoke("score", pics, "--wait").output
    assert "run 1 succeeded: 7 image(s) scored, 1 file(s) not scored, of 8 seen: vocfleet results 1 --errors" in said  # 1 not a picture
    with session_scope() as s:
        epochs = s.scalar(select(func.count()).select_from(EpochMetric))
    assert epochs == 6
    expected = (before[0] + 6, before[1] + 7, before[2] + 1)  # what the rows say this test did
    wait_for(lambda: counters() == expected, 30, f"the workers' counters to reach {expected} (at {counters()})")
    assert workers_total("vocfleet_epoch_seconds_count") >= 6 and workers_total("vocfleet_score_chunk_seconds_count") >= 1
    assert workers_total("vocfleet_heartbeats_total", (("table", "train_jobs"),)) > 0
    fleet_view = scrape(port)  # the scheduler: the database's and the broker's view
    assert fleet_view[("vocfleet_jobs", (("state", "succeeded"),))] == 2 and fleet_view[("vocfleet_jobs", (("state", "queued"),))] == 0
    assert fleet_view[("vocfleet_score_runs", (("state", "succeeded"),))] == 1
    assert fleet_view[("vocfleet_workers_live", (("queue", "train"),))] == 2
    assert fleet_view[("vocfleet_queue_messages", (("queue", "train"),))] == 0
