"""The CLI as a user drives it: bad input, submit, run, status, detectors."""

import csv
import io
import json

import pytest
from sqlalchemy import func, select

from tests.support import QUICK
from vocfleet.db.models import Detector, EpochMetric, JobStatus, TrainJob
from vocfleet.db.session import ensure_schema, session_scope


def job_count():
    ensure_schema()
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(TrainJob))


SMALL = ["--epochs", 1, *QUICK]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "car,bogus"], "unknown class 'bogus'"),
        (["--classes", "car", "--epochs", 0], "--epochs 0"),
        (["--classes", "car", "--image-size", 16], "--image-size 16"),
        (["--classes", "car", "--eval-split", "test"], "split 'test' does not exist"),
        (["--classes", "car", "--init", "nope.pt"], "--init 'nope.pt'"),
        (["--classes", ","], "--classes is empty"),
    ],
)
def test_bad_input_one_line_exit_2_no_rows(fake_voc, args, message, invoke):
    res = invoke("submit", "--voc-root", fake_voc, *args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("vocfleet: error:")
    assert job_count() == 0


def test_missing_voc_root(tmp_path, invoke):
    res = invoke("submit", "--classes", "car", "--voc-root", tmp_path / "nowhere")
    assert res.exit_code == 2 and "does not exist" in res.output
    assert job_count() == 0


def test_malformed_list_line(fake_voc, invoke):
    p = fake_voc / "ImageSets/Main/dog_train.txt"
    p.write_text(p.read_text() + "oops\n")
    res = invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", fake_voc)
    assert res.exit_code == 2 and "dog_train.txt:49: malformed line" in res.output
    assert job_count() == 0


def test_submit_run_status_detectors(fake_voc, invoke):
    res = invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", fake_voc, *SMALL, "--eval-split", "auto")
    assert res.exit_code == 0 and "queued 2 job(s)" in res.output and "eval split: holdout" in res.output
    st = invoke("status")
    assert "queued" in st.output and "0/1" in st.output
    res = invoke("run")
    assert res.exit_code == 0, res.output
    assert "always_absent" in res.output
    with session_scope() as s:
        jobs = s.scalars(select(TrainJob)).all()
        assert [j.status for j in jobs] == [JobStatus.succeeded] * 2
        assert all(j.attempts == 1 and j.epochs_done == 1 for j in jobs)
        assert s.scalar(select(func.count()).select_from(EpochMetric)) == 2
        dets = s.scalars(select(Detector)).all()
        assert sorted(d.voc_class for d in dets) == ["car", "dog"] and all(d.active for d in dets)
    st = invoke("status", "--format", "json")
    assert [r["status"] for r in json.loads(st.output)] == ["succeeded"] * 2
    table = invoke("detectors").output
    data = json.loads(invoke("detectors", "--format", "json").output)
    rows = list(csv.DictReader(io.StringIO(invoke("detectors", "--format", "csv").output)))
    assert [d["class"] for d in data] == [r["class"] for r in rows] == ["car", "dog"]
    assert all(0 <= d["ap"] <= 1 and d["always_absent"] > 0 for d in data)
    assert "car" in table and "dog" in table


def test_retraining_replaces_active_detector(fake_voc, invoke):
    for _ in range(2):
        invoke("submit", "--classes", "car", "--voc-root", fake_voc, *SMALL)
        assert invoke("run").exit_code == 0
    with session_scope() as s:
        dets = s.scalars(select(Detector).order_by(Detector.id)).all()
        assert [d.active for d in dets] == [False, True]
    assert len(json.loads(invoke("detectors", "--format", "json").output)) == 1
    assert len(json.loads(invoke("detectors", "--all", "--format", "json").output)) == 2


def test_run_with_nothing_queued(invoke):
    res = invoke("run")
    assert res.exit_code == 0 and "nothing queued" in res.output


def test_plots_listed_and_watch_returns_when_done(fake_voc, invoke):
    from pathlib import Path

    from PIL import Image

    invoke("submit", "--classes", "car", "--voc-root", fake_voc, *SMALL)
    assert invoke("run").exit_code == 0
    rows = json.loads(invoke("detectors", "--plots", "--format", "json").output)
    for key in ("curves", "pr_curve"):
        with Image.open(Path(rows[0][key])) as im:
            assert im.format == "PNG" and im.width > 100
    res = invoke("status", "--watch", "--interval", "0.1")
    assert res.exit_code == 0 and "succeeded" in res.output


def test_bad_input_at_run_time_fails_once_with_reason(fake_voc, invoke):
    """A VOC root that breaks after submit: the job fails with the reason and is not tried again."""
    from vocfleet.worker.runner import run_train_job

    invoke("submit", "--classes", "dog", "--voc-root", fake_voc, *SMALL)
    (fake_voc / "ImageSets/Main/dog_train.txt").unlink()
    res = invoke("run")
    assert res.exit_code == 1 and "dog_train.txt" in res.output
    with session_scope() as s:
        job = s.scalars(select(TrainJob)).one()
        assert job.status == JobStatus.failed and job.attempts == 1 and "dog_train.txt" in job.error
    assert run_train_job(job.id) == "failed"  # a second delivery changes nothing
    with session_scope() as s:
        assert s.scalars(select(TrainJob)).one().attempts == 1


def test_class_names_in_any_case(fake_voc, invoke):
    res = invoke("submit", "--classes", "Car,DOG", "--start", "none", "--voc-root", fake_voc, *SMALL)
    assert res.exit_code == 0 and "for car, dog" in res.output, res.output
    with session_scope() as s:
        assert [j.voc_class for j in s.scalars(select(TrainJob).order_by(TrainJob.id))] == ["car", "dog"]
