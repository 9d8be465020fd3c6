"""End to end on the real VOC2007 sample: CLI submit and run, database rows, checkpoints, crash and resume."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from sqlalchemy import select

from vocfleet.db.models import Detector, EpochMetric, JobStatus, TrainJob
from vocfleet.db.session import session_scope
from vocfleet.db.settings import get_settings
from vocfleet.model.artifacts import ArtifactStore, sha256_file
from vocfleet.model.checkpoint import load_checkpoint
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import evaluate
from vocfleet.model.net import detector_model
from vocfleet.model.splits import prepare_splits

pytestmark = pytest.mark.slow
SMALL = ["--arch", "tiny", "--epochs", "2", "--image-size", "32", "--batch-size", "16", "--max-batches", "6"]


def test_two_classes_end_to_end(shared_voc, data_dir, invoke):
    """Submit, run, rows and files on the real sample (the tiny network; ResNet-50 itself trains and scores in test_imagenet.py)."""
    res = invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", shared_voc, *SMALL)
    assert res.exit_code == 0, res.output
    res = invoke("run")
    assert res.exit_code == 0, res.output
    with session_scope() as s:
        jobs = s.scalars(select(TrainJob).order_by(TrainJob.id)).all()
        assert [(j.voc_class, j.status, j.epochs_done) for j in jobs] == [("car", JobStatus.succeeded, 2), ("dog", JobStatus.succeeded, 2)]
        assert all(j.started_at and j.finished_at and j.heartbeat_at and j.worker_host for j in jobs)
        epochs = s.scalars(select(EpochMetric).order_by(EpochMetric.job_id, EpochMetric.epoch)).all()
        assert [(e.job_id, e.epoch) for e in epochs] == [(jobs[0].id, 1), (jobs[0].id, 2), (jobs[1].id, 1), (jobs[1].id, 2)]
        dets = s.scalars(select(Detector).order_by(Detector.voc_class)).all()
    assert [d.voc_class for d in dets] == ["car", "dog"]
    for det in dets:
        # 009623 is listed but missing: reported, not fatal.
        assert det.metrics["skipped_images"] == ["009623"]
        path = ArtifactStore.from_settings(get_settings()).resolve(det.checkpoint_path)
        assert sha256_file(path) == det.sha256
        ckpt = load_checkpoint(path)
        cfg = TrainConfig.from_dict(ckpt["config"])
        model = detector_model(ckpt)
        _, _, ev, _ = prepare_splits(cfg, data_dir / "cache")
        assert evaluate(model, ev, torch.device("cpu"))["ap"] == pytest.approx(det.ap, abs=1e-6)
        assert det.metrics["baseline_accuracy"] == pytest.approx(1 - det.metrics["positives"] / det.metrics["images"])


def test_killed_run_resumes_from_checkpoint(shared_voc, data_dir):
    """kill -9 the embedded runner mid-job; the next 'vocfleet run' resumes at the next epoch."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    vocfleet = [sys.executable, "-m", "vocfleet"]
    # The tiny network at 64 px: an epoch (12 batches, then 646 pictures evaluated) takes over half a
    # second here, so the kill after the first checkpoint lands mid-job.
    quick = ["--arch", "tiny", "--image-size", "64", "--batch-size", "16", "--max-batches", "12", "--epochs", "3"]
    subprocess.run([*vocfleet, "submit", "--classes", "car", "--voc-root", str(shared_voc), *quick], env=env, check=True)
    with session_scope() as s:
        key = s.get(TrainJob, 1).key  # the job's artifact folder
    proc = subprocess.Popen([*vocfleet, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = data_dir / "artifacts" / "jobs" / key / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not last.exists():
        time.sleep(0.2)
    assert last.exists(), "no checkpoint after the first epoch"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with session_scope() as s:
        job = s.get(TrainJob, 1)
        assert job.status == JobStatus.running  # the killed process could not say anything
        first_epoch_rows = [(e.epoch, e.train_loss) for e in job.epochs]
    killed_at = load_checkpoint(last)["epoch"]
    assert killed_at in (1, 2)
    out = subprocess.run([*vocfleet, "run", "--stale-after", "0"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "requeued to resume" in out.stderr
    assert "epoch 1/3" not in out.stderr.split("requeued")[-1]  # did not start over
    with session_scope() as s:
        job = s.get(TrainJob, 1)
        assert job.status == JobStatus.succeeded and job.attempts == 2
        rows = [(e.epoch, e.train_loss) for e in job.epochs]
        assert [r[0] for r in rows] == [1, 2, 3]
        assert rows[: len(first_epoch_rows)] == first_epoch_rows
        assert len(s.scalars(select(Detector)).all()) == 1
