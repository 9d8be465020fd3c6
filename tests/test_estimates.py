"""submit --dry-run estimates from earlier epochs (or timed steps), and status/run say what is left of the queue."""

import json
import re
import time

from sqlalchemy import func, select

from tests.support import QUICK
from vocfleet.db.models import EpochMetric, TrainJob
from vocfleet.db.session import session_scope

SMALL = QUICK


def test_dry_run_estimates_from_earlier_epochs_and_queues_nothing(fake_voc, invoke):
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 2, *SMALL).exit_code == 0
    assert invoke("run").exit_code == 0
    with session_scope() as s:
        rates = sorted(s.scalars(select(EpochMetric.images_per_s)))
    res = invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", fake_voc, "--epochs", 3, *SMALL, "--dry-run", "--format", "json")
    got = json.loads(res.stdout)
    assert got["queued"] is False and [j["class"] for j in got["jobs"]] == ["car", "dog"]
    [rate] = got["rates"]  # the median recorded epoch at this shape: nothing timed
    assert rate == {"arch": "tiny", "image_size": 32, "images_per_s": rates[len(rates) // 2], "source": "2 earlier epoch(s) at 32 px in the database"}
    train = got["jobs"][0]["train_images"]
    assert train == 16  # --max-batches 2 of 8
    assert got["total_seconds"] == sum(j["seconds"] for j in got["jobs"]) > 0
    res = invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 3, *SMALL, "--dry-run")
    assert "1 earlier epoch(s)" not in res.output and "2 earlier epoch(s) at 32 px in the database" in res.output and "nothing queued" in res.output
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(TrainJob)) == 1  # only the job that ran


def test_a_long_cpu_estimate_warns(fake_voc, invoke):
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 1, *SMALL).exit_code == 0
    with session_scope() as s:  # an epoch recorded as very slow: 0.001 images/s
        s.add(EpochMetric(job_id=1, epoch=1, train_loss=1, val_loss=1, val_ap=0.5, lr=0.001, seconds=16000, images_per_s=0.001))
    res = invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 1, *SMALL, "--dry-run", "--device", "cpu")
    assert res.exit_code == 0 and "warning: about" in res.stderr and "on this CPU" in res.stderr


def test_status_and_run_say_what_is_left_of_the_queue(fake_voc, invoke):
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 2, *SMALL).exit_code == 0
    assert "queue: 1 job(s) to finish, time left unknown until an epoch of that image size has finished" in invoke("status").output
    assert invoke("run").exit_code == 0
    assert invoke("status").output.strip().endswith("queue: empty")
    assert invoke("submit", "--classes", "dog", "--voc-root", fake_voc, "--epochs", 2, *SMALL).exit_code == 0
    status = invoke("status").output
    assert "queue: 1 job(s) to finish, about" in status and "s left (from the epochs recorded so far)" in status
    assert "job 2: training dog; queue: 1 job(s) to finish, about" in invoke("run").stderr


def test_estimates_read_only_the_latest_epochs(fake_voc, invoke, monkeypatch):
    from vocfleet.db import estimates, listing

    assert invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", fake_voc, "--epochs", 2, *SMALL).exit_code == 0
    with session_scope() as s:  # job 1: an old, slow machine; job 2: today's
        for job, per_s in ((1, 1.0), (2, 50.0)):
            s.add_all(EpochMetric(job_id=job, epoch=e, train_loss=1, val_loss=1, val_ap=0.5, lr=0.001, seconds=16 / per_s, images_per_s=per_s) for e in (1, 2))
    monkeypatch.setattr(estimates, "RECENT_EPOCHS", 2)
    with listing.read_connection() as conn:
        assert estimates.training_rates(conn) == {("tiny", 32): (50.0, 2)}
        assert list(estimates.epoch_seconds(conn)) == [("tiny", 32)]
    monkeypatch.setattr(estimates, "RECENT_EPOCHS", 4)
    with listing.read_connection() as conn:
        assert estimates.training_rates(conn) == {("tiny", 32): (50.0, 4)}  # the upper median of 1, 1, 50, 50


def test_dry_run_on_an_empty_database_times_a_few_steps(fake_voc, invoke):
    # Steps of the real network are timed (the tiny one's estimate rounds to 0 s). The dry run is
    # bounded in time: it answers in a fraction of what the training it estimates would take.
    start = time.monotonic()
    big = ["--epochs", 200, "--image-size", 160, "--arch", "resnet50"]
    res = invoke("submit", "--classes", "car", "--voc-root", fake_voc, *big, "--dry-run", "--device", "cpu")
    took = time.monotonic() - start
    assert res.exit_code == 0, res.output
    [rate] = re.findall(r"resnet50 at 160 px: ([0-9.e+-]+) img/s", res.output)
    assert float(rate) > 0 and rate != "0"
    [total] = re.findall(r"about ([\d.]+) (min|h)", res.output)[:1]  # '61 min', or '1.6 h' on a busy machine
    hours = float(total[0]) / (60 if total[1] == "min" else 1)
    assert took < 45 and hours * 3600 > 20 * took, (took, res.output)  # the training it times could not have run in that time
    res = invoke(
        "submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 2, *SMALL, "--arch", "resnet50", "--dry-run", "--device", "cpu", "--format", "json"
    )
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["queued"] is False and got["total_seconds"] > 0
    assert [(r["arch"], r["image_size"], r["source"]) for r in got["rates"]] == [("resnet50", 32, "timed steps on this machine's cpu")]
    res = invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 2, *SMALL, "--dry-run", "--device", "cpu")
    assert "timing a few training steps at 32 px" in res.output and "timed steps on this machine's cpu" in res.output
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(TrainJob)) == 0


def test_a_job_past_its_last_epoch_still_has_its_evaluation_left(fake_voc, invoke):
    from vocfleet.db import estimates, listing

    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 2, *SMALL).exit_code == 0
    with session_scope() as s:
        job = s.get(TrainJob, 1)
        job.epochs_done = 2  # both epochs recorded; the job is evaluating
        s.add_all(EpochMetric(job_id=1, epoch=e, train_loss=1, val_loss=1, val_ap=0.5, lr=0.001, seconds=40.0, images_per_s=1.0) for e in (1, 2))
    with listing.read_connection() as conn:
        assert estimates.queue_left(conn) == (1, estimates.FINISH_EPOCHS * 40.0)
    assert "about 20 s left" in invoke("status").output
