"""Failures that show as failures: a failed job or run says why, retry and cancel, a database deleted under a job."""

import json

import pytest
from sqlalchemy import select

from tests.support import QUICK
from vocfleet.db.models import Detector, JobStatus, ScoreRun, TrainJob
from vocfleet.db.session import dispose_engines, session_scope
from vocfleet.model.events import EpochFinished

SMALL = ["--epochs", 1, *QUICK]


def test_failed_job_ends_its_celery_task_in_failure(fake_voc, invoke):
    from vocfleet.worker.tasks import WorkFailed, train_detector

    invoke("submit", "--classes", "dog", "--voc-root", fake_voc, *SMALL)
    (fake_voc / "ImageSets/Main/dog_train.txt").unlink()
    result = train_detector.apply(args=[1])  # the real task, run here as a worker would
    assert result.state == "FAILURE" and isinstance(result.result, WorkFailed)
    assert "train_jobs 1 failed:" in str(result.result) and "dog_train.txt" in str(result.result)
    with session_scope() as s:
        assert s.get(TrainJob, 1).status == JobStatus.failed and s.get(TrainJob, 1).attempts == 1  # not retried
    assert train_detector.apply(args=[1]).state == "FAILURE"  # a redelivery reports the failure again, changes nothing


def test_runs_show_the_reason_of_a_failed_run(detectors, wild, invoke, tmp_path):
    with session_scope() as s:  # the dog detector's file is gone (the shared fixture's own file stays)
        s.scalars(select(Detector).where(Detector.voc_class == "dog")).one().checkpoint_path = str(tmp_path / "gone.pt")
    res = invoke("score", wild)
    assert res.exit_code == 1 and "checkpoint" in res.output and "missing" in res.output
    rows = json.loads(invoke("runs", "--format", "json").output)
    assert rows[0]["status"] == "failed" and "missing" in rows[0]["error"]
    table = invoke("runs").output
    assert "error" in table.splitlines()[0] and "missing" in table
    with session_scope() as s:
        assert s.get(ScoreRun, 1).status == JobStatus.failed


def test_retry_resumes_a_failed_job_and_cancel_names_what_is_missing(fake_voc, invoke):
    invoke("submit", "--classes", "dog", "--voc-root", fake_voc, *SMALL)
    listing = fake_voc / "ImageSets/Main/dog_train.txt"
    saved = listing.read_text()
    listing.unlink()
    assert invoke("run").exit_code == 1
    listing.write_text(saved)  # the cause is fixed
    res = invoke("retry", 1, 7)
    assert res.exit_code == 1 and "job 1: queued again" in res.output and "job 7: no such job" in res.output
    assert invoke("run").exit_code == 0
    with session_scope() as s:
        assert s.get(TrainJob, 1).status == JobStatus.succeeded
    assert "job 1: succeeded, not retried" in invoke("retry", 1).output
    res = invoke("cancel", 1, 42)
    assert res.exit_code == 1 and "no job 42" in res.output
    res = invoke("cancel", 2**40)
    assert res.exit_code == 2 and "1099511627776 is not in the range" in res.output


def test_cancelling_running_work_asks_first(fake_voc, invoke):
    from vocfleet.db.claims import claim_job

    invoke("submit", "--classes", "dog", "--voc-root", fake_voc, *SMALL)
    with session_scope() as s:
        claim_job(s, TrainJob, 1, "elsewhere")
    from click.testing import CliRunner

    from vocfleet.scheduler.cli import cli

    res = CliRunner().invoke(cli, ["cancel", "1"], input="n\n")
    assert res.exit_code == 1 and "Stop job 1 (running)?" in res.output  # aborted: nothing changed
    with session_scope() as s:
        assert not s.get(TrainJob, 1).cancel_requested
    res = invoke("cancel", 1, "--yes")
    assert res.exit_code == 0 and "job 1: running; its worker stops it" in res.output


def test_a_database_deleted_under_a_job_fails_it_instead_of_reporting_success(fake_voc, data_dir, invoke):
    from vocfleet.db.session import DatabaseGone
    from vocfleet.worker.runner import run_train_job

    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 2, "--image-size", 32, "--batch-size", 8, "--max-batches", 2).exit_code == 0

    def delete_after_epoch_1(event):
        if isinstance(event, EpochFinished) and event.record.epoch == 1:
            (data_dir / "vocfleet.db").unlink()

    with pytest.raises(DatabaseGone, match="was deleted while this command ran"):
        run_train_job(1, progress=delete_after_epoch_1)
    dispose_engines()
    res = invoke("status")  # the next command does not start an empty database beside the job's files
    assert res.exit_code == 1 and not (data_dir / "vocfleet.db").exists()
    [line] = res.output.splitlines()
    assert line.startswith(f"vocfleet: error: no database at {data_dir / 'vocfleet.db'}, but ") and "restore vocfleet.db from a backup" in line
    assert invoke("db", "upgrade").exit_code == 0 and invoke("status").exit_code == 0  # asked for outright: a new, empty one


def test_a_sqlite_url_in_a_missing_folder_is_refused(monkeypatch, tmp_path, invoke):
    monkeypatch.setenv("VOCFLEET_DATABASE_URL", f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}")
    dispose_engines()
    res = invoke("runs")
    assert res.exit_code == 1 and "the folder" in res.output and "does not exist" in res.output and not (tmp_path / "nowhere").exists()


def test_a_database_deleted_under_scoring_is_one_line_with_no_logged_traceback(detectors, data_dir, invoke, tmp_path, monkeypatch, caplog):
    import numpy as np
    from PIL import Image

    from vocfleet.worker import scoring

    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(folder / f"{i}.jpg")
    real = scoring._score_shard

    def delete_first(*args, **kwargs):
        (data_dir / "vocfleet.db").unlink()
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "_score_shard", delete_first)
    res = invoke("score", folder)
    assert res.exit_code == 1 and res.output.splitlines()[-1].startswith("vocfleet: error: the database") and "was deleted" in res.output, res.output
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def test_a_job_whose_stored_settings_cannot_be_read_fails_once_with_the_reason(fake_voc, invoke):
    from vocfleet.db.models import TrainJob
    from vocfleet.db.session import session_scope
    from vocfleet.worker.runner import run_train_job

    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc).exit_code == 0
    with session_scope() as s:
        s.get(TrainJob, 1).config = {**s.get(TrainJob, 1).config, "epochs": 0}  # as a row edited by hand, or written by a newer version
    assert run_train_job(1) == "failed"
    with session_scope() as s:
        assert s.get(TrainJob, 1).error == "its stored settings cannot be read: --epochs 0: must be between 1 and 1000"
