"""Every command that writes a file a person names, against every kind of target.

``report --out``, ``compare --plot``, ``export --out`` and ``db backup`` go through one writer
(``model/files.py``): a new name or, with ``--force``, an existing regular file; never a device,
FIFO, folder or link, never inside vocfleet's own folders or over its database, no folders made on
the way; written beside and renamed, so a refusal or a failure leaves the target as it was.
"""

import os
import sqlite3

import pytest

from vocfleet.db.models import Detector, EpochMetric
from vocfleet.db.session import session_scope
from vocfleet.db.training import create_jobs
from vocfleet.model.config import TrainConfig


@pytest.fixture
def made(detectors, data_dir):
    """A database with the two trained detectors and two more with training curves (what compare plots)."""
    ids = []
    with session_scope() as s:
        for lr in (0.001, 0.01):
            (job,) = create_jobs(s, [TrainConfig(voc_class="car", epochs=2, lr=lr, voc_root="/voc", image_size=32)])
            for e in (1, 2):
                s.add(EpochMetric(job_id=job.id, epoch=e, train_loss=1 / e, val_loss=1 / e, val_ap=0.3 * e, lr=lr, seconds=1.0, images_per_s=9.0))
            det = Detector(voc_class="car", job_id=job.id, checkpoint_path="/x", sha256="0" * 64, threshold=0.5, ap=0.3, metrics={"ap": 0.3}, active=False)
            s.add(det)
            s.flush()
            ids.append(det.id)
    return ids


def commands(ids):
    """Each writing command, as ``target -> argv`` (the export is of a real detector: detector 1)."""
    return {
        "report": lambda t, *more: ["report", "--fleet", "--out", t, *more],
        "compare": lambda t, *more: ["compare", *ids, "--plot", t, *more],
        "export": lambda t, *more: ["export", 1, "--out", t, *more],
        "db backup": lambda t, *more: ["db", "backup", t, *more],
    }


def one_line(res, *words):
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("vocfleet: error:"), res.output
    assert all(w in lines[0] for w in words), res.output


NAMES = ("report", "compare", "export", "db backup")


@pytest.mark.parametrize("name", NAMES)
def test_a_new_name_is_written_whole_and_nothing_else_is_left(made, invoke, tmp_path, name):
    out = tmp_path / "out" / "new.bin"
    out.parent.mkdir()
    res = invoke(*commands(made)[name](out))
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 0 and os.listdir(out.parent) == ["new.bin"]


@pytest.mark.parametrize("name", NAMES)
def test_an_existing_file_is_kept_unless_forced(made, invoke, tmp_path, name):
    out = tmp_path / "old.bin"
    out.write_bytes(b"mine")
    one_line(invoke(*commands(made)[name](out)), str(out), "--force")
    assert out.read_bytes() == b"mine"
    res = invoke(*commands(made)[name](out, "--force"))
    assert res.exit_code == 0, res.output
    assert out.read_bytes() != b"mine" and sorted(os.listdir(tmp_path)) == ["old.bin", "vocfleet-data"]


def targets(tmp_path, data_dir):
    """Every kind of path that must be refused, even with --force, and what the message says."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_bytes(b"mine")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    os.mkfifo(tmp_path / "fifo")
    kept = data_dir / "artifacts" / "jobs" / "abc"
    kept.mkdir(parents=True, exist_ok=True)
    (kept / "detector.pt").write_bytes(b"weights")
    return {
        "a folder": (tmp_path / "folder", "is a folder"),
        "a link": (tmp_path / "link", "is a link"),
        "a FIFO": (tmp_path / "fifo", "is a FIFO"),
        "a device": ("/dev/null", "is a device"),
        "the full device": ("/dev/full", "is a device"),
        "a missing folder": (tmp_path / "nope" / "x.bin", "does not exist"),
        "the database": (data_dir / "vocfleet.db", "where vocfleet keeps its own files"),
        "its log": (data_dir / "vocfleet.db-wal", "where vocfleet keeps its own files"),
        "a detector's file": (kept / "detector.pt", "where vocfleet keeps its own files"),
        "the data folder": (data_dir / "report.html", "where vocfleet keeps its own files"),
        "an empty name": ("", "name the file"),
        "a folder that takes no files": ("/proc/x.bin", "cannot write in /proc"),
    }


@pytest.mark.parametrize("name", NAMES)
def test_what_must_never_be_replaced_is_refused_in_one_line_even_with_force(made, invoke, tmp_path, data_dir, name):
    db = data_dir / "vocfleet.db"
    before = db.read_bytes()
    for kind, (target, words) in targets(tmp_path, data_dir).items():
        res = invoke(*commands(made)[name](target, "--force"))
        one_line(res, words)
        assert "Traceback" not in res.output, kind
    assert (tmp_path / "file").read_bytes() == b"mine" and (tmp_path / "link").is_symlink() and (tmp_path / "fifo").is_fifo()
    assert not (tmp_path / "nope").exists() and not (tmp_path / "folder" / ".probe").exists() and os.listdir(tmp_path / "folder") == []
    assert (data_dir / "artifacts" / "jobs" / "abc" / "detector.pt").read_bytes() == b"weights"
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null") and not os.path.isfile("/dev/full")
    assert db.read_bytes()[:16] == before[:16] == b"SQLite format 3\x00"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
