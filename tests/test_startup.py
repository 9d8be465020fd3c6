"""The CLI starts without its heavy dependencies: commands that need no network import no torch."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "numpy", "PIL", "matplotlib", "sklearn", "cv2", "celery")
PROBE = """
import json, sys
from vocfleet.scheduler.cli import cli
for argv in json.loads(sys.argv[1]):
    try:
        cli.main(argv, prog_name="vocfleet")
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules], "sqlalchemy": "sqlalchemy" in sys.modules}))
""".replace("HEAVY", repr(HEAVY))


def probe(*commands, data_dir):
    """The commands run one after another in one fresh interpreter: after each, its exit code and the heavy modules loaded so far."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)],
        capture_output=True,
        text=True,
        env={"VOCFLEET_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    got = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(got) == len(commands), out.stdout + out.stderr
    return dict(zip((" ".join(c) for c in commands), got, strict=True))


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["submit", "--help"], ["score", "--help"], ["data", "--help"]])
def test_help_imports_neither_torch_nor_sqlalchemy(args, data_dir):
    [got] = probe(args, data_dir=data_dir).values()
    assert got == {"code": 0, "heavy": [], "sqlalchemy": False}


def test_database_commands_import_no_torch(data_dir):
    """One interpreter for all six: none may have loaded a heavy module by the time it ends (nor before it)."""
    got = probe(["status"], ["runs"], ["detectors"], ["results", "1"], ["cancel", "7"], ["run"], data_dir=data_dir)
    for command, answer in got.items():
        assert answer["heavy"] == [] and answer["code"] in (0, 1, 2), (command, answer)  # cancel 7: no such job, exit 1; run: nothing queued


COMPLETE = """
import json, os, sys
os.environ.update(_VOCFLEET_COMPLETE="bash_complete", COMP_WORDS=sys.argv[1], COMP_CWORD=str(len(sys.argv[1].split()) - 1))
from vocfleet.scheduler.cli import cli
try:
    cli.main([], prog_name="vocfleet")
except SystemExit:
    pass
print(json.dumps({"heavy": [m for m in HEAVY if m in sys.modules], "sqlalchemy": "sqlalchemy" in sys.modules}))
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize(
    ("words", "offered"),
    [("vocfleet sub", ["submit"]), ("vocfleet submit --bal", ["--balance"]), ("vocfleet submit --classes car,d", ["car,diningtable", "car,dog"])],
)
def test_shell_completion_is_light(words, offered, data_dir):
    out = subprocess.run(
        [sys.executable, "-c", COMPLETE, words], capture_output=True, text=True, env={"VOCFLEET_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}, check=True
    ).stdout.splitlines()
    assert [line.split(",", 1)[1] for line in out[:-1]] == offered
    assert json.loads(out[-1]) == {"heavy": [], "sqlalchemy": False}


@pytest.fixture
def filled(data_dir, fake_voc):
    """A database as a day's work leaves it: two finished jobs with their epochs (recorded rates), two detectors, a scoring run."""
    from vocfleet.db.claims import claim_job
    from vocfleet.db.models import Detector, ScoreRun, TrainJob
    from vocfleet.db.session import ensure_schema, session_scope
    from vocfleet.db.training import create_jobs, record_epoch
    from vocfleet.model.config import TrainConfig
    from vocfleet.model.events import EpochRecord

    ensure_schema()
    with session_scope() as s:
        ids = [j.id for j in create_jobs(s, [TrainConfig(voc_class=c, voc_root=str(fake_voc), image_size=64, epochs=1) for c in ("car", "dog")])]
    for job_id in ids:
        with session_scope() as s:
            token = claim_job(s, TrainJob, job_id, "h")
        with session_scope() as s:
            assert record_epoch(s, job_id, token, EpochRecord(1, 0.5, 0.6, 0.3, 1e-3, 10.0, 90.0))
    with session_scope() as s:
        for job_id, cls in zip(ids, ("car", "dog"), strict=True):
            s.add(Detector(voc_class=cls, job_id=job_id, checkpoint_path="x", sha256="0" * 64, threshold=0.5, ap=0.3, metrics={"ap": 0.3}, active=True))
        s.add(ScoreRun(folders=["/photos"], classes=["car", "dog"], detector_ids=[1, 2], total_files=0))
    return fake_voc


def test_commands_that_only_read_import_no_torch_with_data(filled, data_dir):
    """With rows to show (and recorded rates for the dry run's estimate) these answer from the database alone."""
    dry_run = ["submit", "--classes", "car", "--dry-run", "--voc-root", str(filled), "--image-size", "64", "--start", "none"]
    got = probe(["status"], ["runs"], ["detectors"], ["detectors", "history", "car"], ["results", "1"], ["compare", "1", "2"], dry_run, data_dir=data_dir)
    for command, answer in got.items():
        assert answer["code"] == 0 and [m for m in answer["heavy"] if m in ("torch", "torchvision")] == [], (command, answer)


WEB_PROBE = "import sys; from vocfleet.scheduler.web.app import create_app; create_app(); print([m for m in ('torch', 'torchvision') if m in sys.modules])"


def test_the_web_app_imports_no_torch(data_dir):
    out = subprocess.run(
        [sys.executable, "-c", WEB_PROBE],
        capture_output=True,
        text=True,
        env={"VOCFLEET_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert out.stdout.strip() == "[]"
