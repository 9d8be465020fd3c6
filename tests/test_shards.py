"""Sharded scoring runs: same rows whatever the shard size, overlapping folders, kill -9 and resume, bounded scans."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from vocfleet.db.models import FileError, JobStatus, Score, ScoredImage, ScoreRun, ScoreShard
from vocfleet.db.session import ensure_schema, session_scope


def rows(run_id):
    """Every result row of a run, without ids: what a user can query."""
    with session_scope() as s:
        scores = s.execute(
            select(ScoredImage.folder, ScoredImage.rel_path, ScoredImage.sha256, Score.voc_class, Score.probability, Score.present)
            .join(Score, Score.image_id == ScoredImage.id)
            .where(ScoredImage.run_id == run_id)
        ).all()
        errors = s.execute(select(FileError.folder, FileError.rel_path, FileError.reason).where(FileError.run_id == run_id)).all()
        run = s.get(ScoreRun, run_id)
        return sorted(map(tuple, scores)), sorted(map(tuple, errors)), (run.status, run.total_files, run.scored_images, run.error_files)


def same(a, b) -> bool:
    """Rows equal, probabilities to float32 rounding: a batch of 3 and one of 16 sum in different orders."""
    (sa, ea, ra), (sb, eb, rb) = a, b
    return (
        ea == eb
        and ra == rb
        and [r[:4] + r[5:] for r in sa] == [r[:4] + r[5:] for r in sb]
        and [r[4] for r in sa] == pytest.approx([r[4] for r in sb], abs=1e-5)
    )


def shards(run_id):
    with session_scope() as s:
        return s.scalars(select(ScoreShard).where(ScoreShard.run_id == run_id).order_by(ScoreShard.number)).all()


def test_one_shard_and_many_give_identical_rows(detectors, wild, invoke):
    assert invoke("score", wild, "--shard-size", 100000).exit_code == 0  # the whole folder in one pass
    assert invoke("score", wild, "--shard-size", 3, "--fresh").exit_code == 0  # computed again, not reused
    one, many = rows(1), rows(2)
    assert same(one, many) and one[2] == (JobStatus.succeeded, 20, 16, 4)
    assert [sh.total_files for sh in shards(1)] == [20]
    assert [sh.total_files for sh in shards(2)] == [3] * 6 + [2]
    assert all(sh.status == JobStatus.succeeded and sh.scored_images + sh.error_files == sh.total_files for sh in shards(2))


def test_overlapping_folders_are_scored_once(detectors, wild, invoke):
    (wild / "sub").mkdir()
    (wild / "phone_rotated.jpg").rename(wild / "sub" / "phone_rotated.jpg")
    assert invoke("score", wild).exit_code == 0
    res = invoke("score", wild, wild, wild / "sub", f"{wild}/./sub/..")
    assert res.exit_code == 0, res.output
    assert same(rows(2), rows(1)) and rows(2)[2][1] == 20
    with session_scope() as s:
        assert s.get(ScoreRun, 2).folders == [str(wild)]


def test_resume_after_kill_9_redoes_only_unfinished_shards(detectors, wild, data_dir, invoke, monkeypatch):
    # A real embedded `vocfleet score`, killed with SIGKILL once 12 files are done (shards of 5).
    killer = textwrap.dedent(
        """
        import os, signal, sys
        import vocfleet.worker.scoring as scoring
        scoring.SCORE_CHUNK = 2
        finished = scoring.Tally.finished
        def finished_then_die(self, n):
            finished(self, n)
            if self.done >= 12:
                os.kill(os.getpid(), signal.SIGKILL)
        scoring.Tally.finished = finished_then_die
        from vocfleet.scheduler.cli import main
        sys.argv = ["vocfleet", "score", sys.argv[1], "--shard-size", "5"]
        main()
        """
    )
    proc = subprocess.run([sys.executable, "-c", killer, str(wild)], env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    before = {sh.number: (sh.status, sh.attempts, sh.finished_at) for sh in shards(1)}
    assert [before[n][0] for n in range(4)] == [JobStatus.succeeded, JobStatus.succeeded, JobStatus.running, JobStatus.queued]
    res = invoke("resume-run", 1)
    assert res.exit_code == 2 and "is running" in res.output  # its heartbeat is fresh: maybe alive
    monkeypatch.setenv("VOCFLEET_STALE_SECONDS", "0")
    res = invoke("resume-run", 1)
    assert res.exit_code == 0, res.output
    after = {sh.number: (sh.status, sh.attempts, sh.finished_at) for sh in shards(1)}
    assert after[0] == before[0] and after[1] == before[1]  # finished shards were not redone
    assert all(status == JobStatus.succeeded for status, _, _ in after.values())
    scores, errors, run = rows(1)
    assert run == (JobStatus.succeeded, 20, 16, 4) and len(errors) == 4
    assert len({(f, p) for f, p, *_ in scores}) * 2 == len(scores) == 32  # no image twice


def test_finish_run_and_cancel_reach_the_shards(detectors, wild):
    from vocfleet.db.claims import claim_job
    from vocfleet.db.runs import add_shard, cancel_runs, create_run, finish_run_if_done, finish_scan, scan_position
    from vocfleet.db.session import ensure_schema

    ensure_schema()
    with session_scope() as s:
        run_id = create_run(s, [str(wild)], [], batch_size=4, max_attempts=2, shard_size=2).id
    with session_scope() as s:
        token = claim_job(s, ScoreRun, run_id, "scanner")
    with session_scope() as s:
        assert scan_position(s, run_id, token) == (0, None, 0)
        ids = [add_shard(s, run_id, token, n, [[0, f"{n}.jpg", None]]) for n in range(3)]
        assert scan_position(s, run_id, token) == (3, [0, "2.jpg", None], 3)
        assert finish_scan(s, run_id, token) == ids
    with session_scope() as s:
        claim_job(s, ScoreShard, ids[0], "w")
        assert finish_run_if_done(s, run_id) is None  # shards still to go
        assert cancel_runs(s, [run_id]) == ([], [run_id])
    with session_scope() as s:
        assert [(sh.status, sh.cancel_requested) for sh in shards(run_id)] == [
            (JobStatus.running, True),
            (JobStatus.cancelled, True),
            (JobStatus.cancelled, True),
        ]
        sh = s.get(ScoreShard, ids[0])
        sh.status = JobStatus.cancelled  # its worker saw the cancel at its next heartbeat
    with session_scope() as s:
        assert finish_run_if_done(s, run_id) == JobStatus.cancelled


def test_reaper_ends_a_run_whose_last_shard_was_failed(detectors, wild, monkeypatch):
    from vocfleet.db.claims import claim_job
    from vocfleet.db.runs import add_shard, create_run, finish_scan
    from vocfleet.db.session import ensure_schema
    from vocfleet.scheduler.reaper import tick

    ensure_schema()
    with session_scope() as s:
        run_id = create_run(s, [str(wild)], [], batch_size=4, max_attempts=1).id
    with session_scope() as s:
        token = claim_job(s, ScoreRun, run_id, "scanner")
    with session_scope() as s:
        shard_id = add_shard(s, run_id, token, 0, [[0, "a.jpg", None]])
        finish_scan(s, run_id, token)
    with session_scope() as s:
        claim_job(s, ScoreShard, shard_id, "dead-worker")
    out = tick(timedelta(seconds=-1), timedelta(seconds=60))  # every heartbeat is stale
    assert out["score_shards_failed"] == [shard_id] and out["score_runs_ended"] == [run_id]
    assert out["score_runs_requeued"] == []  # a scanned run is not reaped itself
    with session_scope() as s:
        run = s.get(ScoreRun, run_id)
        assert run.status == JobStatus.failed and "dead-worker stopped heartbeating" in run.error


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    """50,000 empty files in 50 folders (each gets an error row when scored: fast)."""
    root = tmp_path_factory.mktemp("big")
    for d in range(50):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(1000):
            os.mknod(sub / f"{f:04d}.jpg", 0o644 | stat.S_IFREG)  # one system call a file (touch: three, 6x the time)
    return root


@pytest.mark.slow
def test_scan_memory_is_bounded_by_a_folder_not_the_tree(big_tree):
    root = big_tree
    # In a fresh interpreter: pytest's own threads would allocate while tracemalloc watches.
    probe = textwrap.dedent(
        """
        import sys, tracemalloc
        from vocfleet.model.scan import iter_scan
        tracemalloc.start()
        count, last = 0, None
        for item in iter_scan([sys.argv[1]]):
            count += 1
            assert last is None or item.key > last, (last, item.key)
            last = item.key
        print(count, tracemalloc.get_traced_memory()[1])
        """
    )
    out = subprocess.run([sys.executable, "-c", probe, str(root)], capture_output=True, text=True, check=True).stdout.split()
    count, peak = int(out[0]), int(out[1])
    assert count == 50_000
    assert peak < 2_000_000, f"scanning 50,000 files peaked at {peak} bytes"  # one folder's listing (1,000), not 50,000 entries


@pytest.mark.slow
def test_fifty_thousand_files_in_shards(detectors, big_tree, invoke):
    res = invoke("score", big_tree, "--shard-size", 2500)
    assert res.exit_code == 0, res.output[-2000:]
    with session_scope() as s:
        run = s.get(ScoreRun, 1)
        assert (run.status, run.total_files, run.error_files, run.scored_images) == (JobStatus.succeeded, 50_000, 50_000, 0)
        assert s.scalar(select(func.count()).select_from(ScoreShard)) == 20
        assert s.scalar(select(func.count(func.distinct(FileError.rel_path)))) == 50_000


def test_a_closed_output_does_not_fail_the_run(detectors, wild, invoke):
    """`vocfleet score FOLDER | head -3`: the display's pipe closes, the run goes on and succeeds."""
    from vocfleet.db.runs import create_run
    from vocfleet.worker.scoring import run_score_run

    ensure_schema()
    with session_scope() as s:
        from vocfleet.db.models import Detector

        run_id = create_run(s, [str(wild)], list(s.scalars(select(Detector))), batch_size=8, max_attempts=1, shard_size=5).id
    calls = []

    def closed_pipe(done, total):
        calls.append(done)
        raise BrokenPipeError(32, "Broken pipe")

    assert run_score_run(run_id, progress=closed_pipe) == "succeeded"
    assert len(calls) == 1  # not called again once it failed
    assert rows(run_id)[2] == (JobStatus.succeeded, 20, 16, 4)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_a_running_runs_class_counts_grow_as_chunks_land(database, request, data_dir):
    """A running run's page reads per-class counts kept as each chunk is written, not a GROUP BY over its scores per request."""
    from vocfleet.db.claims import claim_job
    from vocfleet.db.models import Detector
    from vocfleet.db.runs import add_shard, class_presence, create_run, finish_run_if_done, finish_scan, reopen_run
    from vocfleet.db.score_writer import store_chunk
    from vocfleet.db.views import run_view

    if database == "postgresql":
        request.getfixturevalue("pg_url")
    ensure_schema()
    with session_scope() as s:
        dets = [Detector(voc_class=c, checkpoint_path="x", sha256="0" * 64, threshold=0.5, ap=0.3, metrics={}, active=True) for c in ("car", "dog")]
        s.add_all(dets)
        s.flush()
        run_id = create_run(s, ["/photos"], dets, batch_size=4, max_attempts=2, shard_size=2).id
        car, dog = (d.id for d in dets)
    with session_scope() as s:
        assert s.get(ScoreRun, run_id).class_counts == {"car": 0, "dog": 0}
        token = claim_job(s, ScoreRun, run_id, "scanner")
    with session_scope() as s:
        ids = [add_shard(s, run_id, token, n, [[0, f"{n}a.jpg", None], [0, f"{n}b.jpg", None]]) for n in range(2)]
        finish_scan(s, run_id, token)

    def chunk(shard: int, names: list[str], present: list[tuple[bool, bool]]) -> None:
        with session_scope() as s:
            shard_token = s.get(ScoreShard, shard).claim_token or claim_job(s, ScoreShard, shard, "w")
        images = [{"folder": "/photos", "rel_path": n, "size_bytes": 1, "sha256": n.ljust(64, "0"), "width": 1, "height": 1} for n in names]
        scores = [[(car, "car", 0.9 if c else 0.1, c), (dog, "dog", 0.9 if d else 0.1, d)] for c, d in present]
        with session_scope() as s:
            assert store_chunk(s, shard, shard_token, images, scores, [])

    chunk(ids[0], ["0a.jpg"], [(True, False)])
    chunk(ids[1], ["1a.jpg", "1b.jpg"], [(True, True), (False, True)])
    with session_scope() as s:
        assert s.get(ScoreRun, run_id).class_counts == {"car": 2, "dog": 2} == class_presence(s, run_id)
        assert {c.voc_class: c.present for c in run_view(s, run_id).classes} == {"car": 2, "dog": 2}  # while it runs
    chunk(ids[0], ["0b.jpg"], [(False, True)])
    with session_scope() as s:
        for shard in ids:
            s.get(ScoreShard, shard).status = JobStatus.succeeded
    with session_scope() as s:
        assert finish_run_if_done(s, run_id) == JobStatus.succeeded
        assert s.get(ScoreRun, run_id).class_counts == {"car": 2, "dog": 3} == class_presence(s, run_id)
        s.get(ScoreRun, run_id).status = JobStatus.failed  # resumed: counted again from its scores, once
    with session_scope() as s:
        reopen_run(s, run_id, timedelta(seconds=60))
        assert s.get(ScoreRun, run_id).class_counts == {"car": 2, "dog": 3}
