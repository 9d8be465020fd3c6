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
