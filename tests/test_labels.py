"""Labels from people go back in: listed, evaluated against, and exported as a VOC folder that training takes beside VOC."""

import json

from sqlalchemy import select

from tests.support import QUICK
from vocfleet.db.labels import add_label
from vocfleet.db.models import ScoredImage
from vocfleet.db.session import session_scope


def test_labels_are_listed_evaluated_exported_and_trained_on(detectors, wild, fake_voc, tmp_path, invoke):
    assert invoke("score", wild).exit_code == 0
    with session_scope() as s:
        pics = s.execute(select(ScoredImage.rel_path, ScoredImage.sha256).order_by(ScoredImage.rel_path)).all()
        for i, (_, sha) in enumerate(pics[:6]):
            add_label(s, sha, "dog", i % 2 == 0, "ana")
        add_label(s, pics[0].sha256, "dog", False, "ben")  # the latest word counts
    listed = json.loads(invoke("labels", "--format", "json").output)
    assert len(listed) == 6 and {r["who"] for r in listed} == {"ana", "ben"}
    first = next(r for r in listed if r["sha256"] == pics[0].sha256)
    assert (first["present"], first["who"], first["earlier"]) == (False, "ben", 1) and first["path"].endswith(pics[0].rel_path)

    [row] = json.loads(invoke("labels", "evaluate", "--format", "json").output)
    assert (row["class"], row["pictures"], row["there"]) == ("dog", 6, 2) and 0 <= row["ap"] <= 1 and row["ap_on_voc"] is not None

    out = tmp_path / "ours"
    res = invoke("labels", "export", out)
    assert res.exit_code == 0 and "wrote 6 labelled picture(s)" in res.output
    lines = dict(line.split() for line in (out / "ImageSets" / "Main" / "dog_train.txt").read_text().splitlines())
    assert sorted(lines.values()) == ["-1", "-1", "-1", "-1", "1", "1"] and len(list((out / "JPEGImages").iterdir())) == 6
    assert set((out / "ImageSets" / "Main" / "car_train.txt").read_text().split()[1::2]) == {"0"}  # not said: left out of training
    assert invoke("labels", "export", out).exit_code == 2  # never over an existing folder

    res = invoke("submit", "--classes", "dog", "--start", "none", "--voc-root", fake_voc, "--voc-root", out, "--epochs", 1, *QUICK)
    assert res.exit_code == 0, res.output
    assert invoke("run").exit_code == 0
    status = json.loads(invoke("status", "--format", "json").output)
    assert status[-1]["status"] == "succeeded"
