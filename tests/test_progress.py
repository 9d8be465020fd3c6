"""Progress for people: the decode-once cache shows on pipes too; batch rates leave the first step out."""

import io
import re
import time

from vocfleet.model.events import BatchProgress, CacheProgress
from vocfleet.scheduler.progress import TrainProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cache_progress_is_plain_lines_on_a_pipe():
    out = io.StringIO()
    progress = TrainProgress("job 1 car", out)
    for done in range(0, 2501, 50):
        progress(CacheProgress(done, 2500))
    lines = out.getvalue().splitlines()
    assert lines[0] == "job 1 car decoding: 0 of 2500 images" and lines[-1] == "job 1 car decoding: 2500 of 2500 images"
    assert len(lines) == 11  # one per tenth, not one per event


def test_batch_rate_leaves_the_first_step_out():
    progress = TrainProgress("job 1 car", Terminal())
    progress(BatchProgress(1, 1, 10))  # right after a slow first step
    for b in (2, 3, 4):
        time.sleep(0.1)
        progress(BatchProgress(1, b, 10))
    shown = progress.bar.format_meter(**progress.bar.format_dict)  # what the terminal shows
    rate = float(re.search(r"([\d.]+)batch/s", shown).group(1))
    assert "4/10" in shown and 3 < rate < 15, shown  # about 10 batches/s, not thousands


def test_the_python_api_reports_through_a_callback_and_logging(fake_voc, detectors, wild, caplog):
    """A notebook sees each epoch and a scoring run's progress: the events to a callback, and lines at INFO."""
    import logging

    from sqlalchemy import select

    from vocfleet.db.models import Detector
    from vocfleet.db.runs import create_run
    from vocfleet.db.session import session_scope
    from vocfleet.db.training import create_jobs
    from vocfleet.model.config import TrainConfig
    from vocfleet.model.events import EpochFinished
    from vocfleet.worker.runner import run_train_job
    from vocfleet.worker.scoring import run_score_run

    cfg = TrainConfig(voc_class="car", voc_root=str(fake_voc), arch="tiny", image_size=32, epochs=2, batch_size=8, max_batches=2)
    with session_scope() as s:
        (job,) = create_jobs(s, [cfg])
    events = []
    with caplog.at_level(logging.INFO):
        assert run_train_job(job.id, progress=events.append) == "succeeded"
        assert [e.record.epoch for e in events if isinstance(e, EpochFinished)] == [1, 2]
        assert "epoch 2/2" in caplog.text and "val AP" in caplog.text
        with session_scope() as s:
            run_id = create_run(s, [str(wild)], list(s.scalars(select(Detector).where(Detector.active.is_(True)))), batch_size=8, max_attempts=1).id
        seen = []
        assert run_score_run(run_id, progress=lambda done, total: seen.append((done, total))) == "succeeded"
    assert seen and seen[-1][0] == seen[-1][1] and "scoring: " in caplog.text and f"{seen[-1][0]} of {seen[-1][1]} files done" in caplog.text
