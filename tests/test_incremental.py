"""Scoring a library again computes only what changed: new or changed pictures, and the detectors they lack."""

import json
import os
import shutil

import pytest
from PIL import Image
from sqlalchemy import select

from tests.support import detectors_on_postgres
from vocfleet.db.models import Detector, Score, ScoredImage, ScoreRun
from vocfleet.db.session import session_scope

DBS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


def scores(run_id: int) -> dict[tuple[str, str], tuple[float, bool, int]]:
    """(path, class) -> (probability, present, detector) of a run."""
    with session_scope() as s:
        q = select(ScoredImage.rel_path, Score.voc_class, Score.probability, Score.present, Score.detector_id).join(Score, Score.image_id == ScoredImage.id)
        return {(p, c): (prob, present, d) for p, c, prob, present, d in s.execute(q.where(ScoredImage.run_id == run_id))}


def counts(run_id: int) -> tuple[int, int, int]:
    with session_scope() as s:
        run = s.get(ScoreRun, run_id)
        return run.scored_images, run.reused, run.error_files


@pytest.fixture(params=DBS)
def library(request, detectors, wild, tmp_path):
    """A copy of the wild folder (its files' times are this test's), on SQLite and PostgreSQL."""
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")
        detectors_on_postgres(detectors)
    folder = tmp_path / "library"
    shutil.copytree(wild, folder, symlinks=True)
    return folder


@pytest.fixture
def detector_calls(monkeypatch):
    """How many pictures each detector was run on (a spy on the one function that runs them)."""
    from vocfleet.model import score

    seen: dict[str, int] = {}
    real = score.run_detectors

    def spy(dets, images, pad_to=None):
        n = next(iter(images.values())).shape[0]
        for d in dets:
            seen[d.spec.voc_class] = seen.get(d.spec.voc_class, 0) + n
        return real(dets, images, pad_to)

    monkeypatch.setattr(score, "run_detectors", spy)
    return seen


def test_an_unchanged_library_is_reused_whole(library, invoke, detector_calls):
    assert invoke("score", library).exit_code == 0
    first, calls = counts(1), dict(detector_calls)
    assert first[1] == 0 and calls == {"car": first[0], "dog": first[0]}
    detector_calls.clear()
    res = invoke("score", library, "--format", "json")
    got = json.loads(res.output.strip().splitlines()[-1])
    assert (got["scored"], got["reused"], got["errors"]) == first[:1] + (first[0], first[2])  # every picture reused, the same errors found
    assert detector_calls == {}  # no detector ran
    assert scores(2) == scores(1)  # the new run's results are complete, as the first run's
    assert "(16 reused from earlier runs, 0 computed)" in invoke("score", library).output.replace(f"{first[0]} reused", "16 reused")


def test_only_changed_renamed_and_new_pictures_are_computed(library, invoke, detector_calls):
    assert invoke("score", library).exit_code == 0
    total = counts(1)[0]
    (library / "grey.jpg").rename(library / "grey-renamed.jpg")  # the same content under a new name: found by its sha256
    shutil.copy(library / "002179.jpg", library / "copy-of-002179.jpg")  # a copy: the same content again
    changed = library / "003859.jpg"
    data = changed.read_bytes()
    Image.open(library / "005948.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, quality=90)  # new content, same name
    os.utime(changed, ns=(1, 1))
    assert data != changed.read_bytes()
    detector_calls.clear()
    assert invoke("score", library).exit_code == 0
    scored, reused, _ = counts(2)
    assert scored == total + 1 and reused == total  # one picture more; only the changed file was computed
    assert detector_calls == {"car": 1, "dog": 1}
    first, second = scores(1), scores(2)
    assert second[("grey-renamed.jpg", "car")] == first[("grey.jpg", "car")]
    assert second[("copy-of-002179.jpg", "dog")] == first[("002179.jpg", "dog")]
    assert second[("003859.jpg", "car")] != first[("003859.jpg", "car")]  # scored as what it now is


def test_a_new_detector_runs_alone_and_fresh_runs_everything(library, invoke, detector_calls):
    assert invoke("score", library).exit_code == 0
    total = counts(1)[0]
    with session_scope() as s:  # a new dog detector promoted: the same file, a new row
        old = s.scalars(select(Detector).where(Detector.voc_class == "dog")).one()
        old.active = False
        s.flush()
        s.add(Detector(voc_class="dog", checkpoint_path=old.checkpoint_path, sha256=old.sha256, threshold=old.threshold, ap=old.ap, metrics=old.metrics))
    detector_calls.clear()
    assert invoke("score", library).exit_code == 0
    assert detector_calls == {"dog": total} and counts(2)[:2] == (total, 0)  # every picture decoded, only the new dog detector ran
    first, second = scores(1), scores(2)
    assert all(second[k] == first[k] for k in first if k[1] == "car")  # car's scores taken as they were
    assert {v[2] for k, v in second.items() if k[1] == "dog"} == {old.id + 1}
    detector_calls.clear()
    assert invoke("score", library).exit_code == 0 and counts(3)[1] == total  # and then both are known
    assert invoke("score", library, "--fresh").exit_code == 0
    assert counts(4)[1] == 0 and detector_calls == {"car": total, "dog": total}  # --fresh: everything again
