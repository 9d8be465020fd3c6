"""Bad values: each one line naming the input, exit 2 (or 1 for the machine's state), nothing written."""

import json

import pytest
from sqlalchemy import func, select

from tests.support import QUICK
from vocfleet.db.models import TrainJob
from vocfleet.db.session import ensure_schema, session_scope

SMALL = ["--epochs", 1, *QUICK]

# Each bad value, and words its one line must hold. bench/reliability.py runs the same lists for docs/reliability.md.
SUBMIT_CASES = [
    (["--init", "/etc/passwd"], ["--init '/etc/passwd'", "not a PyTorch state dict"]),
    (["--device", "banana"], ["--device 'banana'"]),
    (["--device", "cuda:99"], ["--device cuda:99", "CUDA device"]),
    (["--seed", -1], ["--seed -1"]),
    (["--seed", 2**64], ["--seed"]),
    (["--batch-size", 100000], ["--batch-size 100000"]),
    (["--lr", "inf"], ["--lr inf"]),
    (["--weight-decay", "nan"], ["--weight-decay nan"]),
    (["--epochs", 10**9], ["--epochs 1000000000"]),
    (["--max-attempts", -1], ["--max-attempts"]),
    (["--bogus-option"], ["No such option"]),
    (["--name", "caf\udce9"], ["--name b'caf\\xe9'", "not UTF-8"]),  # a byte the shell passes raw
    (["--tag", "k=a\x01b"], ["--tag 'k=a\\x01b'", "control character"]),
    (["--note", "x\x1b[2J"], ["--note", "control character"]),
    (["--voc-root", "/dev/null"], ["VOC root '/dev/null' is not a folder"]),
]
COMMAND_CASES = [
    (["results", 2**40], ["1099511627776"]),
    (["resume-run", 2**40], ["1099511627776"]),
    (["report", 2**40, "--out", "x.html"], ["1099511627776"]),
    (["cancel", 2**40], ["1099511627776"]),
    (["retry", 0], ["0 is not in the range"]),
    (["results", 1, "--min-prob", "nan"], ["--min-prob", "'nan'"]),
    (["results", 1, "--min-prob", "-1"], ["--min-prob"]),
    (["status", "--watch", "--interval", "inf"], ["--interval"]),
    (["status", "--watch", "--interval", "1e308"], ["--interval", "'1e308'"]),
    (["reap", "--stale-after", "1e308"], ["--stale-after", "'1e308'"]),
    (["reap", "--stale-after", "-5"], ["--stale-after"]),
    (["scheduler", "--interval", "0"], ["--interval", "'0'"]),
    (["data", "download", "--year", "1999"], ["--year 1999"]),
    (["results", 1, "--limit", 2**70], ["--limit 1180591620717411303424"]),
    (["results", 1, "--image", ""], ["--image ''"]),
    (["results", 1, "--image", "caf\udce9.jpg"], ["--image b'caf\\xe9.jpg'", "not UTF-8"]),  # as the shell passes raw bytes
    (["results", 1, "--summary", "--by-image"], ["contradict each other"]),
    (["results", 1, "--errors", "--class", "car"], ["--errors lists the files not scored"]),
    (["score", ".", "--shard-size", 99999999999], ["--shard-size 99999999999"]),
    (["export", 1, "--out", ""], ["--out ''"]),
    (["export", 1, "--out", "/proc/x.pt"], ["cannot write in /proc"]),
    (["export", 1, "--out", "caf\udce9.pt"], ["--out b'caf\\xe9.pt'", "not UTF-8"]),
    (["status", "--since", "99999999999d"], ["--since '99999999999d'", "further back"]),
    (["status", "--since", ""], ["--since ''"]),
    (["status", "--class", ""], ["--class ''", "not a VOC class"]),
    (["runs", "--class", "banana"], ["--class 'banana'", "not a VOC class"]),
    (["detectors", "activate", 1, "--reason", "\x07"], ["--reason", "control character"]),
    (["results", 1, "--present", "--absent"], ["--present and --absent contradict each other"]),
    (["score", ""], ["folder ''", "give '.' for that"]),
    (["score", "/proc/self"], ["'/proc/self'", "the kernel's"]),
    (["score", "/sys"], ["'/sys'", "the kernel's"]),
]
ENV_CASES = [
    ({"VOCFLEET_HEARTBEAT_SECONDS": "abc"}, 2, ["VOCFLEET_HEARTBEAT_SECONDS='abc'"]),
    ({"VOCFLEET_STALE_SECONDS": "nan"}, 2, ["VOCFLEET_STALE_SECONDS='nan'"]),
    ({"VOCFLEET_DECODE_THREADS": "0"}, 2, ["VOCFLEET_DECODE_THREADS='0'"]),
    ({"VOCFLEET_DATABASE_URL": "bogus://x"}, 2, ["VOCFLEET_DATABASE_URL='bogus://x'", "not a database URL"]),
    ({"VOCFLEET_DATA_DIR": "/proc/vocfleet"}, 1, ["cannot write /proc/vocfleet"]),
    ({"VOCFLEET_DATABASE_URL": "mysql://u@localhost/db"}, 2, ["VOCFLEET_DATABASE_URL='mysql://u@localhost/db'", "is not installed"]),
    ({"VOCFLEET_DATABASE_URL": "sqlite:////no/such/folder/x.db"}, 1, ["the folder /no/such/folder does not exist"]),
    ({"VOCFLEET_ARTIFACT_ROOT": "ftp://host/x"}, 2, ["VOCFLEET_ARTIFACT_ROOT='ftp://host/x'", "s3://bucket/prefix"]),
    ({"VOCFLEET_S3_ENDPOINT_URL": "http://[::1"}, 2, ["VOCFLEET_S3_ENDPOINT_URL='http://[::1'"]),
    ({"VOCFLEET_VISIBILITY_TIMEOUT": "abc"}, 2, ["VOCFLEET_VISIBILITY_TIMEOUT='abc'"]),
    ({"VOCFLEET_HEARTBEAT_SECONDS": "1e308"}, 2, ["VOCFLEET_HEARTBEAT_SECONDS='1e308'", "a week"]),
    ({"VOCFLEET_METRICS_PORT": "70000"}, 2, ["VOCFLEET_METRICS_PORT='70000'", "65535"]),
    ({"VOCFLEET_DATABASE_URL": "sqlite:////etc/hostname"}, 2, ["names a file that is not a SQLite database"]),
    ({"VOCFLEET_DATABASE_URL": "postgresql+psycopg://[bad"}, 2, ["VOCFLEET_DATABASE_URL='postgresql+psycopg://[bad' is not a database URL"]),
    ({"VOCFLEET_BROKER_URL": "redsi://localhost:6379/0"}, 2, ["VOCFLEET_BROKER_URL='redsi://localhost:6379/0'", "redis://host:6379/0"]),
]


def one_line(res, code: int, *words: str) -> None:
    lines = res.output.strip().splitlines()
    assert res.exit_code == code, res.output
    assert len(lines) == 1 and lines[0].startswith("vocfleet: error:"), res.output
    assert all(w in lines[0] for w in words), res.output


@pytest.mark.parametrize("args, words", SUBMIT_CASES)
def test_submit_refuses_bad_values(fake_voc, invoke, args, words):
    one_line(invoke("submit", "--classes", "car", "--voc-root", fake_voc, *SMALL, *args), 2, *words)
    ensure_schema()
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(TrainJob)) == 0


@pytest.mark.parametrize("args, words", COMMAND_CASES)
def test_commands_refuse_bad_values(invoke, args, words):
    one_line(invoke(*args), 2, *words)


@pytest.mark.parametrize("env, code, words", ENV_CASES)
def test_bad_environment_is_one_line(invoke, monkeypatch, env, code, words):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    one_line(invoke("status"), code, *words)


def test_report_into_a_folder_that_cannot_be_written(detectors, invoke):
    one_line(invoke("report", "--fleet", "--out", "/proc/vocfleet/report.html"), 2, "the folder /proc/vocfleet does not exist")  # nothing made on the way
    one_line(invoke("report", "--fleet", "--out", "/proc/report.html"), 2, "cannot write in /proc")


def test_download_into_a_folder_that_cannot_be_written(invoke):
    one_line(invoke("data", "download", "--dest", "/proc/vocfleet-voc"), 1, "cannot write /proc/vocfleet-voc")


def test_status_gives_epochs_as_numbers_to_scripts(fake_voc, invoke):
    import json

    invoke("submit", "--classes", "car", "--voc-root", fake_voc, *SMALL)
    row = json.loads(invoke("status", "--format", "json").output)[0]
    assert (row["epochs_done"], row["epochs"]) == (0, 1) and "epoch" not in row
    assert "0/1" in invoke("status").output


def test_the_broker_refuses_pickled_messages():
    """A pickle from the broker would run code on the worker: only JSON is accepted (as the worker decodes it)."""
    from kombu.exceptions import ContentDisallowed
    from kombu.serialization import dumps, loads, prepare_accept_content

    from vocfleet.worker.celery_app import app

    accept = prepare_accept_content(app.conf.accept_content)  # names to content types, as the worker does
    content_type, encoding, body = dumps({"job": 1}, serializer="pickle")
    with pytest.raises(ContentDisallowed):
        loads(body, content_type, encoding, accept=accept)
    content_type, encoding, body = dumps({"job": 1}, serializer="json")
    assert loads(body, content_type, encoding, accept=accept) == {"job": 1}


@pytest.mark.services
def test_a_redis_database_that_does_not_exist_is_refused_not_waited_for(fake_voc, invoke, monkeypatch):
    """Redis answers SELECT 99 with an error: a wrong URL, said in one line, not a passing outage that leaves jobs queued."""
    monkeypatch.setenv("VOCFLEET_BROKER_URL", "redis://127.0.0.1:6379/99")
    res = invoke("submit", "--classes", "car", "--voc-root", fake_voc, *SMALL)
    one_line(res, 2, "VOCFLEET_BROKER_URL='redis://127.0.0.1:6379/99'", "DB index is out of range")
    ensure_schema()
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(TrainJob)) == 0  # nothing written


def test_an_artifact_root_under_a_file_is_refused_at_submit(fake_voc, invoke, monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("VOCFLEET_ARTIFACT_ROOT", str(tmp_path / "afile" / "store"))
    one_line(invoke("submit", "--classes", "car", "--voc-root", fake_voc), 1, f"{tmp_path / 'afile'} is a file, not a folder", "VOCFLEET_ARTIFACT_ROOT")
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(TrainJob)) == 0


def test_score_refuses_vocfleets_own_folders(invoke, data_dir, tmp_path):
    (data_dir / "cache").mkdir(parents=True)
    for folder in (data_dir, data_dir / "cache"):  # the data folder and inside it
        one_line(invoke("score", folder), 2, f"'{folder}'", "vocfleet's own")


def test_tags_in_csv_are_json(fake_voc, invoke):
    import csv
    import io

    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--tag", "team=vision", "--tag", "run=7").exit_code == 0
    [row] = list(csv.DictReader(io.StringIO(invoke("status", "--format", "csv").output)))
    assert json.loads(row["tags"]) == {"team": "vision", "run": "7"}
