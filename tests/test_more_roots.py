"""--voc-root given more than once: the further folders' pictures are trained on, evaluation stays the first folder's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import make_fake_voc
from vocfleet.model import VOC_CLASSES, ConfigError
from vocfleet.model.config import START_CLASS, TrainConfig, check_start_fits
from vocfleet.model.data import PEOPLES_LABELS, every_class_labels, planned_fingerprints, role_labels, start_labels, training_sources
from vocfleet.model.engine import fit, fit_start
from vocfleet.model.splits import fingerprint, prepare_splits


def _voc2012(root: Path, n: int = 40) -> Path:
    """A made-up VOC2012-like folder: its own ids (2008_...), car and dog lists of the train split, and one id shared with the 2007 tree."""
    make_fake_voc(root, n=n, seed=3, missing=())
    for f in sorted((root / "JPEGImages").iterdir()):
        f.rename(f.with_name(("" if f.stem == "000001" else "2008_") + f.name))
    for f in (root / "ImageSets" / "Main").iterdir():
        f.write_text("".join(("" if line.split()[0] == "000001" else "2008_") + line for line in f.read_text().splitlines(True)))
    return root


@pytest.fixture
def roots(tmp_path):
    return make_fake_voc(tmp_path / "VOC2007", n=64), _voc2012(tmp_path / "VOC2012")


def _cfg(roots, voc_class="car", **kw) -> TrainConfig:
    first, second = roots
    settings = {"arch": "tiny", "image_size": 32, "epochs": 1, "batch_size": 8, "max_batches": 2, "val_fraction": 0.3, **kw}
    if voc_class == START_CLASS:
        settings["balance"] = "none"
    return TrainConfig(voc_class=voc_class, voc_root=str(first), more_roots=(str(second),), **settings)


@pytest.mark.parametrize("split", [{"eval_split": "holdout"}, {"eval_split": "fold:1/4", "fold_by": "image"}])
def test_further_folders_train_and_never_evaluate(roots, split):
    train, evaluation = role_labels(_cfg(roots, **split), roots[0])
    alone_train, alone_eval = role_labels(TrainConfig(voc_class="car", voc_root=str(roots[0]), **split), roots[0])
    assert evaluation == alone_eval  # judged on the first folder's pictures, as without the second
    added = set(train) - set(alone_train)
    assert added and all(i.startswith("2008_") for i in added) and len(added) == 39 - 4  # 40 listed, one shared id, 4 difficult only
    assert "000001" not in added  # the id both folders list is the first folder's (trained or held out there)
    start = set(start_labels(_cfg(roots, START_CLASS, **split), roots[0]))
    assert added <= start and not start & set(evaluation)


def test_a_job_trains_on_the_union_and_records_it_in_its_fingerprint(roots, tmp_path):
    cfg = _cfg(roots)
    train, val, evaluation, skipped = prepare_splits(cfg, tmp_path / "cache")
    ids = {train.decoded.ids[r] for r in [*train.rows, *val.rows]}
    assert any(i.startswith("2008_") for i in ids) and skipped == ["000007"]
    assert planned_fingerprints([cfg])["car"] == (fingerprint(train, val), fingerprint(evaluation))
    alone = TrainConfig(voc_class="car", voc_root=str(roots[0]))
    assert planned_fingerprints([alone])["car"][0] != fingerprint(train, val)  # more pictures: another training fingerprint
    assert planned_fingerprints([alone])["car"][1] == fingerprint(evaluation)  # the same evaluation
    start = fit_start(_cfg(roots, START_CLASS), out_dir=tmp_path / "start", cache_dir=tmp_path / "cache")
    assert start.metrics["train_images"] + start.metrics["val_images"] > 64
    assert 0 <= fit(cfg, out_dir=tmp_path / "car", cache_dir=tmp_path / "cache").metrics["ap"] <= 1


def test_the_cli_takes_voc_root_twice_and_refuses_a_folder_given_twice(roots, invoke):
    first, second = roots
    tiny = ("--arch", "tiny", "--image-size", 32, "--epochs", 1, "--batch-size", 8, "--max-batches", 2)
    res = invoke("submit", "--classes", "car", "--voc-root", first, "--voc-root", first, *tiny)
    assert res.exit_code == 2 and "a folder is given twice" in res.output
    (second / "ImageSets" / "Main" / "dog_train.txt").unlink()
    res = invoke("submit", "--classes", "car,dog", "--voc-root", first, "--voc-root", second, *tiny)
    assert res.exit_code == 2 and "dog_train.txt" in res.output and "Traceback" not in res.output
    res = invoke("submit", "--classes", "car", "--voc-root", first, "--voc-root", second, *tiny)
    assert res.exit_code == 0, res.output
    assert invoke("run").exit_code == 0
    from vocfleet.db.models import TrainJob
    from vocfleet.db.session import session_scope

    with session_scope() as s:
        assert s.get(TrainJob, 1).config["more_roots"] == [str(second.resolve())]
    with pytest.raises(ConfigError, match="given twice"):
        TrainConfig(voc_class="car", voc_root="/a", more_roots=("/b", "/b"))


def _labels_export(root: Path, first: Path, said: dict[str, dict[str, int]], marker: bool = True) -> Path:
    """A folder as `vocfleet labels export` writes it: pictures named by their VOC id, people's word per class (0 not said)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for i in said:
        (root / "JPEGImages" / f"{i}.jpg").write_bytes((first / "JPEGImages" / f"{i}.jpg").read_bytes())
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in said))
    for c in VOC_CLASSES:
        (root / "ImageSets" / "Main" / f"{c}_train.txt").write_text("".join(f"{i} {said[i].get(c, 0)}\n" for i in said))
    if marker:
        (root / PEOPLES_LABELS).write_text("vocfleet labels export\n")
    return root


@pytest.mark.parametrize("split", [{"eval_split": "holdout"}, {"eval_split": "fold:1/4", "fold_by": "image"}])
def test_peoples_word_replaces_the_label_of_the_same_picture_where_it_is_used(roots, split, tmp_path):
    first = roots[0]
    alone = TrainConfig(voc_class="car", voc_root=str(first), **split)
    train, evaluation = role_labels(alone, first)
    trained, judged = next(i for i in sorted(train) if train[i] == 0), next(i for i in sorted(evaluation) if evaluation[i] == 0)
    said = {trained: {"car": 1}, judged: {"car": 1, "dog": -1}}
    export = _labels_export(tmp_path / "ours", first, said)
    cfg = alone.with_(more_roots=(str(export),))
    new_train, new_eval = role_labels(cfg, first)
    assert (new_train[trained], new_eval[judged]) == (1, 1)  # corrected where each is used
    assert set(new_train) == set(train) and set(new_eval) == set(evaluation)  # the same pictures, never a second copy in training
    assert {k: v for k, v in new_train.items() if k != trained} == {k: v for k, v in train.items() if k != trained}
    _, _, more = training_sources(cfg)
    assert more == [(export, [])]  # decoded from the first folder, as the same pictures
    start_cfg = TrainConfig(voc_class=START_CLASS, voc_root=str(first), more_roots=(str(export),), balance="none", **split)
    start = start_labels(start_cfg, first)
    assert start[trained][VOC_CLASSES.index("car")] == 1.0 and judged not in start  # an evaluation picture never trains the start
    assert planned_fingerprints([cfg])["car"] != planned_fingerprints([alone])["car"]  # other labels: other fingerprints

    plain = _labels_export(tmp_path / "theirs", first, said, marker=False)  # a folder that only reuses the ids: the first folder's labels stand
    assert role_labels(alone.with_(more_roots=(str(plain),)), first) == (train, evaluation)


def test_a_class_job_may_add_folders_to_its_start_but_not_lack_one(roots, tmp_path):
    """A start trained on the first folder serves a job that also trains on people's labels or another
    year (its evaluation pictures, chosen by image, are the same, and the start trained on none); a
    start that trained on a further folder does not serve a job without it."""
    first, second = roots
    split = {"eval_split": "fold:1/4", "fold_by": "image"}
    start = TrainConfig(voc_class=START_CLASS, voc_root=str(first), balance="none", **split)
    job = TrainConfig(voc_class="car", voc_root=str(first), **split)
    train, evaluation = role_labels(job, first)
    export = _labels_export(tmp_path / "ours", first, {next(iter(sorted(evaluation))): {"car": 1}, next(iter(sorted(train))): {"car": 1}})
    for more in ((str(export),), (str(second),), (str(export), str(second))):
        check_start_fits(start, job.with_(more_roots=more), 7)  # accepted
        assert set(role_labels(job.with_(more_roots=more), first)[1]) == set(evaluation)  # judged on the same pictures
    assert not set(start_labels(start, first)) & set(evaluation)  # none of which the start trained on
    with pytest.raises(ConfigError, match=rf"--start 7: the start also trained on {second}, this job does not .*give it as a further --voc-root too"):
        check_start_fits(start.with_(more_roots=(str(second),)), job.with_(more_roots=(str(export),)), 7)
    with pytest.raises(ConfigError, match="the start has eval-split 'fold:1/4', this job 'holdout'"):
        check_start_fits(start, job.with_(eval_split="holdout", fold_by="label"), 7)


def test_aux_classes_learn_peoples_word_and_further_folders(roots, tmp_path):
    """--aux-classes learns the other classes' labels as a start does: people's word where they gave it, and
    the pictures of a further folder with that folder's labels (it read the first folder's lists alone)."""
    first, second = roots
    dog = VOC_CLASSES.index("dog")
    base = _cfg(roots, aux_classes=True).with_(more_roots=())
    labels, _ = every_class_labels(base, first)
    pick = next(i for i in sorted(labels) if labels[i][dog] == 0.0)  # a picture people say has a dog
    export = _labels_export(tmp_path / "ours", first, {pick: {"dog": 1}})
    cfg = base.with_(more_roots=(str(export), str(second)))
    labels, _ = every_class_labels(cfg, first)
    assert labels[pick][dog] == 1.0 and labels["2008_000002"][dog] in (0.0, 1.0)  # people's word; the further folder's pictures
    train = prepare_splits(cfg, tmp_path / "cache")[0]
    rows = {train.decoded.ids[r]: train.aux[k].tolist() for k, r in enumerate(train.rows)}
    assert any(i.startswith("2008_") for i in rows) and all(rows[i] == labels[i] for i in rows)  # what the network is given
