"""VOC lists, decoding and the decode-once cache."""

import threading

import numpy as np
import pytest
from PIL import Image

from vocfleet.model import ConfigError
from vocfleet.model.data import check_voc_root, decoded_cache, in_holdout, load_rgb, read_class_list, split_ids


def test_read_class_list_labels(fake_voc):
    labels = read_class_list(fake_voc, "car", "train")
    assert len(labels) == 48
    assert set(labels.values()) == {1, -1, 0}
    assert split_ids(fake_voc, "train") == list(labels)


def test_malformed_line_names_file_and_line(fake_voc):
    path = fake_voc / "ImageSets/Main/car_train.txt"
    lines = path.read_text().splitlines()
    lines[3] = "000004 maybe"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"car_train.txt:4: malformed line"):
        read_class_list(fake_voc, "car", "train")


@pytest.mark.parametrize("sub", ["ImageSets/Main", "JPEGImages"])
def test_voc_root_must_have_layout(tmp_path, sub):
    (tmp_path / "r" / sub).mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no"):
        check_voc_root(tmp_path / "r")


def test_cache_reports_missing_and_broken(fake_voc, tmp_path):
    (fake_voc / "JPEGImages/000010.jpg").write_bytes(b"not a jpeg")
    ids = split_ids(fake_voc, "train")
    dec = decoded_cache(fake_voc, ids, 32, tmp_path / "cache")
    assert dec.images.shape == (48, 32, 32, 3) and dec.images.dtype == np.uint8
    assert set(dec.bad) == {"000007", "000010"}
    assert dec.bad["000007"] == "missing" and dec.bad["000010"].startswith("unreadable")
    assert dec.ok.sum() == 46
    assert dec.images[0].mean() > 0


def test_cache_built_once_when_jobs_start_together(fake_voc, tmp_path, monkeypatch):
    import vocfleet.model.data as data

    builds = []
    real = data._build_cache
    monkeypatch.setattr(data, "_build_cache", lambda *a: (builds.append(1), real(*a)))
    ids = split_ids(fake_voc, "train")
    results = []
    threads = [threading.Thread(target=lambda: results.append(decoded_cache(fake_voc, ids, 32, tmp_path / "c"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(results) == 4
    assert all(np.array_equal(r.images, results[0].images) for r in results)
    assert not list((tmp_path / "c").glob("*.tmp*"))


def test_holdout_is_deterministic_and_about_the_fraction():
    ids = [f"{i:06d}" for i in range(4000)]
    picked = [i for i in ids if in_holdout(i, 0.25)]
    assert 0.22 < len(picked) / len(ids) < 0.28
    assert picked == [i for i in ids if in_holdout(i, 0.25)]


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "I;16"])
def test_load_rgb_converts_modes(tmp_path, mode):
    im = Image.new("RGB", (30, 20), (200, 10, 10)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        im = im.convert("I;16")
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16", "LA") else "x.png")
    im.save(path)
    out = load_rgb(path, 16)
    assert out.mode == "RGB" and out.size == (16, 16)


def test_load_rgb_applies_exif_orientation(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_k_folds_partition_the_split_stratified_and_never_train_on_what_they_evaluate(fake_voc, tmp_path):
    """fold:F/K: the K folds cover every labelled image once, each with its share of positives, and the job of fold F never trains on it."""
    from vocfleet.model.config import TrainConfig
    from vocfleet.model.data import fold_members
    from vocfleet.model.splits import prepare_splits

    labels = {f"{i:06d}": int(i % 5 == 0) for i in range(103)}
    folds = [fold_members(labels, f, 4) for f in range(4)]
    assert set().union(*folds) == set(labels) and sum(map(len, folds)) == len(labels)  # a partition
    positives = [sum(labels[i] for i in fold) for fold in folds]
    assert max(positives) - min(positives) <= 1 and max(map(len, folds)) - min(map(len, folds)) <= 2
    assert fold_members(labels, 1, 4) == folds[1]  # the same whatever the seed or the run

    seen = set()
    for fold in range(3):
        cfg = TrainConfig(voc_class="car", voc_root=str(fake_voc), arch="tiny", image_size=32, eval_split=f"fold:{fold}/3", seed=fold)
        train, val, evaluation, _ = prepare_splits(cfg, tmp_path / "cache")
        ids = lambda split: {split.decoded.ids[r] for r in split.rows}
        assert not ids(evaluation) & (ids(train) | ids(val))
        assert not ids(evaluation) & seen
        seen |= ids(evaluation)
    listed = {i for i, v in read_class_list(fake_voc, "car", "train").items() if v != 0} - {"000007"}  # not 'difficult only', not the missing image
    assert seen == listed  # every image evaluated exactly once over the folds
    for bad in ("fold:3/3", "fold:0/1", "fold:a/4", "fold:0/21"):
        with pytest.raises(ConfigError, match="fold:F/K"):
            TrainConfig(voc_class="car", voc_root=str(fake_voc), eval_split=bad)
