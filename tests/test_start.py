"""The shared start: one network on all 20 labels, trained once, that class jobs wait for and begin from.

No leak (the start never trains on a picture any class is judged on), the dependency in the
database (a class job is not claimed before its start succeeded; the start's crash, retry and
cancel), and the whole path through the CLI on a fake VOC tree.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support import make_fake_voc
from vocfleet.db.claims import claim_job, reap_stale
from vocfleet.db.models import JobStatus, TrainJob
from vocfleet.db.session import session_scope, upgrade_database
from vocfleet.db.training import create_jobs, finish_start, next_queued, ready_ids, retry_job, waiting_jobs
from vocfleet.model import VOC_CLASSES, ConfigError
from vocfleet.model.config import START_CLASS, TrainConfig
from vocfleet.model.data import in_image_fold, role_labels, start_labels
from vocfleet.model.engine import fit, fit_start
from vocfleet.model.net import build_model

CLASSES = ("car", "dog", "cat", "person")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """Four classes, difficult-only labels among them, one listed picture missing."""
    return make_fake_voc(tmp_path_factory.mktemp("voc") / "VOC2007", n=96, classes=CLASSES)


def _tiny(voc: Path, voc_class: str, **kw) -> TrainConfig:
    settings = {"arch": "tiny", "image_size": 32, "epochs": 1, "batch_size": 8, "max_batches": 2, "val_fraction": 0.3, **kw}
    if voc_class == START_CLASS:
        settings["balance"] = "none"
    return TrainConfig(voc_class=voc_class, voc_root=str(voc), **settings)


@pytest.mark.parametrize("split", [{"eval_split": "holdout"}, *({"eval_split": f"fold:{f}/4", "fold_by": "image"} for f in range(4))])
def test_the_start_never_trains_on_a_picture_any_class_is_judged_on(voc, split):
    start = set(start_labels(_tiny(voc, START_CLASS, **split), voc))
    judged = set()
    for c in CLASSES:
        train, evaluation = role_labels(_tiny(voc, c, **split), voc)
        judged |= set(evaluation)
        assert set(train) <= start  # the start sees every picture a class trains on
    assert judged and not start & judged
    assert len(start) + len(judged) >= 90  # and the start sees all the rest (96 listed, a few difficult for every class)


def test_folds_by_image_are_the_same_for_every_class_and_cover_every_picture(voc):
    ids = [f"{i:06d}" for i in range(1, 97)]
    assert sorted(sum(in_image_fold(i, f, 4) for f in range(4)) for i in ids) == [1] * len(ids)  # a partition
    per_class = []
    for c in CLASSES:
        _, evaluation = role_labels(_tiny(voc, c, eval_split="fold:1/4", fold_by="image"), voc)
        per_class.append({i for i in evaluation})
    # Each class drops its difficult-only pictures (the fake tree marks every 11th for all classes); the rest of fold 1 is judged by every class.
    fold = {i for i in ids if in_image_fold(i, 1, 4)}
    difficult = {i for k, i in enumerate(ids) if k % 11 == 5}
    assert all(s == fold - difficult for s in per_class)


def test_folds_by_label_with_a_start_are_refused_in_one_line(voc):
    with pytest.raises(ConfigError, match="needs folds cut by image"):
        _tiny(voc, "car", eval_split="fold:0/4", start="k")
    with pytest.raises(ConfigError, match="needs folds cut by image"):
        _tiny(voc, START_CLASS, eval_split="fold:0/4")
    with pytest.raises(ConfigError, match="give --init to the start instead"):
        _tiny(voc, "car", start="k", init="imagenet", arch="resnet50")
    with pytest.raises(ConfigError, match="no --aux-classes"):
        TrainConfig(voc_class=START_CLASS, voc_root=str(voc), balance="sampler")


def test_a_class_job_begins_from_the_start_and_its_row_of_the_head(voc, tmp_path):
    start = fit_start(_tiny(voc, START_CLASS, epochs=2), out_dir=tmp_path / "start", cache_dir=tmp_path / "cache")
    assert Path(start.checkpoint).name == "start.pt" and len(start.history) == 2
    assert set(start.metrics["class_ap"]) == set(CLASSES)  # the classes with labels; the other 16 have no list here
    saved = torch.load(start.checkpoint, weights_only=True)["model"]
    assert saved["fc.weight"].shape[0] == len(VOC_CLASSES)
    dog = VOC_CLASSES.index("dog")
    model = build_model(start.checkpoint, arch="tiny", head=dog)
    assert torch.equal(model.state_dict()["fc.weight"][0], saved["fc.weight"][dog])
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])
    result = fit(_tiny(voc, "dog", start="key"), out_dir=tmp_path / "dog", cache_dir=tmp_path / "cache", start_weights=Path(start.checkpoint))
    assert 0 <= result.metrics["ap"] <= 1
    with pytest.raises(ConfigError, match="needs its start.pt"):
        fit(_tiny(voc, "dog", start="key"), out_dir=tmp_path / "dog2", cache_dir=tmp_path / "cache")


def test_a_start_resumes_from_its_last_epoch(voc, tmp_path):
    cfg = _tiny(voc, START_CLASS, epochs=2)
    whole = fit_start(cfg, out_dir=tmp_path / "a", cache_dir=tmp_path / "cache", job_key="k")
    calls = iter(range(1000))

    def should_stop() -> bool:  # stops in epoch 2 (two batches per epoch)
        return next(calls) >= 2

    with pytest.raises(Exception, match="stopped in epoch 2"):
        fit_start(cfg, out_dir=tmp_path / "b", cache_dir=tmp_path / "cache", job_key="k", should_stop=should_stop)
    resumed = fit_start(cfg, out_dir=tmp_path / "b", cache_dir=tmp_path / "cache", job_key="k")
    assert resumed.resumed_from == 1
    assert np.isclose(resumed.metrics["map"], whole.metrics["map"], atol=1e-4)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db(request, voc):
    """A start and two class jobs that begin from it."""
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")
    upgrade_database()
    with session_scope() as s:
        start = create_jobs(s, [_tiny(voc, START_CLASS)])[0]
        jobs = create_jobs(s, [_tiny(voc, c) for c in ("car", "dog")], start_job_id=start.id)
        assert all(j.config["start"] == start.key for j in jobs)
        return start.id, [j.id for j in jobs]


def test_class_jobs_wait_in_the_database_until_their_start_succeeds(db):
    start, jobs = db
    with session_scope() as s:
        assert next_queued(s) == (start, START_CLASS)
        assert ready_ids(s, [start, *jobs]) == [start]
        assert claim_job(s, TrainJob, jobs[0], "w") is None  # a delivered message for a waiting job runs nothing
        token = claim_job(s, TrainJob, start, "w")
        assert next_queued(s) is None  # the start runs; its jobs still wait
        assert [(w.start_job_id, w.start_status, w.job_ids) for w in waiting_jobs(s)] == [(start, JobStatus.running, tuple(jobs))]
    with session_scope() as s:
        assert finish_start(s, start, token, "jobs/k/start.pt", "0" * 64, 0.5) == jobs
    with session_scope() as s:
        assert next_queued(s) == (jobs[0], "car") and waiting_jobs(s) == []
        assert claim_job(s, TrainJob, jobs[1], "w") is not None  # the fleet runs them in parallel now


def test_a_crashed_start_is_reaped_and_its_jobs_keep_waiting(db):
    start, jobs = db
    with session_scope() as s:
        claim_job(s, TrainJob, start, "w")
    with session_scope() as s:
        requeued, _ = reap_stale(s, TrainJob, stale_after=timedelta(seconds=-1))
        assert requeued == [start]
        assert ready_ids(s, jobs) == []


def test_cancelling_a_start_cancels_the_jobs_that_wait_for_it_and_retry_brings_it_back(db, invoke):
    start, jobs = db
    res = invoke("cancel", start)
    assert res.exit_code == 0, res.output
    assert all(f"job {i}: cancelled" in res.output for i in (start, *jobs))
    res = invoke("submit", "--classes", "car", "--voc-root", "/nonexistent", "--start", start)
    assert res.exit_code == 2
    with session_scope() as s:
        assert retry_job(s, start) == JobStatus.queued and retry_job(s, jobs[0]) == JobStatus.queued
        assert next_queued(s) == (start, START_CLASS) and ready_ids(s, jobs) == []


def test_submit_with_a_start_of_other_evaluation_pictures_is_refused(db, voc, invoke):
    start, _ = db
    res = invoke("submit", "--classes", "car", "--voc-root", voc, "--arch", "tiny", "--image-size", 32, "--start", start, "--eval-split", "fold:0/4")
    assert res.exit_code == 2 and "the start has eval-split 'holdout'" in res.output and "Traceback" not in res.output
    with session_scope() as s:
        assert s.query(TrainJob).count() == 3  # nothing written


def test_start_new_through_the_cli_then_run_trains_the_start_first(voc, invoke, monkeypatch):
    from vocfleet.worker import runner

    tiny = ("--arch", "tiny", "--image-size", 32, "--epochs", 1, "--batch-size", 8, "--max-batches", 2, "--val-fraction", 0.3)
    res = invoke("submit", "--classes", "car,dog", "--voc-root", voc, "--start", "new", "--start-epochs", 2, "--eval-split", "fold:2/4", *tiny)
    assert res.exit_code == 0, res.output
    assert "queued start job 1" in res.output and "beginning from start job 1" in res.output
    assert "2 epochs from scratch" in res.output and "(1 epoch, 32 px" in res.output  # not "1 epochs"
    res = invoke("status")
    assert res.output.count("waits for start job 1 (queued)") == 2

    real = runner.fit_start
    monkeypatch.setattr(runner, "fit_start", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    res = invoke("run")
    assert res.exit_code == 1
    assert "job 1 (all) failed: RuntimeError: boom" in res.output
    assert "job(s) 2, 3 wait for start job 1, which is failed: 'vocfleet retry 1', then 'vocfleet run'" in res.output
    assert "training car" not in res.output

    monkeypatch.setattr(runner, "fit_start", real)
    assert invoke("retry", 1).exit_code == 0
    res = invoke("run")
    assert res.exit_code == 0, res.output
    assert "training the shared start" in res.output and "training car" in res.output and "training dog" in res.output
    with session_scope() as s:
        start = s.get(TrainJob, 1)
        assert start.status == JobStatus.succeeded and start.start_file == f"jobs/{start.key}/start.pt" and start.start_sha256
    res = invoke("detectors", "--format", "json")
    rows = json.loads(res.output)
    assert {r["class"]: (r["init"], r["start"]) for r in rows} == {"car": ("start job 1", 1), "dog": ("start job 1", 1)}
    assert all(r["split"] == "fold:2/4" for r in rows)
    # A class alone, later, from the same start: it runs at once (the start is done).
    res = invoke("submit", "--classes", "cat", "--voc-root", voc, "--start", 1, "--eval-split", "fold:2/4", *tiny)
    assert res.exit_code == 0, res.output
    assert invoke("run").exit_code == 0
    res = invoke("compare", 1, 3)
    assert res.exit_code == 0, res.output


def test_the_default_is_a_start_for_several_classes_and_none_for_one(voc, invoke):
    res = invoke("submit", "--classes", "car,dog", "--voc-root", voc, "--arch", "tiny", "--image-size", 32, "--format", "json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["start_job"] == 1 and [j["class"] for j in got["jobs"]] == [START_CLASS, "car", "dog"]
    res = invoke("submit", "--classes", "cat", "--voc-root", voc, "--arch", "tiny", "--image-size", 32, "--format", "json")
    assert json.loads(res.stdout)["start_job"] is None
    with session_scope() as s:
        epochs = {j.id: (j.voc_class, j.config["epochs"], j.config["fold_by"], j.config["lr"], j.config["augment_policy"]) for j in s.query(TrainJob)}
    # The folds' choice (bench/RESULTS.md): an 80-epoch start at 2e-3 with the strong augmentation, then one epoch per class at a
    # tenth of the rate with the origin's; a class alone keeps five at 2e-3, the origin's.
    assert epochs == {
        1: (START_CLASS, 80, "image", 2e-3, "strong"),
        2: ("car", 1, "image", 2e-4, "origin"),
        3: ("dog", 1, "image", 2e-4, "origin"),
        4: ("cat", 5, "label", 2e-3, "origin"),
    }
    tiny = ("--voc-root", voc, "--arch", "tiny", "--image-size", 32)
    assert invoke("submit", "--classes", "car,dog", *tiny, "--lr", 0.001, "--augment-policy", "origin").exit_code == 0
    with session_scope() as s:
        given = {(j.config["lr"], j.config["augment_policy"]) for j in s.query(TrainJob).filter(TrainJob.id > 4)}
        assert given == {(0.001, "origin")}  # a rate or a policy given is every job's, the start's too
    res = invoke("submit", "--classes", "car,dog", *tiny, "--dry-run", "--format", "json")
    assert [(j["class"], j["epochs"]) for j in json.loads(res.stdout)["jobs"]] == [(START_CLASS, 80), ("car", 1), ("dog", 1)]


def test_bad_start_options_are_one_line_and_queue_nothing(voc, invoke):
    for args, said in (
        (("--start", "new", "--start-epochs", 0), "--start-epochs 0: must be between 1 and 1000"),
        (("--start", "soon"), "--start 'soon': 'auto', 'none', 'new'"),
        (("--start", "new", "--fold-by", "label", "--eval-split", "fold:0/4"), "needs folds cut by image"),
    ):
        res = invoke("submit", "--classes", "car,dog", "--voc-root", voc, "--arch", "tiny", *args)
        assert res.exit_code == 2 and said in res.output and len(res.output.strip().splitlines()) == 1, res.output
    upgrade_database()
    with session_scope() as s:
        assert s.query(TrainJob).count() == 0
