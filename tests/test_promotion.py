"""Which detector serves a class: promotion by AP on the same data (a fingerprint, not a path), activation by hand, one active per class."""

import json

import pytest
from sqlalchemy import select

from tests.support import QUICK
from vocfleet.db.models import Detector, ScoreRun, TrainJob
from vocfleet.db.session import dispose_engines, ensure_schema, session_scope
from vocfleet.db.settings import get_settings
from vocfleet.model import VOC_CLASSES
from vocfleet.model.config import TrainConfig

SMALL = ["--epochs", 1, *QUICK]


@pytest.fixture(autouse=True)
def _schema():
    ensure_schema()


def _race(voc_class: str, i: int, spare: int) -> str:
    from vocfleet.db.registry import activate_detector

    dispose_engines()
    try:
        if i % 2:
            with session_scope() as s:
                activate_detector(s, spare, "race")
        else:
            _finish(0.5, voc_class=voc_class)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the test reports what went wrong in the child
        return f"{type(exc).__name__}: {exc}"


def _finish(
    ap: float,
    promote: str = "if-better",
    split: str = "holdout",
    root: str = "/voc",
    voc_class: str = "car",
    trained_on: str | None = None,
    judged: tuple[str, list[tuple[str, bool, float]]] | None = None,
) -> int:
    """A finished job of ``voc_class`` whose detector file (a few bytes) is in the store; the detector's id.

    ``judged``: its evaluation's fingerprint (a letter) and pictures (VOC id, label, probability)."""
    import hashlib

    from vocfleet.db.claims import claim_job
    from vocfleet.db.training import create_jobs, finish_job
    from vocfleet.model.artifacts import ArtifactStore
    from vocfleet.model.engine import FitResult

    with session_scope() as s:
        job = create_jobs(s, [TrainConfig(voc_class=voc_class, voc_root=root, image_size=64, epochs=3, init="scratch")], promote=promote)[0]
        job_id, key = job.id, job.key
    with session_scope() as s:
        token = claim_job(s, TrainJob, job_id, "h")
    store = ArtifactStore.from_settings(get_settings())
    store.job_dir(key).mkdir(parents=True, exist_ok=True)
    (store.job_dir(key) / "detector.pt").write_bytes(key.encode())
    sha = hashlib.sha256(key.encode()).hexdigest()
    m = {"ap": ap, "split": split, "positives": 5, "images": 50} | ({"train_fingerprint": trained_on * 64} if trained_on else {})
    m |= {"eval_fingerprint": judged[0] * 64} if judged else {}
    pictures = judged[1] if judged else []
    result = FitResult(checkpoint=store.location(key, "detector.pt"), sha256=sha, threshold=0.5, metrics=m, val_metrics=m, best_epoch=1, pictures=pictures)
    with session_scope() as s:
        return finish_job(s, job_id, token, result).id


def active_ids():
    with session_scope() as s:
        return [d.id for d in s.scalars(select(Detector).where(Detector.active.is_(True)))]


def test_a_worse_detector_does_not_replace_a_better_one(invoke):
    first = _finish(0.254)
    worse = _finish(0.217)  # the 1-epoch car detector of the issue
    assert active_ids() == [first]
    history = json.loads(invoke("detectors", "history", "Car", "--format", "json").output)
    assert [(h["id"], h["active"], h["ap"]) for h in history] == [(first, True, 0.254), (worse, False, 0.217)]
    assert "kept detector 1 active: its AP 0.254 is higher" in history[1]["decision"]
    assert {"job", "created", "image_size", "epochs", "init"} <= set(json.loads(invoke("detectors", "--format", "json").output)[0])
    better = _finish(0.30)
    assert active_ids() == [better]
    history = {h["id"]: h for h in json.loads(invoke("detectors", "history", "car", "--format", "json").output)}
    assert history[first]["decision"].startswith(f"replaced by detector {better}: promoted: AP at least") and "(at 20" in history[first]["decision"]
    other_split = _finish(0.10, split="test")  # APs on different splits do not compare: promoted, and it says so
    assert active_ids() == [other_split]
    assert _finish(0.05, promote="always") in active_ids()
    assert _finish(0.99, promote="never") not in active_ids()


def test_the_registry_sorts_each_class_by_a_metric_a_setting_or_a_tag():
    from vocfleet.db.views import registry

    ids = {ap: _finish(ap, promote="never") for ap in (0.3, 0.5, 0.4)}
    active = _finish(0.1, promote="always")
    with session_scope() as s:  # tags as `submit --tag recipe=...` gives them
        for ap, recipe in ((0.3, "a"), (0.4, "b")):
            s.get(TrainJob, s.get(Detector, ids[ap]).job_id).tags = {"recipe": recipe}
    with session_scope() as s:
        order = lambda *how: [d.detector_id for d in registry(s, *how)[0].detectors]
        assert order() == [active, ids[0.4], ids[0.5], ids[0.3]]  # the active one, then the newest first
        assert order("ap") == [active, ids[0.5], ids[0.4], ids[0.3]]  # metrics: the best first
        assert order("newest", "recipe") == [active, ids[0.3], ids[0.4], ids[0.5]]  # a tag's value; without it, last


def test_activate_a_detector_by_hand(invoke):
    first, second = _finish(0.3), _finish(0.4)
    res = invoke("detectors", "activate", first)
    assert res.exit_code == 0 and f"detector {first} (car, AP 0.300) is active; detector {second} (AP 0.400) no longer" in res.output
    assert active_ids() == [first]
    res = invoke("detectors", "activate", first, "--reason", "again")
    assert res.exit_code == 0 and "is active already: nothing changed, the reason is not recorded" in res.output
    res = invoke("detectors", "activate", 99)
    assert res.exit_code == 2 and res.output.strip() == "vocfleet: error: no detector 99: see 'vocfleet detectors --all'"
    assert invoke("detectors", "--all").exit_code == 0 and active_ids() == [first]
    res = invoke("detectors", "activate", second, "--reason", "better on the new photos")
    assert res.exit_code == 0 and active_ids() == [second]
    history = {h["id"]: h["decision"] for h in json.loads(invoke("detectors", "history", "car", "--format", "json").output)}
    assert history[second].startswith(f"activated by hand, replacing detector {first}: better on the new photos (at ")
    assert f"detector {second} activated by hand: better on the new photos" in history[first]
    # Activate the first again with another reason: nothing said before is lost (JSON and table).
    assert invoke("detectors", "activate", first, "--reason", "the new photos were mislabelled").exit_code == 0
    rows = {h["id"]: [c["what"] for c in h["changes"]] for h in json.loads(invoke("detectors", "history", "car", "--format", "json").output)}
    assert rows[first] == [
        "first detector of its class",
        f"replaced by detector {second}: promoted: AP at least the active detector's",
        f"activated by hand, replacing detector {second}",
        f"deactivated: detector {second} activated by hand: better on the new photos",
        f"activated by hand, replacing detector {second}: the new photos were mislabelled",
    ]
    assert rows[second] == [
        "promoted: AP at least the active detector's",
        f"deactivated: detector {first} activated by hand",
        f"activated by hand, replacing detector {first}: better on the new photos",
        f"deactivated: detector {first} activated by hand: the new photos were mislabelled",
    ]
    table = invoke("detectors", "history", "car").output
    assert "first detector of its class" in table and "better on the new photos" in table and "the new photos were mislabelled" in table


def test_a_detector_whose_checkpoint_is_gone_is_not_activated(invoke):
    from vocfleet.model.artifacts import ArtifactStore

    first, second = _finish(0.3), _finish(0.4)
    with session_scope() as s:
        location = s.get(Detector, first).checkpoint_path
    ArtifactStore.from_settings(get_settings()).remove(ArtifactStore.from_settings(get_settings()).resolve(location))
    res = invoke("detectors", "activate", first)
    assert res.exit_code == 2 and active_ids() == [second]
    [line] = res.output.splitlines()
    assert line.startswith(f"vocfleet: error: detector {first} not activated: checkpoint ") and "is missing; retrain or restore it" in line


@pytest.mark.services
def test_one_active_detector_per_class_under_concurrent_promotion_and_activation(pg_url):
    """Processes finish jobs and activate detectors of the same classes at once: never two active, never an error."""
    import multiprocessing

    ensure_schema()
    classes = list(VOC_CLASSES[:8])
    spare = {c: _finish(0.1, promote="never", voc_class=c) for c in classes}  # one inactive detector per class to activate
    dispose_engines()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        outcomes = pool.starmap(_race, [(c, i, spare[c]) for c in classes for i in range(4)])
    assert all(o == "ok" for o in outcomes), outcomes
    with session_scope() as s:
        for c in classes:
            assert len(s.scalars(select(Detector).where(Detector.voc_class == c, Detector.active.is_(True))).all()) == 1


def test_the_library_resolves_links_and_promotion_compares_the_data_not_the_path(fake_voc, tmp_path):
    """The README's Python API through links: jobs store the real VOC root, a run scores a linked folder, promotion compares fingerprints."""
    from vocfleet.db.registry import active_detectors
    from vocfleet.db.runs import create_run
    from vocfleet.db.training import create_jobs
    from vocfleet.worker.runner import run_train_job
    from vocfleet.worker.scoring import run_score_run

    link = tmp_path / "voc-link"
    link.symlink_to(fake_voc)
    small = {"voc_class": "car", "arch": "tiny", "image_size": 32, "epochs": 1, "batch_size": 8, "max_batches": 2}
    configs = [TrainConfig(voc_root=str(root), seed=seed, **small) for root, seed in ((fake_voc, 0), (link, 1))]
    with session_scope() as s:
        ids = [job.id for job in create_jobs(s, configs)]
    assert [run_train_job(i) for i in ids] == ["succeeded", "succeeded"]
    with session_scope() as s:
        assert s.get(TrainJob, ids[1]).config["voc_root"] == str(fake_voc)
        first, second = s.scalars(select(Detector).order_by(Detector.id)).all()
        assert first.metrics["eval_fingerprint"] == second.metrics["eval_fingerprint"] and len(first.metrics["eval_fingerprint"]) == 64
        compared = ("promoted: AP at least the active detector's", f"kept detector {first.id} active: its AP {first.ap:.3f} is higher")
        assert second.metrics["promotion"]["decision"] in compared
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        (photos / name).write_bytes((fake_voc / "JPEGImages" / name).read_bytes())
    (tmp_path / "photos-link").symlink_to(photos)
    with session_scope() as s:
        run_id = create_run(s, [str(tmp_path / "photos-link")], active_detectors(s), batch_size=4, max_attempts=1).id
    assert run_score_run(run_id) == "succeeded"
    with session_scope() as s:
        run = s.get(ScoreRun, run_id)
        assert (run.scored_images, run.error_files, run.folders) == (3, 0, [str(photos)])


def test_the_data_fingerprint_follows_labels_not_places(fake_voc, tmp_path):
    from vocfleet.model.splits import fingerprint, prepare_splits

    cfg = TrainConfig(voc_class="car", voc_root=str(fake_voc), image_size=32)
    _, _, evaluation, _ = prepare_splits(cfg, tmp_path / "cache")
    before = fingerprint(evaluation)
    (tmp_path / "link").symlink_to(fake_voc)
    assert fingerprint(prepare_splits(cfg.with_(voc_root=str(tmp_path / "link")), tmp_path / "cache2")[2]) == before
    listing = fake_voc / "ImageSets" / "Main" / "car_train.txt"
    one = evaluation.decoded.ids[int(evaluation.rows[0])]
    lines = [line.split() for line in listing.read_text().splitlines()]
    listing.write_text("".join(f"{one} {-int(lab)}\n" if i == one else f"{i} {lab}\n" for i, lab in lines))
    assert fingerprint(prepare_splits(cfg, tmp_path / "cache3")[2]) != before


def test_db_upgrade_gives_a_detector_from_before_fingerprints_one(fake_voc, tmp_path, invoke):
    """An active detector trained before 0.5.0 has no fingerprint: 'vocfleet db upgrade' computes it from its job's settings (no job does)."""
    from vocfleet.db.training import create_jobs
    from vocfleet.worker.runner import run_train_job

    small = {"voc_class": "car", "arch": "tiny", "image_size": 32, "epochs": 1, "batch_size": 8, "max_batches": 2}
    with session_scope() as s:
        first = create_jobs(s, [TrainConfig(voc_root=str(fake_voc), **small)])[0].id
    assert run_train_job(first) == "succeeded"
    with session_scope() as s:  # as 0.4 left it: no fingerprint
        old = s.scalars(select(Detector)).one()
        fp = old.metrics["eval_fingerprint"]
        old.metrics = {k: v for k, v in old.metrics.items() if k != "eval_fingerprint"}  # a new dict: popping in place is not seen as a change
    with session_scope() as s:
        assert "eval_fingerprint" not in s.get(Detector, 1).metrics
    with session_scope() as s:  # and one whose VOC root is gone
        gone = create_jobs(s, [TrainConfig(voc_root=str(tmp_path / "gone"), **small)])[0].id
        s.add(Detector(voc_class="car", job_id=gone, checkpoint_path="x", sha256="0" * 64, threshold=0.5, ap=0.1, metrics={}, active=False))
    res = invoke("db", "upgrade")
    assert res.exit_code == 0 and "1 detector(s) trained before data fingerprints now have one (ids 1)" in res.output, res.output
    assert "detector 2: no data fingerprint" in res.output and "compares its VOC root's real path" in res.output
    assert "now have one" not in invoke("db", "upgrade").output  # done once
    link = tmp_path / "voc-link"
    link.symlink_to(fake_voc)
    with session_scope() as s:
        second = create_jobs(s, [TrainConfig(voc_root=str(link), seed=1, **small)])[0].id
    assert run_train_job(second) == "succeeded"
    with session_scope() as s:
        old, _, new = s.scalars(select(Detector).order_by(Detector.id)).all()
        assert old.metrics["eval_fingerprint"] == fp == new.metrics["eval_fingerprint"]
        assert "other pictures" not in new.metrics["promotion"]["decision"]


def test_on_the_same_pictures_with_labels_people_corrected_the_active_detector_is_judged_again(invoke):
    """Retrained with people's labels: the same evaluation pictures, one label corrected (another
    fingerprint). The active detector's AP on the corrected labels, from its stored probabilities,
    is what the new one must reach; on other pictures the APs still do not compare."""
    ids = [f"{i:06d}" for i in range(1, 9)]
    labels = [True, True, False, False, False, False, True, False]
    probs = [0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.6, 0.05]  # AP 0.917 on these labels
    first = _finish(0.917, judged=("a", list(zip(ids, labels, probs, strict=True))))
    corrected = [(i, label or i == "000003", 0.5) for i, label in zip(ids, labels, strict=True)]  # people: 000003 has a car
    worse = _finish(0.95, judged=("b", corrected))  # above 0.917, below the active one's 1.0 on the corrected labels
    assert active_ids() == [first]
    better = _finish(1.0, judged=("b", corrected))
    assert active_ids() == [better]
    elsewhere = _finish(0.2, judged=("c", [(f"{i:06d}", i % 2 == 0, 0.5) for i in range(11, 19)]))
    assert active_ids() == [elsewhere]
    history = {h["id"]: h for h in json.loads(invoke("detectors", "history", "car", "--format", "json").output)}
    said = f"kept detector {first} active: on the same pictures with these labels its AP 1.000 is higher (0.917 on its own labels)"
    assert history[worse]["decision"] == said
    assert "promoted: AP at least the active detector's on the same pictures with these labels" in history[first]["decision"]
    assert "the APs do not compare" in history[better]["decision"]


def test_a_detector_trained_on_other_data_says_so_in_its_decision(invoke):
    first = _finish(0.30, trained_on="a")
    same = _finish(0.20, trained_on="a")
    other = _finish(0.40, trained_on="b")
    history = {h["id"]: h for h in json.loads(invoke("detectors", "history", "car", "--format", "json").output)}
    assert "trained on other" not in history[same]["decision"]
    said = history[other]["decision"]
    assert said.startswith("promoted") and f"trained on other pictures or labels than detector {first} (train_data {'b' * 12}, its {'a' * 12})" in said


@pytest.mark.parametrize("eval_split", ["holdout", "fold:2/4"])
def test_submit_knows_the_fingerprints_a_job_will_record(fake_voc, tmp_path, eval_split):
    """From the lists alone, the (train, eval) fingerprints the trained job records, a listed picture missing included."""
    from vocfleet.model.data import planned_fingerprints
    from vocfleet.model.splits import fingerprint, prepare_splits

    cfg = TrainConfig(voc_class="car", voc_root=str(fake_voc), image_size=32, eval_split=eval_split)
    train, val, evaluation, skipped = prepare_splits(cfg, tmp_path / "cache")
    assert skipped == ["000007"]
    assert planned_fingerprints([cfg]) == {"car": (fingerprint(train, val), fingerprint(evaluation))}


def test_submit_says_when_a_class_will_see_other_data_than_its_active_detector(invoke, fake_voc):
    from vocfleet.model.data import in_holdout, planned_fingerprints

    cfg = TrainConfig(voc_class="car", voc_root=str(fake_voc), eval_split="holdout")
    train_fp, eval_fp = planned_fingerprints([cfg])["car"]
    active = _finish(0.3)
    with session_scope() as s:
        det = s.get(Detector, active)
        det.metrics = {**det.metrics, "train_fingerprint": train_fp, "eval_fingerprint": eval_fp}

    def submit(*more):
        said = invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", fake_voc, "--format", "json", *more)
        assert said.exit_code == 0, said.output
        return json.loads(said.stdout)["notes"], [line for line in said.stderr.splitlines() if line.startswith("note:")]

    assert submit() == ([], [])  # the same pictures and labels, dog without a detector: nothing to say
    assert submit("--seed", 7) == ([], [])  # settings are not data
    listing = fake_voc / "ImageSets" / "Main" / "car_train.txt"
    original = listing.read_text()
    for held, then in ((False, "trains on other pictures or labels (train_data"), (True, "is judged on other pictures or labels (eval_data")):
        flip = next(line.split()[0] for line in original.splitlines() if in_holdout(line.split()[0], cfg.eval_fraction) == held)
        listing.write_text("".join(f"{i} {-int(v)}\n" if i == flip else f"{i} {v}\n" for i, v in (line.split() for line in original.splitlines())))
        new_train, new_eval = planned_fingerprints([cfg])["car"]
        assert (new_train != train_fp, new_eval != eval_fp) == (not held, held)  # one label: one fingerprint moves
        notes, stderr = submit()
        ours, theirs = (new_eval, eval_fp) if held else (new_train, train_fp)
        assert notes == [
            f"car: unlike detector {active}, the active car detector, this job {then} {ours[:12]}, its {theirs[:12]})"
            + ("; --promote if-better will promote it without comparing AP" if held else "")
        ]
        assert stderr == [f"note: {notes[0]}"]
    listing.write_text(original)
    gone = next(line.split()[0] for line in original.splitlines() if not in_holdout(line.split()[0], cfg.eval_fraction) and line.split()[0] != "000007")
    (fake_voc / "JPEGImages" / f"{gone}.jpg").unlink()  # a picture fewer to train on is other data too
    fewer = planned_fingerprints([cfg])["car"][0]
    assert submit("--promote", "always")[0] == [
        f"car: unlike detector {active}, the active car detector, this job trains on other pictures or labels (train_data {fewer[:12]}, its {train_fp[:12]})"
    ]
