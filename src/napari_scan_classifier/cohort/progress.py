"""Progress of a long cohort, on a terminal or in a log."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from napari_scan_classifier.results import ANSWERED

PROGRESS_INTERVAL_S = 10.0  # plain progress lines when the output is not a terminal


class CohortProgress:
    """A progress bar (tqdm) on a terminal; a plain line every ``interval`` seconds elsewhere.
    Both show series done of the total, rate, time left and failures so far."""

    def __init__(
        self, total: int, done: int, stream: TextIO | None = None, interval: float = 0.0
    ) -> None:
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.total, self.done, self.failed = total, done, 0
        self.interval = interval or PROGRESS_INTERVAL_S
        self.start = self.last = time.monotonic()
        self.added = 0
        terminal = self.stream.isatty()
        self.bar = tqdm(
            total=total,
            initial=done,
            unit="series",
            file=self.stream,
            disable=not terminal,
            dynamic_ncols=True,
        )

    def note(self, text: str) -> None:
        if self.bar.disable:
            print(text, file=self.stream, flush=True)
        else:
            self.bar.write(text, file=self.stream)

    def update(self, row: dict[str, Any]) -> None:
        self.done += 1
        self.added += 1
        if row["status"] not in ANSWERED:
            self.failed += 1
        if not self.bar.disable:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
        elif time.monotonic() - self.last >= self.interval or self.done == self.total:
            self.last = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.added / elapsed * 60.0
        left = self.total - self.done
        eta = time.strftime("%H:%M:%S", time.gmtime(left / rate * 60.0)) if rate else "?"
        return (
            f"{self.done}/{self.total} series ({self.failed} failed), "
            f"{rate:.1f} series/min, {eta} left"
        )

    def close(self) -> None:
        self.bar.close()
