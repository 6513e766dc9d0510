"""Progress of long steps: a bar on a terminal, one line every few seconds (count, rate, ETA) elsewhere.

A redrawn bar written to `ray job logs` or a CI log turns into one endless line of carriage returns;
lines read the same everywhere.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

# Seconds between two progress lines when stderr is not a terminal.
LINE_EVERY_S = 10.0


class Progress:
    """Progress of a loop with a known total, as at most one line per `every_s` seconds on stderr.

    With `heartbeat`, a line also comes every `every_s` seconds while nothing advances (a model loading,
    the first batch of a long LLM task), so a quiet console never means a stuck job; `close` stops it.
    """

    def __init__(self, label: str, total: int | None, unit: str, every_s: float = LINE_EVERY_S, heartbeat: bool = False):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.done, self.detail = 0, ""
        self.began = self.last = time.perf_counter()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        if heartbeat:
            threading.Thread(target=self._beat, daemon=True).start()

    def _beat(self) -> None:
        while not self._stopped.wait(self.every_s):
            with self._lock:
                if time.perf_counter() - self.last >= self.every_s:
                    self._line(time.perf_counter())

    def _line(self, now: float) -> None:
        self.last = now
        elapsed = now - self.began
        finished = self.total is not None and self.done >= self.total
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        if self.done == 0 and not finished:
            status = f"{elapsed:.0f} s, waiting for the first results"
        else:
            eta = f", ETA {(self.total - self.done) / rate:.0f} s" if self.total is not None and rate > 0 and not finished else ""
            status = f"{rate:.1f}/s, {elapsed:.0f} s{eta}"
        extra = f", {self.detail}" if self.detail else ""
        print(f"{self.label}: {self.done}{of} {self.unit} ({status}{extra})", file=sys.stderr, flush=True)

    def update(self, count: int = 1, detail: str = "") -> None:
        """Advance by `count`; print a line when `every_s` passed since the last one or the total is reached."""
        self.set(self.done + count, detail)

    def set(self, done: int, detail: str = "") -> None:
        """Set the count done so far (see `update`)."""
        with self._lock:
            self.done, self.detail = done, detail
            now = time.perf_counter()
            finished = self.total is not None and done >= self.total
            if now - self.last >= self.every_s or finished:
                self._line(now)

    def close(self) -> None:
        """Stop the heartbeat (lines need no other clean-up; tqdm's API, so callers need not tell the two apart)."""
        self._stopped.set()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None, label: str, unit: str, leave: bool = True) -> tqdm | Progress:
    """A tqdm bar on a terminal (removed when done unless `leave`), else a `Progress` that prints
    lines, with a heartbeat while nothing advances; both take `update(n)`; use it as a context manager."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=label, unit=f" {unit}", file=sys.stderr, mininterval=1, leave=leave)
    return Progress(label, total, unit, heartbeat=True)


def tracked(items: Iterable, label: str, unit: str, total: int | None = None) -> Iterator:
    """Iterate `items`, showing progress as `progress` does (a terminal's bar goes when done)."""
    with progress(total, label, unit, leave=False) as bar:
        for item in items:
            yield item
            bar.update(1)
