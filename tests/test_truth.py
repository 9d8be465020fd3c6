"""Where a detector is right and wrong: its evaluation pictures kept with their labels, read back ranked."""

import json

from sqlalchemy import delete, func, select

from tests.support import QUICK
from vocfleet.db.models import Detector, EvaluationPicture
from vocfleet.db.session import session_scope


def test_a_detector_keeps_its_evaluation_pictures_and_lists_its_mistakes(fake_voc, invoke):
    assert invoke("submit", "--classes", "car", "--start", "none", "--voc-root", fake_voc, "--epochs", 1, *QUICK).exit_code == 0
    assert invoke("run").exit_code == 0
    with session_scope() as s:
        det = s.scalars(select(Detector)).one()
        kept = s.scalar(select(func.count()).select_from(EvaluationPicture).where(EvaluationPicture.detector_id == det.id))
        assert kept == det.metrics["images"] and kept > 0  # every picture it was judged on, once
        positives = s.scalar(select(func.count()).where(EvaluationPicture.detector_id == det.id, EvaluationPicture.label))
        assert positives == det.metrics["positives"]
        accuracy, threshold = det.metrics["accuracy"], det.threshold

    got = json.loads(invoke("detectors", "mistakes", "1", "--limit", "500", "--format", "json").output)
    c = got["confusion"]
    assert sum(c.values()) == kept and (c["true_positives"] + c["true_negatives"]) / kept == accuracy
    kinds = {k: [p for p in got["pictures"] if p["kind"] == k] for k in ("false positive", "false negative", "near threshold")}
    assert len(kinds["false positive"]) == c["false_positives"] and len(kinds["false negative"]) == c["false_negatives"]
    fp = [p["probability"] for p in kinds["false positive"]]
    assert fp == sorted(fp, reverse=True) and all(p >= threshold for p in fp)  # the surest false alarms first
    assert all(p["path"].endswith(f"JPEGImages/{p['picture']}.jpg") for p in got["pictures"])
    table = invoke("detectors", "mistakes", "1").output
    assert table.startswith(f"detector 1 (car) at threshold {threshold:.3f}:") and "false alarms" in table

    with session_scope() as s:  # as a detector trained before 0.10 is: no pictures kept
        s.execute(delete(EvaluationPicture))
    res = invoke("detectors", "mistakes", "1")
    assert res.exit_code == 2 and "trained before vocfleet 0.10 kept its evaluation pictures" in res.output
    assert invoke("detectors", "mistakes", "9").exit_code == 2
