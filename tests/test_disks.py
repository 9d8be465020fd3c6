"""Disks and checkpoints: a full disk fails the job with that reason and leaves no temporary file; a bad last.pt is set aside."""

import os

from sqlalchemy import select

from vocfleet.db.models import Detector, JobStatus, TrainJob
from vocfleet.db.session import session_scope
from vocfleet.db.settings import get_settings
from vocfleet.model.artifacts import ArtifactStore
from vocfleet.worker.runner import run_train_job

SMALL = ["--image-size", 32, "--batch-size", 8, "--max-batches", 2]


def job_dir():
    with session_scope() as s:
        return ArtifactStore.from_settings(get_settings()).job_dir(s.get(TrainJob, 1).key)


def test_a_full_disk_fails_the_job_with_that_reason_and_no_leftovers(fake_voc, invoke):
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 2, *SMALL).exit_code == 0
    folder = job_dir()
    folder.mkdir(parents=True)
    # The first checkpoint's temporary file is /dev/full: every write to it fails with ENOSPC, for real.
    (folder / f".best.pt.tmp{os.getpid()}").symlink_to("/dev/full")
    assert run_train_job(1) == "failed"
    with session_scope() as s:
        job = s.get(TrainJob, 1)
        assert job.status == JobStatus.failed
        assert job.error == f"disk full while writing best.pt: free space in {folder}, then 'vocfleet retry' the job"
    assert sorted(p.name for p in folder.iterdir()) == []  # the temporary file is gone, nothing half-written
    assert invoke("retry", 1).exit_code == 0 and run_train_job(1) == "succeeded"  # space again: it goes on


def test_a_truncated_last_pt_is_set_aside_and_training_starts_over(fake_voc, invoke):
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 2, *SMALL).exit_code == 0

    def stop_after_epoch_1(event):
        if event["event"] == "epoch":
            raise KeyboardInterrupt

    try:
        run_train_job(1, progress=stop_after_epoch_1)
    except KeyboardInterrupt:
        pass
    last = job_dir() / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # a truncated copy, a bad sector
    events = []
    assert run_train_job(1, progress=events.append) == "succeeded"
    [warning] = [e["message"] for e in events if e["event"] == "warning"]
    assert warning.startswith(f"{last} is unreadable (") and warning.endswith("set aside as last.pt.bad, training from epoch 1")
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert (job_dir() / "last.pt.bad").read_bytes() == data[: len(data) // 2]
    with session_scope() as s:
        assert s.scalars(select(Detector)).one().job_id == 1
