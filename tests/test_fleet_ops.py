"""Operating a fleet: 'vocfleet workers' from the rows workers write, a warning when queued work has no live worker, 'vocfleet doctor'."""

import json

import pytest

from tests.support import QUICK, migrate_to
from vocfleet.db.session import session_scope
from vocfleet.db.workers import register_worker, worker_stopped
from vocfleet.model import ConfigError

pytestmark = pytest.mark.services


def test_status_and_runs_warn_when_no_live_worker_takes_the_queue(pg_url, fake_voc, tmp_path, invoke, monkeypatch):
    monkeypatch.setenv("VOCFLEET_BROKER_URL", "redis://127.0.0.1:1/0")  # a fleet whose broker nobody answers at
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 1, *QUICK).exit_code == 0
    warning = "warning: 1 row(s) wait in the 'train' queue and no live worker takes it"
    assert warning in invoke("status").stderr
    with session_scope() as s:  # a score worker does not take training jobs
        register_worker(s, "w-score-cpu@h1", "h1", "score", "0.6.0", "cpu", 11)
    assert warning in invoke("status").stderr and "warning" not in invoke("runs").stderr
    with session_scope() as s:
        register_worker(s, "w-train-cpu@h1", "h1", "train", "0.6.0", "cpu", 12)
    assert "warning" not in invoke("status").stderr
    with session_scope() as s:  # it said it stopped (SIGTERM, docker compose stop)
        worker_stopped(s, "w-train-cpu@h1")
    assert warning in invoke("status").stderr
    rows = json.loads(invoke("workers", "--all", "--format", "json").stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("w-score-cpu@h1", "live"), ("w-train-cpu@h1", "stopped")]
    assert [r["name"] for r in json.loads(invoke("workers", "--format", "json").stdout)] == ["w-score-cpu@h1"]
    monkeypatch.setenv("VOCFLEET_STALE_SECONDS", "0")  # silent for longer than the stale window: not live
    assert "no live workers" in invoke("workers").output


def test_the_embedded_default_never_warns(fake_voc, invoke):
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 1, *QUICK).exit_code == 0
    assert "warning" not in invoke("status").stderr


def test_doctor_passes_a_good_host(pg_url, fake_voc, tmp_path, invoke, monkeypatch):
    monkeypatch.setenv("VOCFLEET_BROKER_URL", "redis://127.0.0.1:6379/0")  # the machine's Redis
    monkeypatch.setenv("VOCFLEET_SCORE_ROOTS", str(tmp_path))
    monkeypatch.setenv("VOCFLEET_VOC_ROOT", str(fake_voc))
    assert invoke("db", "upgrade").exit_code == 0
    res = invoke("doctor", "--format", "json")
    checks = {c["check"]: c for c in json.loads(res.stdout)}
    assert res.exit_code == 0, res.output
    assert list(checks) == ["database", "broker", "artifacts", "score roots", "VOC root", "GPUs", "workers"]
    assert all(checks[n]["status"] == "ok" for n in ("database", "broker", "artifacts", "score roots", "VOC root")), checks
    assert checks["workers"]["status"] == "warn" and "no live worker" in checks["workers"]["detail"]
    assert checks["GPUs"]["status"] in ("ok", "warn")  # this machine has none: a warning, not a failure


def test_doctor_names_each_problem_of_a_broken_host(pg_url, fake_voc, tmp_path, invoke, monkeypatch):
    migrate_to(pg_url, "0008")  # a schema the fleet has not upgraded
    monkeypatch.setenv("VOCFLEET_BROKER_URL", "redis://127.0.0.1:1/0")  # nobody answers
    monkeypatch.setenv("VOCFLEET_ARTIFACT_ROOT", "/proc/vocfleet-artifacts")  # cannot be written
    monkeypatch.setenv("VOCFLEET_SCORE_ROOTS", str(tmp_path / "gone"))
    monkeypatch.setenv("VOCFLEET_VOC_ROOT", str(tmp_path / "no-voc"))
    res = invoke("doctor")
    assert res.exit_code == 1
    lines = {line.split()[0]: line for line in res.output.splitlines()[1:]}  # after the header
    assert "FAIL" in lines["database"] and "run 'vocfleet db upgrade'" in lines["database"]
    assert "FAIL    redis://127.0.0.1:1/0 does not answer" in lines["broker"] and "FAIL    cannot write /proc/vocfleet-artifacts" in lines["artifacts"]
    assert "FAIL    not a readable folder here" in lines["score"]
    assert "FAIL" in lines["VOC"] and "does not exist" in lines["VOC"]
    assert "not checked: the database is not usable" in lines["workers"] and "Traceback" not in res.output


@pytest.mark.parametrize("skew_minutes", [-2, 2])
def test_a_host_clock_minutes_off_neither_looks_dead_nor_outlives_its_heartbeat(pg_url, monkeypatch, skew_minutes):
    """Heartbeats and staleness use the database's clock: a worker's own clock (here 2 min slow, or fast) does not count."""
    import time
    from datetime import timedelta

    import vocfleet.db.claims as claims
    import vocfleet.db.states as states
    from vocfleet.db.models import JobStatus, TrainJob
    from vocfleet.db.session import ensure_schema

    ensure_schema()
    with session_scope() as s:
        job = TrainJob(voc_class="car", config={"epochs": 2})
        s.add(job)
        s.flush()
        job_id = job.id
    host_clock = lambda: states.utcnow() + timedelta(minutes=skew_minutes)
    with monkeypatch.context() as m:  # the worker's host: its clock is off
        m.setattr(claims, "utcnow", host_clock)
        m.setattr(states, "utcnow", host_clock)
        with session_scope() as s:
            token = claims.claim_job(s, TrainJob, job_id, "skewed-host")
        with session_scope() as s:
            assert claims.heartbeat(s, TrainJob, job_id, token) == "ok"
    with session_scope() as s:  # the scheduler's host, a moment later: a fresh heartbeat is not stale
        assert claims.reap_stale(s, TrainJob, timedelta(seconds=60)) == ([], [])
    time.sleep(1.5)  # the worker dies: after the stale window its job is taken back, not two minutes later
    with session_scope() as s:
        assert claims.reap_stale(s, TrainJob, timedelta(seconds=1)) == ([job_id], [])
        assert s.get(TrainJob, job_id).status == JobStatus.queued


def test_a_worker_asked_for_gpus_torch_cannot_use_refuses_in_one_line(invoke, monkeypatch):
    """This machine has no GPU torch can use: '--gpus 0' is refused, not quietly turned into a CPU worker."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU torch can use")
    monkeypatch.setenv("VOCFLEET_BROKER_URL", "redis://127.0.0.1:1/0")
    res = invoke("worker", "--gpus", "0")
    assert res.exit_code == 2 and "can use 0 GPU(s) here, not 0" in res.output and "--gpus none" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_one_worker_command_starts_a_scoring_process_per_gpu(monkeypatch):
    """'vocfleet worker --gpus all --queues score' on a host with three GPUs (the device count faked): three pinned processes."""
    from vocfleet.scheduler.commands.operations import worker_devices, worker_processes

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    devices = worker_devices("all")
    assert devices == ["0", "1", "2"] == worker_devices("auto")
    started = worker_processes(devices, "score", "vocfleet", "info", 9100)
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in started] == ["0", "1", "2"]  # each process sees its GPU alone
    assert [env["VOCFLEET_METRICS_PORT"] for env, _ in started] == ["9100", "9101", "9102"]
    nodes = [cmd[cmd.index("-n") + 1] for _, cmd in started]
    assert nodes == ["vocfleet-score-gpu0@%h", "vocfleet-score-gpu1@%h", "vocfleet-score-gpu2@%h"]
    assert all(cmd[cmd.index("-Q") + 1] == "score" and cmd[cmd.index("--concurrency") + 1] == "1" for _, cmd in started)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert worker_devices("all") == [None] and worker_devices("1,1") == ["1"]
    with pytest.raises(ConfigError, match="--gpus 'x'"):
        worker_devices("x")
