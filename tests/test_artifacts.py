"""The artifact store: a local folder or S3 (a real S3 server over HTTP), resume on another host, gc."""

import json

import pytest
from sqlalchemy import select

from tests.support import QUICK
from vocfleet.db.models import Detector, EpochMetric, JobStatus, TrainJob
from vocfleet.db.session import dispose_engines, ensure_schema, session_scope
from vocfleet.db.settings import get_settings
from vocfleet.model import DetectorUnavailable
from vocfleet.model.artifacts import ArtifactStore, sha256_file
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import fit
from vocfleet.model.events import EpochFinished

SMALL = QUICK


@pytest.fixture(params=["local", "s3"])
def store(request) -> ArtifactStore:
    if request.param == "s3":
        request.getfixturevalue("s3_root")
    return ArtifactStore.from_settings(get_settings())


def test_push_pull_and_checked_copies(store, tmp_path):
    out = store.job_dir("k1")
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"resume state")
    (out / "detector.pt").write_bytes(b"weights")
    stored = store.push("k1", ["last.pt", "detector.pt", "absent.pt"])
    assert sorted(stored) == ["detector.pt", "last.pt"] and stored["detector.pt"] == "jobs/k1/detector.pt"  # relative to the store
    assert store.resolve(stored["detector.pt"]) == store.uri("k1", "detector.pt")
    assert store.uri("k1", "detector.pt").startswith("s3://" if store.remote else "/")
    sha = sha256_file(out / "detector.pt")
    assert store.local_copy(stored["detector.pt"], sha).read_bytes() == b"weights"
    with pytest.raises(DetectorUnavailable, match="sha256 mismatch"):
        store.local_copy(stored["last.pt"], "0" * 64)  # (the cache holds files by sha256: a fetch is checked before it is kept)
    with pytest.raises(DetectorUnavailable, match="missing"):
        store.local_copy(store.uri("k1", "gone.pt"), "1" * 64)
    assert store.read_bytes(stored["last.pt"]) == b"resume state" and store.read_bytes(store.uri("k1", "gone.png")) is None
    assert sorted((key, f.size) for key, f in store.files()) == [("k1", 7), ("k1", 12)]

    # Another host: its own work folder and cache, the same store.
    other = ArtifactStore(store.root, work_dir=tmp_path / "host2" / "work", cache_dir=tmp_path / "host2" / "cache", endpoint_url=store.endpoint_url)
    assert other.pull("k1") == (["last.pt"] if store.remote else [])
    assert (other.job_dir("k1") / "last.pt").read_bytes() == b"resume state"
    store.drop_resume_files("k1")
    assert [f.uri for _, f in store.files()] == [store.uri("k1", "detector.pt")]
    if store.remote:
        assert other.pull("k1") == [] and not (other.job_dir("k1") / "last.pt").exists()  # a stale local copy is not resumed from


def test_an_unchanged_file_is_not_uploaded_again(s3_root):
    store = ArtifactStore.from_settings(get_settings())
    store.job_dir("k").mkdir(parents=True)
    (store.job_dir("k") / "best.pt").write_bytes(b"epoch 1")
    uri = store.resolve(store.push("k", ["best.pt"])["best.pt"])
    fs, path = store._fs(uri)
    fs.pipe_file(path, b"changed in the store")
    store.push("k", ["best.pt"])  # same local file: no upload
    assert store.read_bytes(uri) == b"changed in the store"
    (store.job_dir("k") / "best.pt").write_bytes(b"epoch 2, a better one")
    store.push("k", ["best.pt"])
    assert store.read_bytes(uri) == b"epoch 2, a better one"


def test_training_and_scoring_with_artifacts_in_s3(s3_root, fake_voc, data_dir, invoke, tmp_path):
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 2, *SMALL).exit_code == 0
    res = invoke("run")
    assert res.exit_code == 0, res.output
    with session_scope() as s:
        det = s.scalars(select(Detector)).one()
        key = s.get(TrainJob, det.job_id).key
        checkpoint, plots = det.checkpoint_path, det.metrics["plots"]
    store = ArtifactStore.from_settings(get_settings())
    assert checkpoint == f"jobs/{key}/detector.pt" and all(p.startswith(f"jobs/{key}/") for p in plots.values())  # relative to the store
    assert store.resolve(checkpoint) == f"{s3_root}/jobs/{key}/detector.pt"
    # Kept: the detector and its plots; gone: last.pt and best.pt, here and in the store.
    assert sorted(f.uri.rsplit("/", 1)[1] for _, f in store.files()) == sorted(["detector.pt", *(p.rsplit("/", 1)[1] for p in plots.values())])
    assert not (data_dir / "artifacts").exists() and not list((data_dir / "work").rglob("*.pt"))

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("000001.jpg", "000002.jpg"):
        (folder / name).write_bytes((fake_voc / "JPEGImages" / name).read_bytes())
    res = invoke("score", folder)
    assert res.exit_code == 0, res.output
    assert [p.name for p in (data_dir / "cache" / "artifacts").glob("*.pt")] == [f"{det.sha256}.pt"]  # fetched once, by sha256
    assert len(json.loads(invoke("results", 1, "--format", "json").output)) == 2
    res = invoke("report", "--fleet", "--out", tmp_path / "fleet.html")
    assert res.exit_code == 0 and (tmp_path / "fleet.html").read_text().count("src='data:image/png;base64,") == 2  # plots read from S3


def test_a_job_resumes_on_another_host_from_the_checkpoint_in_s3(s3_root, fake_voc, data_dir, invoke, monkeypatch, tmp_path):
    from vocfleet.worker.runner import run_train_job

    monkeypatch.setenv("VOCFLEET_DATABASE_URL", f"sqlite:///{tmp_path / 'shared.db'}")  # the one thing hosts share, with the bucket
    dispose_engines()
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 3, *SMALL).exit_code == 0

    def crash_after_epoch_1(event):
        if isinstance(event, EpochFinished) and event.record.epoch == 1:
            raise KeyboardInterrupt  # the host goes away once epoch 1 is recorded

    with pytest.raises(KeyboardInterrupt):
        run_train_job(1, progress=crash_after_epoch_1, host="host-a")
    with session_scope() as s:
        job = s.get(TrainJob, 1)
        assert (job.status, job.epochs_done) == (JobStatus.queued, 1)
        epoch1 = s.scalars(select(EpochMetric)).one().train_loss

    monkeypatch.setenv("VOCFLEET_DATA_DIR", str(tmp_path / "host-b"))  # no shared disk: another work folder and cache
    assert run_train_job(1, host="host-b") == "succeeded"
    with session_scope() as s:
        job = s.get(TrainJob, 1)
        assert job.worker_host == "host-b" and [e.epoch for e in job.epochs] == [1, 2, 3]
        assert job.epochs[0].train_loss == epoch1  # resumed after epoch 1, not started over
        assert s.scalars(select(Detector)).one().checkpoint_path == f"jobs/{job.key}/detector.pt"
    assert not (data_dir / "artifacts").exists()


def test_gc_removes_what_no_detector_or_resume_needs(fake_voc, data_dir, invoke):
    assert invoke("submit", "--classes", "car,dog", "--start", "none", "--voc-root", fake_voc, "--epochs", 1, *SMALL).exit_code == 0
    assert invoke("run").exit_code == 0
    store = ArtifactStore.from_settings(get_settings())
    with session_scope() as s:
        car, dog = s.get(TrainJob, 1), s.get(TrainJob, 2)
        car_key, dog_key = car.key, dog.key
        dog.status = JobStatus.failed  # as if it had failed: its resume state must stay for 'vocfleet retry'
    assert invoke("gc").output.strip() == "nothing to remove"
    leftovers = [store.job_dir(car_key) / "last.pt", store.job_dir(dog_key) / "last.pt", store.job_dir("0" * 32) / "detector.pt"]
    for path in leftovers:  # a crash between recording the detector and cleaning up; a folder from another database
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 2048)
    res = invoke("gc", "--dry-run")
    assert res.exit_code == 0 and f"{leftovers[0]}  (finished job" in res.output and str(leftovers[1]) not in res.output
    assert "1 job folder(s)" in res.output and "--orphans" in res.output and "would remove 1 file(s)" in res.output
    assert all(p.exists() for p in leftovers)
    res = invoke("gc", "--yes")
    assert res.exit_code == 0 and "removed 1 file(s)" in res.output
    assert not leftovers[0].exists() and leftovers[1].exists() and leftovers[2].exists()
    with session_scope() as s:
        assert all(sha256_file(store.resolve(d.checkpoint_path)) == d.sha256 for d in s.scalars(select(Detector)))  # every detector intact
    (leftovers[2].parent / "last.pt").write_bytes(b"y" * 2048)
    res = invoke("gc", "--orphans", "--yes")  # another database's job: its resume state goes, its detector never (it may be active there)
    assert "removed 1 file(s)" in res.output and leftovers[2].exists() and not (leftovers[2].parent / "last.pt").exists()


def test_gc_asks_first(fake_voc, invoke):
    store = ArtifactStore.from_settings(get_settings())
    invoke("db", "upgrade")
    (store.job_dir("f" * 32)).mkdir(parents=True)
    (store.job_dir("f" * 32) / "last.pt").write_bytes(b"x")
    from click.testing import CliRunner

    from vocfleet.scheduler.cli import cli

    res = CliRunner().invoke(cli, ["gc", "--orphans"], input="n\n")
    assert res.exit_code == 1 and (store.job_dir("f" * 32) / "last.pt").exists()


@pytest.mark.parametrize(
    ("root", "says"),
    [("s3://", "name a bucket"), ("nosuchprotocol://bucket/x", "nosuchprotocol://bucket/x"), ("ftp://host/x", "s3://bucket/prefix")],
)
def test_a_bad_artifact_root_is_one_line(root, says, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("VOCFLEET_ARTIFACT_ROOT", root)
    res = subprocess.run([sys.executable, "-m", "vocfleet", "gc"], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and res.stdout == ""
    [line] = res.stderr.splitlines()
    assert line.startswith("vocfleet: error: ") and says in line


def test_gc_keeps_every_detector_after_the_data_folder_moves_or_is_copied(fake_voc, data_dir, invoke, monkeypatch, tmp_path):
    """mv, a restore elsewhere, cp -a: rows name files relative to the store, so nothing looks unused and scoring still works."""
    import shutil

    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--epochs", 1, *SMALL).exit_code == 0
    assert invoke("run").exit_code == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes((fake_voc / "JPEGImages" / "000001.jpg").read_bytes())
    moved, copied = tmp_path / "moved" / "data", tmp_path / "copy"
    moved.parent.mkdir()
    shutil.move(data_dir, moved)
    shutil.copytree(moved, copied, symlinks=True)
    for place in (moved, copied):
        monkeypatch.setenv("VOCFLEET_DATA_DIR", str(place))
        dispose_engines()
        assert invoke("gc", "--yes").output.strip() == "nothing to remove"
        assert invoke("gc", "--orphans", "--yes").output.strip() == "nothing to remove"
        store = ArtifactStore.from_settings(get_settings())
        with session_scope() as s:
            det = s.scalars(select(Detector)).one()
            assert sha256_file(store.resolve(det.checkpoint_path)) == det.sha256 and store.resolve(det.checkpoint_path).startswith(str(place))
        res = invoke("score", photos)
        assert res.exit_code == 0 and "1 image(s) scored" in res.output, res.output


def test_gc_never_follows_a_link_out_of_this_hosts_work_folder(s3_root, data_dir, invoke, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.pdf").write_bytes(b"years of work")
    (data_dir / "work" / "jobs").mkdir(parents=True)
    (data_dir / "work" / "jobs" / ("a" * 32)).symlink_to(precious)
    (data_dir / "work" / "jobs" / ("b" * 32)).mkdir()
    (data_dir / "work" / "jobs" / ("b" * 32) / "last.pt").symlink_to(precious / "thesis.pdf")
    invoke("db", "upgrade")
    res = invoke("gc", "--orphans", "--yes")
    assert res.exit_code == 0 and "nothing to remove" in res.output and "thesis" not in res.output
    assert (precious / "thesis.pdf").read_bytes() == b"years of work"


def test_gc_leaves_another_databases_running_job_on_this_host_alone(s3_root, data_dir, invoke):
    """Two databases share the data folder and the bucket: plain gc keeps work copies of jobs it does not know."""
    other = data_dir / "work" / "jobs" / ("c" * 32)
    other.mkdir(parents=True)
    (other / "last.pt").write_bytes(b"epoch 3 of another database's job")
    invoke("db", "upgrade")
    res = invoke("gc", "--yes")
    assert res.exit_code == 0 and "nothing to remove" in res.output and (other / "last.pt").exists()
    res = invoke("gc", "--dry-run", "--orphans")
    assert "work copy of no job of this database" in res.output and (other / "last.pt").exists()


def test_gc_keeps_what_became_needed_after_it_listed(s3_root, data_dir, invoke):
    """A job retried, or a detector recorded, between the listing and the removal keeps its files (the store and rows are read again)."""
    from vocfleet.db.training import create_jobs, retry_job
    from vocfleet.scheduler.garbage import find_garbage, remove_garbage

    ensure_schema()
    with session_scope() as s:
        (job,) = create_jobs(s, [TrainConfig(voc_class="car", epochs=1, voc_root="/voc")])
        job.status, key = JobStatus.failed, job.key
    store = ArtifactStore.from_settings(get_settings())
    store.job_dir(key).mkdir(parents=True)
    (store.job_dir(key) / "last.pt").write_bytes(b"resume")
    cached = store.cache_dir / "artifacts" / f"{'e' * 64}.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a detector fetched for a row about to be recorded")
    with session_scope() as s:
        garbage, _ = find_garbage(s, store)
    assert {g.reason for g in garbage} == {"work copy of a job not running", "cached copy of no detector"}
    with session_scope() as s:
        assert retry_job(s, job.id) == JobStatus.queued
        s.add(Detector(voc_class="car", checkpoint_path="jobs/x/detector.pt", sha256="e" * 64, threshold=0.5, ap=0.5, metrics={}, active=False))
    assert remove_garbage(session_scope, store, garbage) == []
    assert (store.job_dir(key) / "last.pt").exists() and cached.exists()


def test_object_storage_problems_are_one_line_and_early(s3_root, s3_server, fake_voc, invoke, monkeypatch):
    """A missing bucket at submit and gc; an endpoint that does not answer, after the retries: one line each, nothing queued."""
    import subprocess
    import sys

    from vocfleet.model import artifacts

    monkeypatch.setenv("VOCFLEET_ARTIFACT_ROOT", "s3://no-such-bucket-here/x")
    res = invoke("submit", "--classes", "car", "--voc-root", fake_voc, *SMALL)
    assert res.exit_code == 1 and res.output.splitlines() == [
        "vocfleet: error: artifact store s3://no-such-bucket-here/x: no such bucket: create it, or fix VOCFLEET_ARTIFACT_ROOT"
    ]
    assert "no jobs yet" in invoke("status").output
    monkeypatch.setattr(artifacts, "RETRY_DELAYS", (0.01, 0.01))
    monkeypatch.setenv("VOCFLEET_ARTIFACT_ROOT", s3_root)
    monkeypatch.setenv("VOCFLEET_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    res = invoke("gc")
    [line] = res.output.splitlines()
    assert res.exit_code == 1 and line.startswith("vocfleet: error: artifact store: could not list ") and "VOCFLEET_S3_ENDPOINT_URL" in line
    monkeypatch.setenv("VOCFLEET_S3_ENDPOINT_URL", "http://[::1")  # malformed
    res = subprocess.run([sys.executable, "-m", "vocfleet", "gc"], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and res.stderr.startswith("vocfleet: error: VOCFLEET_S3_ENDPOINT_URL='http://[::1'") and len(res.stderr.splitlines()) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_after_any_sequence_every_detector_file_exists_and_matches(seed, data_dir, invoke, monkeypatch, tmp_path):
    """Property: train, crash, fail, retry, activate, gc (with and without --orphans), move or copy the data folder, in a
    random order; after every step each detector row's file is there with its sha256, and each unfinished job keeps its last.pt."""
    import os
    import random
    import shutil

    from vocfleet.db.claims import claim_job, end_job
    from vocfleet.db.registry import activate_detector
    from vocfleet.db.training import create_jobs, finish_job, retry_job
    from vocfleet.model.engine import FitResult

    rng = random.Random(seed)
    place = [data_dir]
    store = lambda: ArtifactStore.from_settings(get_settings())

    def train() -> None:
        with session_scope() as s:
            job = create_jobs(s, [TrainConfig(voc_class=rng.choice(["car", "dog"]), voc_root="/voc", epochs=1)])[0]
            job_id, key = job.id, job.key
        with session_scope() as s:
            token = claim_job(s, TrainJob, job_id, "h")
        st, outcome = store(), rng.choice(["succeeded", "succeeded", "failed", "running", "crashed"])
        folder = st.job_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "best.pt", f".last.pt.tmp{rng.randrange(99)}"):
            (folder / name).write_bytes(os.urandom(32))
        if outcome in ("succeeded", "crashed"):  # crashed: the detector is recorded, the resume files not yet dropped
            (folder / "detector.pt").write_bytes(os.urandom(64))
            (folder / "curves.png").write_bytes(os.urandom(16))
            m = {"ap": rng.random(), "split": "holdout"}
            result = FitResult(
                checkpoint=st.location(key, "detector.pt"),
                sha256=sha256_file(folder / "detector.pt"),
                threshold=0.5,
                metrics=m,
                val_metrics=m,
                best_epoch=1,
                plots={"curves": st.location(key, "curves.png")},
            )
            with session_scope() as s:
                finish_job(s, job_id, token, result)
            if outcome == "succeeded":
                st.drop_resume_files(key)
        elif outcome == "failed":
            with session_scope() as s:
                end_job(s, TrainJob, job_id, token, JobStatus.failed, "boom")

    def activate() -> None:
        with session_scope() as s:
            ids = list(s.scalars(select(Detector.id)))
            if ids:
                activate_detector(s, rng.choice(ids), "by hand")

    def retry() -> None:
        with session_scope() as s:
            failed = list(s.scalars(select(TrainJob.id).where(TrainJob.status == JobStatus.failed)))
            if failed:
                retry_job(s, rng.choice(failed))

    def relocate() -> None:
        new = tmp_path / f"data{rng.randrange(10**6)}"
        if rng.random() < 0.5:
            shutil.move(place[0], new)
        else:
            shutil.copytree(place[0], new, symlinks=True)
        place[0] = new
        monkeypatch.setenv("VOCFLEET_DATA_DIR", str(new))
        dispose_engines()

    def gc() -> None:
        assert invoke("gc", "--yes", *(["--orphans"] if rng.random() < 0.3 else [])).exit_code == 0

    ensure_schema()
    steps = [train] * 4 + [activate, retry, relocate, gc, gc]
    for _ in range(30):
        rng.choice(steps)()
        st = store()
        with session_scope() as s:
            for location, sha in s.execute(select(Detector.checkpoint_path, Detector.sha256)):
                assert sha256_file(st.resolve(location)) == sha
            for key in s.scalars(select(TrainJob.key).where(TrainJob.status.in_([JobStatus.queued, JobStatus.running, JobStatus.failed]))):
                assert (st.job_dir(key) / "last.pt").is_file()
    gc()
    with session_scope() as s:
        finished = set(s.scalars(select(TrainJob.key).where(TrainJob.status == JobStatus.succeeded)))
    leftovers = [f.uri for key, f in store().files() if key in finished and f.uri.rsplit("/", 1)[1] not in ("detector.pt", "curves.png")]
    assert leftovers == []  # and what nothing needs is gone


def test_a_changed_cached_copy_is_fetched_again_not_used(s3_root):
    """The per-host cache is checked cheaply (size and mtime recorded with the verified sha256), and hashed again when they change."""
    import os

    store = ArtifactStore.from_settings(get_settings())
    store.job_dir("k").mkdir(parents=True)
    (store.job_dir("k") / "detector.pt").write_bytes(b"the real weights")
    location = store.push("k", ["detector.pt"])["detector.pt"]
    sha = sha256_file(store.job_dir("k") / "detector.pt")
    cached = store.local_copy(location, sha)
    assert cached.read_bytes() == b"the real weights" and cached.with_name(cached.name + ".verified").is_file()
    cached.write_bytes(b"tampered weights")  # same size: only the mtime tells
    os.utime(cached, ns=(cached.stat().st_atime_ns, cached.stat().st_mtime_ns + 10**9))
    assert store.local_copy(location, sha).read_bytes() == b"the real weights"  # not used: fetched again and checked
    fs, path = store._fs(store.resolve(location))
    fs.pipe_file(path, b"changed in the store too")
    cached.write_bytes(b"tampered again!!")
    with pytest.raises(DetectorUnavailable, match="sha256 mismatch"):
        store.local_copy(location, sha)
    assert not cached.exists()


def test_gc_prints_names_with_control_characters_escaped(data_dir, invoke):
    """A folder named with a terminal escape is listed as text, as results lists such file names."""
    store = ArtifactStore.from_settings(get_settings())
    odd = store.job_dir("\x1b[31mred\x1b[0m")
    odd.mkdir(parents=True)
    (odd / "last.pt").write_bytes(b"x")
    invoke("db", "upgrade")
    res = invoke("gc", "--dry-run", "--orphans")
    assert res.exit_code == 0 and "\x1b" not in res.output and "\\x1b[31mred\\x1b[0m" in res.output


def test_two_databases_sharing_a_data_folder_keep_their_detectors(fake_voc, data_dir, invoke, monkeypatch):
    # The default SQLite database, then a second one in the same data folder: both start at job 1.
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, *SMALL).exit_code == 0
    assert invoke("run").exit_code == 0
    with session_scope() as s:
        first = s.scalars(select(Detector)).one()
        first_path, first_sha = first.checkpoint_path, first.sha256
    monkeypatch.setenv("VOCFLEET_DATABASE_URL", f"sqlite:///{data_dir / 'other.db'}")
    dispose_engines()
    assert invoke("submit", "--classes", "car", "--voc-root", fake_voc, *SMALL, "--seed", 1).exit_code == 0
    assert invoke("run").exit_code == 0
    with session_scope() as s:
        job = s.scalars(select(TrainJob)).one()
        second = s.scalars(select(Detector)).one()
        assert job.id == 1 and second.checkpoint_path != first_path
        assert job.key in second.checkpoint_path and len(job.key) == 32
    from vocfleet.model.artifacts import ArtifactStore, sha256_file

    assert sha256_file(ArtifactStore.from_settings(get_settings()).resolve(first_path)) == first_sha  # untouched by the other database's job 1


def test_a_checkpoint_of_another_job_is_not_resumed(fake_voc, tmp_path):
    cfg = TrainConfig(voc_class="car", voc_root=str(fake_voc), arch="tiny", image_size=32, epochs=1, batch_size=8, max_batches=2)
    out = tmp_path / "shared-folder"
    assert fit(cfg, out_dir=out, cache_dir=tmp_path / "cache", job_key="a").resumed_from == 0
    assert fit(cfg, out_dir=out, cache_dir=tmp_path / "cache", job_key="a").resumed_from == 1  # its own: resumed
    assert fit(cfg, out_dir=out, cache_dir=tmp_path / "cache", job_key="b").resumed_from == 0  # another's: not
