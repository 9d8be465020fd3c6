"""Bulk scoring of a real messy folder: per-file outcomes, counts, resume, queries, safety."""

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from vocfleet.db.models import FileError, JobStatus, Score, ScoredImage, ScoreRun
from vocfleet.db.session import ensure_schema, session_scope
from vocfleet.model.config import TrainConfig

WILD_IMAGES = 16  # pictures in ../shared/wild (the rest: README, empty, text-as-jpg, truncated)
WILD_BROKEN = {"README.txt", "empty.jpg", "notes.jpg", "truncated.jpg"}


def shard_states(run_id):
    from vocfleet.db.models import ScoreShard

    with session_scope() as s:
        return [(sh.status.value, sh.attempts) for sh in s.scalars(select(ScoreShard).where(ScoreShard.run_id == run_id).order_by(ScoreShard.number))]


def counts(run_id=1):
    with session_scope() as s:
        run = s.get(ScoreRun, run_id)
        n_scores = s.scalar(select(func.count()).select_from(Score).where(Score.run_id == run_id))
        n_images = s.scalar(select(func.count()).select_from(ScoredImage).where(ScoredImage.run_id == run_id))
        n_errors = s.scalar(select(func.count()).select_from(FileError).where(FileError.run_id == run_id))
        return run, n_images, n_scores, n_errors


def _score_wild_and_check(invoke, wild):
    res = invoke("score", wild)
    assert res.exit_code == 0, res.output
    run, n_images, n_scores, n_errors = counts()
    assert run.status == JobStatus.succeeded
    assert n_images == run.scored_images == WILD_IMAGES
    assert n_scores == 2 * WILD_IMAGES
    assert n_errors == run.error_files == len(WILD_BROKEN)
    assert run.total_files == n_images + n_errors == sum(len(f) for _, _, f in os.walk(wild))
    with session_scope() as s:
        reasons = {e.rel_path: e.reason for e in s.scalars(select(FileError))}
    assert set(reasons) == WILD_BROKEN and all(reasons.values())
    assert reasons["empty.jpg"] == "empty file" and "truncated" in reasons["truncated.jpg"]
    return res


def test_score_wild_every_file_has_an_outcome(detectors, wild, invoke):
    res = _score_wild_and_check(invoke, wild)
    assert "16 image(s) scored, 4 file(s) not scored, of 20 seen" in res.output
    assert "run 1: 20 of 20 files" in res.output  # plain progress lines when not on a terminal
    with session_scope() as s:
        img = s.scalar(select(ScoredImage).where(ScoredImage.rel_path == "holiday/DSC 0001 été.JPG"))
        assert img.width > 0 and len(img.sha256) == 64 and img.size_bytes > 0
        rotated = s.scalar(select(ScoredImage).where(ScoredImage.rel_path == "phone_rotated.jpg"))
        with Image.open(wild / "phone_rotated.jpg") as im:
            w, h = im.size
            assert (rotated.width, rotated.height) == ((h, w) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h))


@pytest.mark.services
def test_score_wild_on_postgresql(pg_url, detectors, wild, invoke):
    _score_wild_and_check(invoke, wild)
    _exports_give_the_stored_doubles(invoke)


def _exports_give_the_stored_doubles(invoke, run_id: int = 1) -> None:
    """JSON and CSV give back each stored probability exactly, so present is probability >= threshold as read."""
    data = json.loads(invoke("results", run_id, "--format", "json").output)
    rows = list(csv.DictReader(io.StringIO(invoke("results", run_id, "--format", "csv").output)))
    with session_scope() as s:
        stored = sorted(s.execute(select(Score.probability).where(Score.run_id == run_id)).scalars())
    assert sorted(d["probability"] for d in data) == sorted(float(r["probability"]) for r in rows) == stored
    assert all(d["present"] == (d["probability"] >= d["threshold"]) and d["margin"] == d["probability"] - d["threshold"] for d in data)


def test_running_again_adds_no_rows(detectors, wild, invoke):
    from vocfleet.db.models import ScoreShard
    from vocfleet.worker.scoring import run_score_run, run_score_shard

    invoke("score", wild, "--shard-size", 7)
    before = counts()[1:]
    assert "already finished" in invoke("resume-run", 1).output
    with session_scope() as s:  # force a second delivery of a finished run and of each shard
        s.get(ScoreRun, 1).status = JobStatus.queued
        for shard in s.scalars(select(ScoreShard)):
            shard.status = JobStatus.queued
    assert run_score_run(1) == "succeeded"
    assert counts()[1:] == before
    with session_scope() as s:
        assert [sh.total_files for sh in s.scalars(select(ScoreShard).order_by(ScoreShard.number))] == [7, 7, 6]
    assert run_score_shard(1) == "succeeded"  # a redelivered shard that already finished: nothing to do


def test_interrupted_run_resumes_without_duplicates(detectors, wild, monkeypatch, invoke):
    import vocfleet.worker.scoring

    monkeypatch.setattr(vocfleet.worker.scoring, "SCORE_CHUNK", 5)
    ensure_schema()
    res = invoke("score", wild)
    full = counts()[1:]

    def crash_after_two_chunks(done, total):
        if done >= 15:  # in the second chunk of the second shard
            raise KeyboardInterrupt

    from vocfleet.worker.scoring import run_score_run

    with session_scope() as s:
        s.add(ScoreRun(folders=[str(wild)], classes=["car", "dog"], detector_ids=[1, 2], shard_size=8))
    with pytest.raises(KeyboardInterrupt):
        run_score_run(2, progress=crash_after_two_chunks)
    run, n_images, _, n_errors = counts(2)
    # Scanned into shards of 8, 8 and 4; the first scored, the second handed back half done.
    assert run.status == JobStatus.running and 8 < n_images + n_errors < 20
    assert shard_states(2) == [("succeeded", 1), ("queued", 1), ("queued", 0)]
    res = invoke("resume-run", 2)
    assert res.exit_code == 0, res.output
    assert counts(2)[1:] == full
    assert shard_states(2) == [("succeeded", 1), ("succeeded", 1), ("succeeded", 1)]  # the first was not redone
    assert counts(2)[0].scored_images + counts(2)[0].error_files == counts(2)[0].total_files == 20


def test_results_formats_agree(detectors, wild, invoke):
    invoke("score", wild)
    table = invoke("results", 1).output.strip().splitlines()
    data = json.loads(invoke("results", 1, "--format", "json").output)
    rows = list(csv.DictReader(io.StringIO(invoke("results", 1, "--format", "csv").output)))
    assert len(table) - 1 == len(data) == len(rows) == 2 * WILD_IMAGES
    for line, d, r in zip(table[1:], data, rows, strict=True):
        assert line.split()[0] == d["image"].split()[0] == r["image"].split()[0]
        assert d["class"] == r["class"] and float(r["probability"]) == pytest.approx(d["probability"])
        assert f"{d['probability']:.3f}" in line
    _exports_give_the_stored_doubles(invoke)
    present = json.loads(invoke("results", 1, "--present", "--format", "json").output)
    assert present and all(d["present"] for d in present)
    dogs = json.loads(invoke("results", 1, "--class", "dog", "--min-prob", "0", "--format", "json").output)
    assert len(dogs) == WILD_IMAGES and {d["class"] for d in dogs} == {"dog"}
    one = json.loads(invoke("results", 1, "--image", "grey.jpg", "--format", "json").output)
    assert [d["image"] for d in one] == ["grey.jpg"] * 2 and one[0]["probability"] >= one[1]["probability"]
    by_image = json.loads(invoke("results", 1, "--by-image", "--format", "json").output)
    assert len(by_image) == WILD_IMAGES
    errors = json.loads(invoke("results", 1, "--errors", "--format", "json").output)
    assert {e["file"] for e in errors} == WILD_BROKEN


def test_renamed_copy_is_recognised_by_hash(detectors, tmp_path, invoke):
    d = tmp_path / "pics"
    d.mkdir()
    Image.new("RGB", (50, 40), (10, 200, 30)).save(d / "a.png")
    shutil.copy(d / "a.png", d / "renamed.png")
    invoke("score", d)
    with session_scope() as s:
        hashes = {i.rel_path: i.sha256 for i in s.scalars(select(ScoredImage))}
    assert hashes["a.png"] == hashes["renamed.png"]


def test_links_hidden_files_and_bombs(detectors, tmp_path, invoke):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (20, 20)).save(outside / "secret.png")
    d = tmp_path / "pics"
    (d / "sub").mkdir(parents=True)
    (d / ".hidden").mkdir()
    Image.new("RGB", (20, 20)).save(d / ".hidden" / "x.png")
    Image.new("RGB", (20, 20)).save(d / ".dot.png")
    Image.new("RGB", (20, 20), (255, 0, 0)).save(d / "sub" / "ok.tiff")
    Image.new("RGB", (20, 20)).save(d / "sub" / "inside.png")
    os.symlink(outside / "secret.png", d / "leak.png")
    os.symlink(outside, d / "leakdir")
    os.symlink(d / "sub" / "inside.png", d / "alias.png")
    os.symlink(d / "missing.png", d / "dangling.png")
    Image.new("1", (9000, 9000)).save(d / "bomb.png")
    invoke("score", d)
    with session_scope() as s:
        scored = sorted(i.rel_path for i in s.scalars(select(ScoredImage)))
        errors = {e.rel_path: e.reason for e in s.scalars(select(FileError))}
    assert scored == ["alias.png", "sub/inside.png", "sub/ok.tiff"]
    assert "outside the folder" in errors["leak.png"] and "outside the folder" in errors["leakdir"]
    assert errors["dangling.png"] == "broken link"
    assert "too large to decode safely" in errors["bomb.png"]


def test_score_roots_refuse_before_queueing(detectors, tmp_path, monkeypatch, invoke):
    root = tmp_path / "allowed"
    (root / "pics").mkdir(parents=True)
    os.symlink("/etc", root / "etc-link")
    monkeypatch.setenv("VOCFLEET_SCORE_ROOTS", str(root))
    for bad in ("/etc", root / "pics" / ".." / "..", root / "etc-link"):
        res = invoke("score", bad)
        assert res.exit_code == 2 and "outside the scoring roots" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    assert invoke("score", tmp_path / "nope").exit_code == 2
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ScoreRun)) == 0
    assert invoke("score", root / "pics").exit_code == 0


def test_fleet_needs_score_roots(detectors, tmp_path, monkeypatch, invoke):
    monkeypatch.setenv("VOCFLEET_BROKER_URL", "redis://127.0.0.1:6379/15")
    res = invoke("score", tmp_path)
    assert res.exit_code == 2 and "VOCFLEET_SCORE_ROOTS" in res.output


def test_score_without_detectors_or_unknown_class(tmp_path, invoke):
    res = invoke("score", tmp_path)
    assert res.exit_code == 2 and "no trained detectors yet" in res.output


def test_missing_class_detector(detectors, tmp_path, invoke):
    res = invoke("score", tmp_path, "--classes", "cat")
    assert res.exit_code == 2 and "no trained detector for cat" in res.output


def test_predict(detectors, wild, invoke):
    res = invoke("predict", wild / "grey.jpg", wild / "modern.webp", "--format", "json")
    assert res.exit_code == 0
    rows = json.loads(res.output)
    assert len(rows) == 4 and {r["class"] for r in rows} == {"car", "dog"}
    bad = invoke("predict", wild / "notes.jpg")
    assert bad.exit_code == 1 and "notes.jpg: not an image" in bad.output


def test_scoring_path_agrees_with_validation_path(trained, tmp_path, monkeypatch):
    """One eval preprocessing: a VOC image scored from its file gets the probability evaluation gave it.

    Compiled, the graph is captured by TorchDynamo as on a GPU but run by the eager backend:
    inductor's CPU code generation would take 20 s here and is not what a GPU host runs
    (bench/gpu_check.sh scores compiled on the GPU).
    """
    import functools

    import torch

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))

    from vocfleet.model.engine import evaluate
    from vocfleet.model.net import detector_model
    from vocfleet.model.scan import FileEntry
    from vocfleet.model.score import DetectorSpec, iter_chunks, load_detectors
    from vocfleet.model.splits import prepare_splits

    r = trained["dog"]
    ckpt = torch.load(r.checkpoint, weights_only=True)
    cfg = TrainConfig.from_dict(ckpt["config"])
    _, _, ev, _ = prepare_splits(cfg, tmp_path / "cache")
    trained_model = detector_model(ckpt)
    expected = evaluate(trained_model, ev, torch.device("cpu"))["probs"]  # the training network, batch norms and all
    spec = DetectorSpec(99, "dog", r.checkpoint, r.sha256, r.threshold)
    root = Path(cfg.voc_root) / "JPEGImages"
    entries = [FileEntry(str(root), f"{ev.decoded.ids[row]}.jpg") for row in ev.rows]
    for compile in (False, True):  # compiled: one graph, the ragged last batch padded
        det = load_detectors([spec], torch.device("cpu"), compile=compile)
        got = np.concatenate([c.probs[0] for c in iter_chunks(entries, det, torch.device("cpu"), chunk_size=7, batch_size=5)])
        assert det[0].compiled == compile
        assert np.allclose(got, expected, atol=1e-4), f"compile={compile}"


def test_compile_failure_falls_back_to_uncompiled(caplog):
    import torch

    from vocfleet.model.net import build_model, inference_model
    from vocfleet.model.score import DetectorSpec, LoadedDetector, run_detectors

    class FailsToCompile(torch.nn.Module):  # what torch.compile's wrapper looks like when no toolchain works
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, x):
            raise RuntimeError("no working C compiler")

    torch.manual_seed(0)
    plain = inference_model(build_model("scratch", arch="tiny"), torch.device("cpu"))
    det = LoadedDetector(DetectorSpec(1, "car", "-", "-", 0.5), FailsToCompile(plain), 32, compiled=True)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    probs = run_detectors([det], {32: images}, pad_to=4)
    assert probs.shape == (1, 3) and not det.compiled and det.model is plain
    assert torch.allclose(probs, run_detectors([det], {32: images}))
    assert "scoring uncompiled" in caplog.text


def test_device_jpeg_decoding_matches_pillow(trained, wild, shared_voc):
    """The GPU path's decode and resize (torchvision's decode_jpeg, run here on the CPU) against Pillow's."""
    import torch

    from vocfleet.model.decode import RawJpeg, decode_file, decode_jpegs
    from vocfleet.model.scan import FileEntry, iter_scan
    from vocfleet.model.score import DetectorSpec, iter_chunks, load_detectors

    cpu = torch.device("cpu")
    voc = [FileEntry(str(shared_voc / "JPEGImages"), p.name) for p in sorted((shared_voc / "JPEGImages").glob("*.jpg"))[:40]]
    candidates = [item.entry for item in iter_scan([wild]) if item.reason is None]
    entries = voc + candidates
    # Pixels: every JPEG the device path takes, at both detector sizes, against Pillow's draft + resize.
    raws = [r for e in voc + candidates if isinstance(r := _try_raw(decode_file, e), RawJpeg)]
    assert len(raws) >= 40 + 3  # the VOC JPEGs and the wild folder's plain JPEGs (rotated phone photo included)
    on_device, refused = decode_jpegs(raws, [32, 48], cpu)
    assert [r.entry.rel_path for r in refused] == ["truncated.jpg"]  # left to Pillow, which says why
    for got in on_device:
        want = decode_file(got.entry, [32, 48])
        for size in (32, 48):
            diff = np.abs(got.arrays[size].numpy().astype(int) - want.arrays[size].astype(int))
            assert diff.mean() < 3 and np.percentile(diff, 99) < 24, (got.entry.rel_path, size, diff.mean())
        assert (got.width, got.height, got.sha256) == (want.width, want.height, want.sha256)
    # Scores and reasons: the same files scored or refused, probabilities within 0.02.
    specs = [DetectorSpec(i, cls, r.checkpoint, r.sha256, r.threshold) for i, (cls, r) in enumerate(trained.items())]
    dets = load_detectors(specs, cpu, compile=False)
    results = {}
    for device_decode in (False, True):
        probs, errors = {}, {}
        for chunk in iter_chunks(entries, dets, cpu, chunk_size=16, batch_size=8, device_decode=device_decode):
            probs.update({f.entry.path: chunk.probs[:, j] for j, f in enumerate(chunk.scored)})
            errors.update({e.path: reason for e, reason in chunk.errors})
        results[device_decode] = probs, errors
    (pil, pil_errors), (dev, dev_errors) = results[False], results[True]
    assert pil_errors == dev_errors and set(pil) == set(dev) and len(pil) == 40 + 16
    worst = max(float(np.abs(pil[p] - dev[p]).max()) for p in pil)
    assert worst <= 0.02, worst


def _try_raw(decode_file, entry):
    from vocfleet.model.decode import BadImage

    try:
        return decode_file(entry, [32, 48], jpeg_raw=True)
    except BadImage:
        return None


def test_present_is_decided_on_the_stored_probability_not_a_float32_rounding():
    """NumPy 2 compares a float32 with a Python float in float32: 0.7 rounds down to 0.699999988, so the
    picture whose float32 probability is that would be called present while its stored probability is under 0.7."""
    from vocfleet.model.score import DetectorSpec

    p32 = np.float32(0.7)
    assert bool(p32 >= 0.7) and float(p32) < 0.7  # the trap
    spec = DetectorSpec(1, "car", "c.pt", "0" * 64, 0.7)
    assert spec.answer(p32) == (float(p32), False)
    assert spec.answer(np.float32(0.75)) == (0.75, True)
