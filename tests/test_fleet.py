"""The fleet for real, each test with its own Redis and workers: kill -9 of a worker mid-job or mid-shard, hosts without a shared disk."""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from tests.fleet import (
    FLEET_ENV,
    PG_BIN,
    REDIS,
    Fleet,
    Outage,
    Postgres,
    Redis,
    add_detectors,
    all_finished,
    assert_ran_once_each,
    count_shards,
    job_rows,
    run_finished,
    shard_rows,
)
from tests.support import SHARED_VOC, distinct_pictures, free_port, make_fake_voc, wait_for
from vocfleet.db.models import Detector, EpochMetric, JobStatus, TrainJob
from vocfleet.db.session import dispose_engines, ensure_schema, session_scope

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path, pg_url, monkeypatch):
    """A fleet of its own, for the tests that kill workers or give them their own settings: Redis, no workers yet."""
    if REDIS is None:
        pytest.skip("redis-server is not installed")
    voc = make_fake_voc(tmp_path / "VOC2007", n=64, classes=("car", "dog", "cat"))
    redis = Redis(free_port(), tmp_path)
    redis.start()
    monkeypatch.setenv("VOCFLEET_BROKER_URL", f"redis://127.0.0.1:{redis.port}/0")
    for name, value in FLEET_ENV.items():
        monkeypatch.setenv(name, value)
    ensure_schema()
    f = Fleet(tmp_path, voc)
    f.redis = redis
    yield f
    f.stop_all()
    redis.stop()
    dispose_engines()


def test_kill_9_worker_mid_job_resumes_elsewhere(fleet):
    fleet.start_worker("w0")
    fleet.start_scheduler()
    fleet.submit("car", epochs=16, max_batches=4, image_size=96)  # about 0.4 s an epoch
    first = wait_for(lambda: (r := job_rows()[1])[1] >= 2 and r[0] == JobStatus.running and r, 180, "two epochs on the first worker")
    with session_scope() as s:
        epoch1 = s.scalar(select(EpochMetric).where(EpochMetric.epoch == 1))
        epoch1_at, epoch1_loss = epoch1.created_at, epoch1.train_loss
    fleet.start_worker("w1")
    fleet.kill("w0")
    fleet.wait(lambda: all_finished(1), 240, "the job to finish on the other worker")
    status, epochs, host, attempts = job_rows()[1]
    assert first[2].startswith("w0") and host.startswith("w1") and attempts == 2
    assert_ran_once_each(16)
    with session_scope() as s:
        epoch1 = s.scalar(select(EpochMetric).where(EpochMetric.epoch == 1))
        assert (epoch1.created_at, epoch1.train_loss) == (epoch1_at, epoch1_loss)  # resumed, not started over
    assert "requeued" in (fleet.tmp / "scheduler.log").read_text()


def test_a_start_runs_first_then_its_class_jobs_on_two_workers_at_once(fleet):
    fleet.start_worker("w0")
    fleet.start_worker("w1")
    fleet.wait_ready("w0", "w1")
    fleet.start_scheduler()
    fleet.submit("car,dog,cat", 2, 3, 32, "--start", "new", "--start-epochs", "3")
    fleet.wait(lambda: all_finished(4), 240, "the start and its three class jobs")
    with session_scope() as s:
        jobs = {j.id: j for j in s.scalars(select(TrainJob))}
        start = jobs[1]
        assert start.voc_class == "all" and start.status == JobStatus.succeeded and start.start_sha256
        for job in (jobs[2], jobs[3], jobs[4]):
            assert job.status == JobStatus.succeeded and job.start_job_id == 1 and job.attempts == 1, (job, job.error)
            assert job.started_at >= start.finished_at  # none began before its start had ended
        assert {j.worker_host.split("-")[0] for j in (jobs[2], jobs[3], jobs[4])} == {"w0", "w1"}  # the class jobs spread over the fleet
        assert s.scalar(select(func.count()).select_from(Detector)) == 3


def test_sigterm_drains_a_worker_its_job_continues_elsewhere_at_once(fleet, monkeypatch, invoke):
    """docker compose stop: SIGTERM to the worker's main process. The job is handed back at the next batch and
    re-sent, so the other worker resumes it at once: no scheduler runs and the stale timeout is ten minutes."""
    monkeypatch.setenv("VOCFLEET_STALE_SECONDS", "600")
    for name in ("w0", "w1"):
        fleet.start_worker(name)
    fleet.wait_ready("w0", "w1")  # both up before the job: whichever takes it is stopped mid-job
    fleet.submit("car", epochs=16, max_batches=4, image_size=96)
    first = fleet.wait(lambda: (r := job_rows()[1])[1] >= 2 and r[0] == JobStatus.running and r, 180, "two epochs")
    holder = first[2].split("-")[0]
    other = {"w0": "w1", "w1": "w0"}[holder]
    proc = fleet.procs.pop(holder)
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # the main process only, as a container runtime does
    assert proc.wait(timeout=60) == 0
    assert time.monotonic() - stopped_at < 20  # it did not wait for the job's remaining epochs
    fleet.wait(lambda: job_rows()[1][2].startswith(other) and job_rows()[1], 60, f"the job to move to {other}")
    fleet.wait(lambda: all_finished(1), 240, f"the job to finish on {other}")
    status, epochs, host, attempts = job_rows()[1]
    assert status == JobStatus.succeeded and attempts == 2
    assert_ran_once_each(16)
    assert "handed back by a worker shutting down" in (fleet.tmp / f"{holder}.log").read_text()
    rows = json.loads(invoke("workers", "--all", "--format", "json").stdout)
    assert {r["name"].split("-")[0]: r["state"] for r in rows} == {holder: "stopped", other: "live"}


def test_two_hosts_without_a_shared_disk_resume_from_s3(fleet, s3_root, tmp_path):
    """Each worker has its own data folder (work files, caches); they share PostgreSQL, Redis and a bucket."""
    hosts = {name: tmp_path / f"host-{name}" for name in ("w0", "w1")}
    fleet.start_worker("w0", env={"VOCFLEET_DATA_DIR": str(hosts["w0"])})
    fleet.start_scheduler()
    fleet.submit("car", epochs=12, max_batches=4, image_size=96)
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
    assert_ran_once_each(12)
    with session_scope() as s:
        assert s.scalar(select(EpochMetric.train_loss).where(EpochMetric.epoch == 1)) == epoch1_loss  # resumed from S3, not started over
        assert s.scalars(select(Detector)).one().checkpoint_path == f"jobs/{key}/detector.pt"  # in whichever store this database uses
    assert "resuming car from epoch" in (fleet.tmp / "w1.log").read_text()
    # Nothing left on the host: the work copy goes right after the row records the detector.
    fleet.wait(lambda: not list(hosts["w1"].rglob("*.pt")), 30, "the worker to drop its work copy")


def test_s3_away_for_30s_during_a_checkpoint_upload(fleet, s3_root, s3_server, tmp_path, monkeypatch):
    """The S3 endpoint refuses connections for 30 s as an epoch's checkpoint uploads: the worker waits it out and the job succeeds once."""
    import s3fs

    proxy = Outage(int(s3_server.rsplit(":", 1)[1]))
    proxy.up()
    monkeypatch.setenv("VOCFLEET_S3_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    fleet.start_worker("w0", env={"VOCFLEET_DATA_DIR": str(tmp_path / "host")})
    fleet.submit("car", epochs=20, max_batches=4, image_size=96)
    fleet.wait(lambda: job_rows()[1][1] >= 2, 180, "two epochs")
    proxy.down()
    away, recorded = time.monotonic(), job_rows()[1][1]
    log = fleet.tmp / "w0.log"
    fleet.wait(lambda: "failed (EndpointConnectionError); trying again" in log.read_text(), 30, "the worker to say the store is away")
    while time.monotonic() - away < 30:
        status, epochs, _, attempts = job_rows()[1]
        assert status == JobStatus.running and attempts == 1 and epochs <= recorded + 1  # waiting on the upload, holding its job
        time.sleep(1)
    proxy.up()
    fleet.wait(lambda: all_finished(1), 120, "the job to finish once the store is back")
    assert job_rows()[1][3] == 1  # the same attempt: nothing failed, nothing re-ran
    assert_ran_once_each(20)
    with session_scope() as s:
        det = s.scalars(select(Detector)).one()
    bucket = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    assert bucket.exists(f"{s3_root}/{det.checkpoint_path}")


def test_one_run_sharded_over_two_workers_survives_kill_9(fleet, tmp_path, monkeypatch, invoke):
    add_detectors(fleet, tmp_path)
    pics = tmp_path / "roots" / "pics"
    pics.mkdir(parents=True)
    sources = sorted(SHARED_VOC.glob("JPEGImages/*.jpg"))[:150] or sorted((fleet.voc / "JPEGImages").glob("*.jpg"))
    distinct_pictures(sources, pics, 2000, 500)  # 2,000 files in 4 folders to scan and score
    (pics / "broken.jpg").write_bytes(b"nope")
    (pics / "notes.txt").write_text("not a picture")
    monkeypatch.setenv("VOCFLEET_SCORE_ROOTS", str(tmp_path / "roots"))
    fleet.start_worker("w0", queues="score")  # alone at first: it is sure to be mid-shard when it dies
    fleet.start_scheduler()
    res = invoke("score", pics, "--shard-size", 100)
    assert res.exit_code == 0 and "queued" in res.output, res.output

    def running_on(host: str) -> dict[int, str]:
        return {r.number: host for r in shard_rows() if r.status == JobStatus.running and (r.worker_host or "").startswith(f"{host}-")}

    def mid_shard(host: str):
        mine = [r for r in shard_rows() if (r.worker_host or "").startswith(f"{host}-")]
        return any(r.status == JobStatus.succeeded for r in mine) and running_on(host)

    held: dict[int, str] = {}
    for victim in ("w0", "w2", "w3"):
        if victim != "w0":  # the last kill fell between two of its shards (they take a second or two): again, on another host
            fleet.start_worker(victim, queues="score")
        fleet.wait(lambda v=victim: mid_shard(v), 240, f"{victim} to finish one shard and start another")
        fleet.kill(victim)  # the whole host, mid-shard
        held = running_on(victim)  # what it held when it died: nothing of it runs any more
        if held:
            break
    assert held, "no kill in three landed mid-shard"
    fleet.start_worker("w1", queues="score")

    run = fleet.wait(run_finished, 300, "the run to finish without w0")
    assert (run.status, run.error) == (JobStatus.succeeded, None)
    assert (run.total_files, run.scored_images, run.error_files) == (2002, 2000, 2)
    rows = shard_rows()
    assert len(rows) == 21 and all(r.status == JobStatus.succeeded for r in rows)
    took = {r.worker_host.split("-")[0] for r in rows}
    by_number = {r.number: r for r in rows}
    assert {"w0", "w1"} <= took, rows
    # The shard its host died in was finished elsewhere, on a later attempt.
    assert all(by_number[n].attempts >= 2 and not by_number[n].worker_host.startswith(f"{host}-") for n, host in held.items()), (held, rows)
    with session_scope() as s:  # no duplicates: every file once, every image scored by each detector once
        files = s.execute(
            text(
                "SELECT count(*), count(DISTINCT folder || '/' || rel_path) FROM "
                "(SELECT folder, rel_path FROM scored_images WHERE run_id = 1 UNION ALL SELECT folder, rel_path FROM file_errors WHERE run_id = 1) f"
            )
        ).one()
        assert tuple(files) == (2002, 2002)
        assert s.execute(text("SELECT count(*), count(DISTINCT (image_id, detector_id)) FROM scores WHERE run_id = 1")).one() == (4000, 4000)


@pytest.fixture
def pg_fleet(tmp_path, monkeypatch):
    """A fleet on a PostgreSQL server of its own, which the test may stop and start (and Redis of its own)."""
    if REDIS is None or PG_BIN is None:
        pytest.skip("redis-server or PostgreSQL's server programs are not installed")
    pg = Postgres(free_port())
    pg.init()
    redis = Redis(free_port(), tmp_path)
    redis.start()
    (tmp_path / "roots").mkdir()
    for name, value in {
        **FLEET_ENV,
        "VOCFLEET_DATABASE_URL": pg.url,
        "VOCFLEET_BROKER_URL": f"redis://127.0.0.1:{redis.port}/0",
        "VOCFLEET_SCORE_ROOTS": str(tmp_path / "roots"),
    }.items():
        monkeypatch.setenv(name, value)
    dispose_engines()
    ensure_schema()
    f = Fleet(tmp_path, make_fake_voc(tmp_path / "VOC2007", n=64, classes=("car", "dog", "cat")))
    f.redis, f.pg = redis, pg
    yield f
    f.stop_all()
    redis.stop()
    dispose_engines()
    pg.remove()


def tolerant(predicate):
    """A wait predicate that reads the database: while the database is down, the answer is 'not yet'."""

    def check():
        try:
            return predicate()
        except OperationalError:
            dispose_engines()
            return False

    return check


def test_postgres_restart_under_training_and_scoring_loses_nothing(pg_fleet, tmp_path, invoke):
    """The database restarts (down 2 s) while workers heartbeat and record epochs, then while they write score batches."""
    fleet = pg_fleet
    for name in ("w0", "w1"):
        fleet.start_worker(name)
    fleet.start_scheduler()
    fleet.submit("car,dog,cat", epochs=4, image_size=96)
    fleet.wait(tolerant(lambda: job_rows()[1][1] >= 2), 180, "the first job to train")
    fleet.pg.stop()
    time.sleep(2)
    fleet.pg.start()
    fleet.wait(tolerant(lambda: all_finished(3)), 240, "every job to finish after the restart")
    assert_ran_once_each(4)

    pics = tmp_path / "roots" / "pics"
    sources = sorted(SHARED_VOC.glob("JPEGImages/*.jpg"))[:100] or sorted((fleet.voc / "JPEGImages").glob("*.jpg"))
    distinct_pictures(sources, pics, 400, 200)
    assert "queued" in invoke("score", pics, "--shard-size", 40).output

    fleet.wait(tolerant(lambda: count_shards(JobStatus.succeeded) >= 2 and count_shards(JobStatus.queued) >= 4), 120, "the scoring run part-way")
    fleet.pg.stop()
    time.sleep(2)
    fleet.pg.start()

    run = fleet.wait(tolerant(run_finished), 240, "the run to finish after the restart")
    assert (run.status, run.total_files, run.scored_images, run.error_files) == (JobStatus.succeeded, 400, 400, 0)
    with session_scope() as s:  # each picture once, scored once by each of the three detectors
        assert s.execute(text("SELECT count(*), count(DISTINCT rel_path) FROM scored_images WHERE run_id = 1")).one() == (400, 400)
        assert s.execute(text("SELECT count(*), count(DISTINCT (image_id, detector_id)) FROM scores WHERE run_id = 1")).one() == (1200, 1200)
    assert all(fleet.procs[name].poll() is None for name in ("w0", "w1"))  # no worker left dead
