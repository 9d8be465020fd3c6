"""Progress for long commands: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys

from tqdm import tqdm

from vocfleet.model.events import BatchProgress, CacheProgress, EpochFinished, Event, FitWarning


class TrainProgress:
    """Turns ``fit`` progress events into a bar (terminal) or one line per epoch (logs, pipes)."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.bar: tqdm | None = None
        self.cache: CountProgress | None = None
        self.desc = ""

    def __call__(self, event: Event) -> None:
        match event:
            case CacheProgress(done, total):  # the decode-once cache: a bar on a terminal, a line every 10% in a log or pipe
                if self.cache is None:
                    self._close()
                    self.cache = CountProgress(f"{self.label} decoding", "image", self.stream)
                self.cache(done, total)
                if done == total:
                    self.cache.__exit__()
                    self.cache = None
            case BatchProgress(epoch, batch, batches):
                desc = f"{self.label} epoch {epoch}"
                if self.bar is None or self.desc != desc:
                    # Made at the end of the first batch, counting from there: that batch's start-up (workers,
                    # first allocations) stays out of the rate, which otherwise reads thousands of batches/s.
                    self._bar(desc, batches, "batch", initial=batch)
                else:
                    self.bar.update(batch - self.bar.n)
            case FitWarning(message):
                self._close()
                print(f"{self.label}: warning: {message}", file=self.stream, flush=True)
            case EpochFinished(r, epochs):
                self._close()
                print(
                    f"{self.label} epoch {r.epoch}/{epochs}: loss {r.train_loss:.4f}  "
                    f"val loss {r.val_loss:.4f}  val AP {r.val_ap:.3f}  {r.images_per_s:.0f} img/s",
                    file=self.stream,
                    flush=True,
                )

    def _bar(self, desc: str, total: int, unit: str, initial: int = 0) -> tqdm:
        if self.bar is None or self.desc != desc:
            self._close()
            self.desc = desc
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, disable=not self.tty, leave=False, dynamic_ncols=True)
        return self.bar

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CountProgress:
    """Progress of ``done`` of ``total`` items: a bar on a terminal, a plain line every 10% otherwise.

    Used as a context manager; call it with (done, total) as often as wanted.
    """

    def __init__(self, label: str, unit: str, stream=None, *, total_grows: bool = False):
        """``total_grows``: the total is still being counted at first (a scan), so no line says "0 of 1" before the first item is done."""
        self.label, self.unit, self.total_grows = label, unit, total_grows
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.bar = tqdm(desc=label, unit=unit, file=self.stream, disable=not self.tty, dynamic_ncols=True)
        self.last_tenth = -1

    def __call__(self, done: int, total: int | None) -> None:
        if self.tty:
            self.bar.total, self.bar.n = total, done
            self.bar.refresh()
        elif total and (done or not self.total_grows):
            tenth = done * 10 // total
            if tenth != self.last_tenth:
                self.last_tenth = tenth
                print(f"{self.label}: {done} of {total} {self.unit}s", file=self.stream, flush=True)

    def __enter__(self) -> CountProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
