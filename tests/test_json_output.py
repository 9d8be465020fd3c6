"""Commands that create or change something print one JSON object with --format json: ids and states, for scripts."""

import json

from tests.support import QUICK

SMALL = ["--epochs", 1, *QUICK]


def as_json(res):
    assert res.exit_code in (0, 1), res.output
    return json.loads(res.stdout)  # the whole of stdout: messages for people went to stderr


def test_submit_run_retry_cancel_as_json(fake_voc, invoke):
    got = as_json(invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", fake_voc, *SMALL, "--format", "json"))
    queued = [{"job": 1, "class": "car", "status": "queued"}, {"job": 2, "class": "dog", "status": "queued"}]
    assert got == {"jobs": queued, "start_job": None, "sent_to_broker": None, "notes": []}
    assert as_json(invoke("cancel", 2, "--format", "json")) == {"changed": [{"job": 2, "status": "cancelled"}], "missing": []}
    got = as_json(invoke("run", "--format", "json"))
    assert got == {"jobs": [{"job": 1, "class": "car", "outcome": "succeeded", "error": None}], "requeued": [], "failed_stale": [], "waiting": []}
    got = as_json(invoke("retry", 1, 2, 9, "--format", "json"))
    assert got == {"jobs": [{"job": 1, "status": "succeeded"}, {"job": 2, "status": "queued"}, {"job": 9, "status": "missing"}]}
    res = invoke("cancel", 2, 7, "--format", "json")
    assert res.exit_code == 1 and as_json(res) == {"changed": [{"job": 2, "status": "cancelled"}], "missing": ["job 7"]}


def test_score_as_json(detectors, wild, invoke):
    got = as_json(invoke("score", wild, "--format", "json"))
    assert got["run"] == 1 and got["status"] == "succeeded" and got["classes"] == ["car", "dog"]
    assert got["scored"] + got["errors"] == got["files"] > 0 and got["errors"] > 0 and got["reason"] is None


def test_listings_of_an_empty_database_are_empty_lists(invoke):
    """A script asking a new database for any listing as JSON gets [], as CSV its header (people get a line saying what to do)."""
    for command in (["status"], ["runs"], ["detectors"], ["workers"], ["labels"], ["labels", "evaluate"]):
        assert as_json(invoke(*command, "--format", "json")) == []
        assert invoke(*command, "--format", "jsonl").stdout == ""
        assert invoke(*command, "--format", "csv").stdout.count("\n") == 1
        assert "yet:" in invoke(*command).output or "no live workers:" in invoke(*command).output
