"""Who runs queued work: the one place that decides fleet or embedded.

In a fleet (``VOCFLEET_BROKER_URL`` set) Celery workers run it, fed through the broker; in the
embedded default this machine's ``vocfleet run`` (training) or the scoring command itself does,
calling the same ``worker/runner.py`` and ``worker/scoring.py`` functions. The CLI and the web app
ask the executor instead of reading the broker URL. Light on purpose: the listings import it,
and the broker's client is imported only when rows are handed over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from vocfleet.db.settings import Settings, get_settings

if TYPE_CHECKING:
    from vocfleet.db.claims import Work


class HandOver(NamedTuple):
    sent: int | None  # rows sent to the broker; None where no broker is used
    said: str


@dataclass(frozen=True)
class Executor:
    broker_url: str | None

    @property
    def fleet(self) -> bool:
        """Workers elsewhere run the work (True), or this machine does (False: the embedded default)."""
        return self.broker_url is not None

    @property
    def reaper(self) -> str:
        """Who takes back a training job whose worker went silent."""
        return "the scheduler ('vocfleet reap')" if self.fleet else "'vocfleet run'"

    def hand_over(self, table: type[Work], ids: Iterable[int]) -> HandOver:
        """Queued rows to whoever runs them, and one line saying where they went.

        In a fleet they are sent to the broker (an unreachable broker leaves them queued in the
        database for ``vocfleet scheduler``); embedded, they wait for ``vocfleet run``.
        """
        ids = list(ids)
        if not self.fleet:
            return HandOver(None, "run them with: vocfleet run")
        from .dispatch import enqueue

        sent = enqueue(table, ids)
        said = f"sent {sent} to the broker" if sent == len(ids) else f"sent {sent}; 'vocfleet scheduler' sends the rest when the broker is back"
        return HandOver(sent, said)


def executor(settings: Settings | None = None) -> Executor:
    return Executor((settings or get_settings()).broker_url)
