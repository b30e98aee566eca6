"""Progress of long work as log lines (count, rate, ETA) at most every few seconds.

Log lines rather than a bar: they read the same in an Airflow task log, a pod log and a terminal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("ml.progress")


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None = None,
        every: float = 5.0,
        unit: str = "rows",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`every`: seconds between lines at most (a line comes with the first `add` after
        that); `clock` is injectable so tests need no sleeps."""
        self.what, self.total, self.every, self.unit = what, total, every, unit
        self.clock = clock
        self.t0 = self.last = clock()
        self.done = 0

    def start(self) -> None:
        """A first line before any work: with `finish`, a run of several short steps (the
        embed shards of a demo) never leaves the reader without a line for long."""
        self.last = self.clock()
        total = f"{self.total} " if self.total else ""
        log.info("%s: starting, %s%s to do", self.what, total, self.unit)

    def finish(self) -> None:
        """The last line, whatever the interval: the count done and the overall rate."""
        self.add(0, force=True)

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        now = self.clock()
        if not (force or now - self.last >= self.every):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            eta = max(self.total - self.done, 0) / max(rate, 1e-9)
            log.info(
                "%s: %d/%d %s, %.0f %s/s, ETA %.0fs",
                self.what,
                self.done,
                self.total,
                self.unit,
                rate,
                self.unit,
                eta,
            )
        else:
            log.info("%s: %d %s, %.0f %s/s", self.what, self.done, self.unit, rate, self.unit)
