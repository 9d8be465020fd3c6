"""`status` and `runs` read through the database driver alone: the same rows as the ORM, on both databases."""

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from vocfleet.db.claims import claim_job
from vocfleet.db.listing import job_records, read_connection, run_records
from vocfleet.db.models import JobStatus, ScoreRun, TrainJob, utcnow
from vocfleet.db.session import ensure_schema, session_scope
from vocfleet.db.training import create_jobs
from vocfleet.model.config import TrainConfig
from vocfleet.scheduler.commands.base import columns

DBS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


@pytest.fixture(params=DBS)
def database(request):
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")
    ensure_schema()
    return request.param


def test_rows_match_the_orm(database):
    beat = utcnow() - timedelta(seconds=5)
    with session_scope() as s:
        first, second = create_jobs(s, [TrainConfig(voc_class="car", epochs=5, voc_root="/voc"), TrainConfig(voc_class="dog", epochs=3, voc_root="/voc")])
        assert claim_job(s, TrainJob, first.id, "gpu-7")
        first.epochs_done, first.latest_val_ap, first.heartbeat_at = 2, 0.41, beat
        second.status, second.error = JobStatus.failed, "CUDA out of memory\nTraceback ..."
        s.add(ScoreRun(folders=["/photos/a", "/photos/b"], classes=["car", "dog"], detector_ids=[1, 2], total_files=10, scored_images=7, error_files=1))
    with read_connection() as conn:
        jobs, runs = job_records(conn), run_records(conn)
    got = [(j.job_id, j.voc_class, j.status, j.epochs_done, j.epochs) for j in jobs]
    assert got == [(first.id, "car", "running", 2, 5), (second.id, "dog", "failed", 0, 3)]
    assert all(isinstance(j.status, JobStatus) for j in jobs) and isinstance(runs[0].status, JobStatus)  # enums, not strings
    assert jobs[0].val_ap == pytest.approx(0.41) and jobs[0].worker == "gpu-7" and jobs[0].attempts == 1
    assert abs(jobs[0].heartbeat - beat) < timedelta(milliseconds=1) and jobs[0].heartbeat.utcoffset() == timedelta(0)
    assert jobs[1].error == "CUDA out of memory" and jobs[1].heartbeat is None
    [run] = runs
    assert (run.status, run.folders, run.classes, run.files, run.scored, run.errors, run.finished, run.error) == (
        "queued",
        ["/photos/a", "/photos/b"],
        ["car", "dog"],
        10,
        7,
        1,
        None,
        None,
    )
    assert run.created.utcoffset() == timedelta(0) and run.done_fraction == pytest.approx(0.8)
    with session_scope() as s:  # and what the ORM reads back is the same
        assert s.get(TrainJob, first.id).total_epochs == jobs[0].epochs
    assert columns(jobs[0])["epoch"] == "2/5" and columns(jobs[0])["job"] == first.id  # the CLI's "2/3" is made in the CLI


PROBE = """
import json, sys
from vocfleet.scheduler.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="vocfleet")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "sqlalchemy": "sqlalchemy" in sys.modules}))
"""


def probe(*args):
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return out.stdout, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", ["status", "runs"])
def test_listings_do_not_import_sqlalchemy(database, command):
    with session_scope() as s:
        create_jobs(s, [TrainConfig(voc_class="car", epochs=2, voc_root="/voc")])
    out, got = probe(command, "--format", "json")
    assert got == {"code": 0, "sqlalchemy": False}, out


def test_a_new_database_gets_its_schema_first(data_dir):
    """No database file yet: the listing goes through SQLAlchemy, which creates the schema."""
    assert not (data_dir / "vocfleet.db").exists()
    out, got = probe("status")
    assert got == {"code": 0, "sqlalchemy": True} and "no jobs yet" in out
    out, got = probe("status")
    assert got == {"code": 0, "sqlalchemy": False}


def test_an_old_schema_is_upgraded_first(data_dir):
    from alembic import command
    from alembic.config import Config

    from vocfleet.db.session import MIGRATIONS, get_engine, get_settings
    from vocfleet.db.states import SCHEMA_HEAD

    get_engine()  # makes the data folder
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection_url"] = get_settings().database_url
    command.upgrade(cfg, "0006")  # a database from before the promotion policy
    out, got = probe("runs")
    assert got == {"code": 0, "sqlalchemy": True}, out  # the upgrading way
    with read_connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchone()[0] == SCHEMA_HEAD


@pytest.mark.parametrize("command", ["status", "runs"])
def test_a_database_that_does_not_answer_is_one_line(monkeypatch, command):
    monkeypatch.setenv("VOCFLEET_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/test")
    res = subprocess.run([sys.executable, "-m", "vocfleet", command], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and res.stdout == ""
    [line] = res.stderr.splitlines()
    assert line.startswith("vocfleet: error: cannot use the database 'postgresql+psycopg://postgres@127.0.0.1:1/test' (connection")


def test_names_tags_and_filters_on_both_databases(database, invoke, tmp_path):
    """submit/score labels stored and shown; status, runs and detectors filtered by status, class, tag and age, newest first with a limit."""
    from vocfleet.db.models import Detector
    from vocfleet.db.runs import create_run
    from vocfleet.db.states import Labels

    old = utcnow() - timedelta(days=10)
    with session_scope() as s:
        car, dog = create_jobs(
            s,
            [TrainConfig(voc_class="car", epochs=2, voc_root="/voc"), TrainConfig(voc_class="dog", epochs=2, voc_root="/voc")],
            labels=Labels("baseline", {"exp": "a1"}, "first"),
        )
        (cat,) = create_jobs(s, [TrainConfig(voc_class="cat", epochs=2, voc_root="/voc")], labels=Labels(None, {"exp": "b2", "lr": "high"}))
        car.created_at = dog.created_at = old
        dog.status = JobStatus.failed
        det = Detector(voc_class="car", job_id=car.id, checkpoint_path="/x", sha256="0" * 64, threshold=0.5, ap=0.4, metrics={"ap": 0.4}, active=True)
        s.add(det)
        s.flush()
        create_run(s, ["/photos"], [det], batch_size=8, max_attempts=1, labels=Labels("holiday", {"trip": "rome"}, None))
        create_run(s, ["/other"], [det], batch_size=8, max_attempts=1)

    def listed(*args):
        res = invoke(*args, "--format", "json")
        assert res.exit_code == 0, res.output
        return json.loads(res.output)

    jobs = listed("status")
    assert [(j["job"], j["name"], j["tags"], j["note"]) for j in jobs] == [
        (car.id, "baseline", {"exp": "a1"}, "first"),
        (dog.id, "baseline", {"exp": "a1"}, "first"),
        (cat.id, None, {"exp": "b2", "lr": "high"}, None),
    ]
    assert [j["job"] for j in listed("status", "--tag", "exp=a1")] == [car.id, dog.id]
    assert [j["job"] for j in listed("status", "--tag", "exp=b2", "--tag", "lr=high")] == [cat.id]
    assert listed("status", "--tag", "exp=a1", "--tag", "lr=high") == []
    assert [j["job"] for j in listed("status", "--status", "failed")] == [dog.id]
    assert [j["job"] for j in listed("status", "--class", "car,cat")] == [car.id, cat.id]
    assert [j["job"] for j in listed("status", "--since", "2d")] == [cat.id]
    assert [j["job"] for j in listed("status", "--since", old.date().isoformat())] == [car.id, dog.id, cat.id]
    res = invoke("status", "--limit", "1", "--format", "json")  # a limit lists the newest first and says how many more
    assert [j["job"] for j in json.loads(res.stdout)] == [cat.id] and "2 more jobs not shown" in res.stderr

    table = invoke("status", "--tag", "exp=a1").output
    assert "baseline" in table and "exp=a1" in table and "lr=high" not in table
    assert [r["run"] for r in listed("runs", "--tag", "trip=rome")] == [1] and listed("runs")[0]["name"] == "holiday"
    assert [r["run"] for r in listed("runs", "--class", "car", "--status", "queued")] == [1, 2]
    [d] = listed("detectors", "--tag", "exp=a1")
    assert (d["id"], d["name"], d["tags"]) == (det.id, "baseline", {"exp": "a1"})
    assert listed("detectors", "--status", "inactive") == [] and listed("detectors", "--class", "dog") == []

    # Through the CLI too: the labels a user types are the ones stored.
    pics = tmp_path / "pics"
    pics.mkdir()
    res = invoke("score", pics, "--name", "first look", "--tag", "trip=demo", "--note", "nothing yet")
    assert res.exit_code == 0, res.output
    assert [(r["name"], r["tags"], r["note"]) for r in listed("runs", "--tag", "trip=demo")] == [("first look", {"trip": "demo"}, "nothing yet")]

    for args, says in (
        (("status", "--tag", "exp"), "--tag 'exp': use KEY=VALUE"),
        (("runs", "--since", "last week"), "--since 'last week': a date"),
        (("submit", "--classes", "car", "--voc-root", "/nowhere", "--name", " "), "--name ' ': 1 to 100 characters"),
    ):
        res = invoke(*args)
        assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith(f"vocfleet: error: {says}"), res.output


def test_compare_puts_detectors_side_by_side_with_their_curves_in_one_png(database, invoke, tmp_path):
    from PIL import Image

    from vocfleet.db.models import Detector, EpochMetric

    ids = []
    with session_scope() as s:
        for lr, epochs in ((0.001, 3), (0.01, 2)):
            (job,) = create_jobs(s, [TrainConfig(voc_class="car", epochs=epochs, lr=lr, voc_root="/voc", image_size=64)])
            for e in range(1, epochs + 1):
                s.add(EpochMetric(job_id=job.id, epoch=e, train_loss=1 / e, val_loss=1.1 / e, val_ap=0.2 * e, lr=lr, seconds=1.0, images_per_s=10.0))
            m = {"ap": 0.3 + lr, "auc": 0.7, "baseline_accuracy": 0.85, "eval_fingerprint": "e" * 64, "train_fingerprint": f"{epochs}" * 64}
            det = Detector(voc_class="car", job_id=job.id, checkpoint_path="/x", sha256="0" * 64, threshold=0.5, ap=m["ap"], metrics=m, active=lr > 0.005)
            s.add(det)
            s.flush()
            ids.append(det.id)
    png = tmp_path / "both.png"
    res = invoke("compare", *ids, "--plot", png)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == [str(i) for i in ids]
    assert lines[lines.index(next(x for x in lines if x.startswith("always_absent")))].split()[1:] == ["0.850", "0.850"]
    assert any(x.split() == ["lr", "0.001", "0.010"] for x in lines) and any(x.split() == ["epochs", "3", "2"] for x in lines)
    assert not any(x.startswith("voc_root") for x in lines) and lines[-1].startswith("settings that differ: epochs, lr;")
    assert Image.open(png).size[0] > 600  # the curves, overlaid
    assert "--plot" in invoke("compare", *ids, "--plot", png).output  # no --force: the file is kept
    data = json.loads(invoke("compare", *ids, "--plot", png, "--force", "--format", "json").output)
    assert data["settings_that_differ"] == {"epochs": [3, 2], "lr": [0.001, 0.01]} and [d["id"] for d in data["detectors"]] == ids
    assert [d["train_data"] for d in data["detectors"]] == ["3" * 12, "2" * 12]  # the data each trained on, told apart
    res = invoke("compare", ids[0], 999)
    assert res.exit_code == 2 and "no detector 999" in res.output


def test_compare_reads_an_old_job_config_as_it_ran(database, invoke):
    """A job stored before a setting existed differs from a new one only where it really ran otherwise (EMA off before 0.3), not in every new setting."""
    from vocfleet.db.models import Detector

    old = {"voc_class": "car", "epochs": 3, "lr": 0.001, "voc_root": "/voc", "image_size": 64}
    ids = []
    with session_scope() as s:
        for config in (old, TrainConfig(**old).to_dict()):  # a row as 0.2 stored it, and one as this version does
            job = TrainJob(voc_class="car", config=config)
            s.add(job)
            s.flush()
            det = Detector(voc_class="car", job_id=job.id, checkpoint_path="/x", sha256="0" * 64, threshold=0.5, ap=0.3, metrics={"ap": 0.3}, active=False)
            s.add(det)
            s.flush()
            ids.append(det.id)
    data = json.loads(invoke("compare", *ids, "--format", "json").output)
    assert data["settings_that_differ"] == {"ema": [0.0, 0.95]}
