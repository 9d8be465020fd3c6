"""Signals: SIGTERM and SIGHUP stop `vocfleet run` as Ctrl-C does; after a SIGKILL, commands say when work comes back."""

import re
import signal
import subprocess
import sys
import time

import pytest

from tests.support import wait_for
from vocfleet.db.models import JobStatus, ScoreRun, TrainJob, utcnow
from vocfleet.db.session import ensure_schema, session_scope

VOCFLEET = [sys.executable, "-m", "vocfleet"]


def job():
    with session_scope() as s:
        j = s.get(TrainJob, 1)
        return j.status, j.epochs_done, j.error


@pytest.fixture
def training(fake_voc, invoke, monkeypatch):
    """`vocfleet run` in a subprocess, training a long job; returns it once epoch 1 is recorded."""
    monkeypatch.setenv("VOCFLEET_HEARTBEAT_SECONDS", "0.2")
    res = invoke(
        "submit", "--classes", "car", "--voc-root", fake_voc, "--arch", "tiny", "--epochs", 300, "--image-size", 32, "--batch-size", 8, "--max-batches", 2
    )
    assert res.exit_code == 0, res.output
    proc = subprocess.Popen([*VOCFLEET, "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: job()[1] >= 1 or proc.poll() is not None, 120, "epoch 1")
    assert proc.poll() is None, proc.communicate()
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_run_stopped_by_a_signal_hands_its_job_back(training, sig):
    training.send_signal(sig)
    _, err = training.communicate(timeout=60)
    assert training.returncode == 128 + sig, err
    assert f"interrupted by {sig.name}: job 1 will resume from its last checkpoint" in err and "Traceback" not in err
    status, epochs, error = job()
    assert status == JobStatus.queued and epochs >= 1 and "interrupted" in error


def test_after_a_kill_9_commands_say_when_the_job_comes_back(training, invoke, monkeypatch):
    training.kill()  # SIGKILL: no handler runs, the row still says running
    training.wait()
    assert job()[0] == JobStatus.running
    monkeypatch.setenv("VOCFLEET_STALE_SECONDS", "600")
    res = subprocess.run([*VOCFLEET, "run"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "nothing queued" not in res.stderr
    back_in = re.search(r"'vocfleet run' takes it back in (\d+) s", res.stderr)
    assert "job 1 (car) is running: last heartbeat" in res.stderr and back_in and 500 < int(back_in.group(1)) <= 600, res.stderr  # 600 s less its age
    time.sleep(1)  # silent for five heartbeats: the worker looks gone
    res = invoke("cancel", 1, "--yes")
    assert res.exit_code == 0 and "job 1: cancel requested; last heartbeat" in res.output and "as cancelled" in res.output
    res = subprocess.run([*VOCFLEET, "run", "--stale-after", "0"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and job()[0] == JobStatus.cancelled


def test_resume_run_of_a_running_run_says_when_it_can_take_over(invoke):
    ensure_schema()
    with session_scope() as s:
        s.add(
            ScoreRun(folders=["/x"], classes=["car"], detector_ids=[1], status=JobStatus.running, claim_token="t", heartbeat_at=utcnow(), worker_host="gpu-3")
        )
    res = invoke("resume-run", 1)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "run 1 is running (last heartbeat 0 s ago from gpu-3; if that process was killed, 'vocfleet resume-run 1' takes it back in 120 s" in res.output
    res = invoke("resume-run", 1, "--stale-after", 0)  # taken over at once; it then finds its folder gone
    assert res.exit_code == 1 and "reason: folder '/x' does not exist" in res.output and "None" not in res.output
