"""What a person sees: our stage and progress lines on the console, Ray's own INFO logs in the run's log file.

Ray Data logs a block of progress every few seconds when stdout is not a terminal, and Ray Train and
Serve log their bookkeeping at INFO; in a terminal, in `ray job logs` and in CI that buries the lines
that matter. Warnings and errors still reach the console; everything at INFO and above is kept in
`<run>/logs/<command>.log` (local runs) so nothing is lost.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pyarrow import fs as pafs

from deepinterestgr.storage.runstore import RunStore

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve", "ray.tune")
# Lines that ask nothing of the user here, from the driver's loggers and from worker processes (which Ray
# prints on the driver's stderr): token auth on a private local cluster, the progress bars we turn off
# ourselves, Ray Data storing a list column as Python objects, model-load bars, Ray Core's note on actor
# constructor arguments, faiss asking for more k-means points on a small catalog, Ray Data's per-dataset
# "finished" lines inside trainers. Kept in the run's log, not shown on the console.
NOISE = ("Token authentication is enabled for this Ray cluster", "Progress bars disabled", "Failed to convert column",
         "Loading weights", "has constructor arguments in the object store", "please provide at least",
         "self.exclude_resources", "Writing model shards", "execution finished in")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file(store: RunStore, command: str) -> Path | None:
    """`<run>/logs/<command>.log` for a run on local disk; None for object storage (Ray's session logs keep them)."""
    if not isinstance(store.fs, pafs.LocalFileSystem):
        return None
    path = Path(store.root) / "logs" / f"{command}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def route_ray_logs(path: Path | None) -> None:
    """Ray's console handlers keep WARNING and above; `path` takes Ray's INFO and above plus a copy of
    everything printed to stdout and stderr."""
    import ray.data  # Ray Data installs its own handlers on import: adjust them after

    if not sys.stderr.isatty():
        # Redrawn bars (Ray Data's, in the driver and in Train workers) are noise in a log; lines stay.
        ray.data.DataContext.get_current().enable_progress_bars = False

    # A second call in the same process (tests, notebooks) replaces the first one's log, not stacks on it.
    sys.stdout, sys.stderr = (stream._stream if isinstance(stream, _Tee) else stream for stream in (sys.stdout, sys.stderr))
    handler = None
    if path is not None:
        log = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (open for the process's life)
        handler = logging.StreamHandler(log)
        handler._dig_log = True
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(_FORMAT))
        # What the console shows (our lines, workers' lines, warnings) goes to the log file as well.
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for existing in list(logger.handlers):
            if getattr(existing, "_dig_log", False):
                logger.removeHandler(existing)
            elif isinstance(existing, logging.StreamHandler) and not isinstance(existing, logging.FileHandler):
                existing.setLevel(max(existing.level, logging.WARNING))
                if not any(isinstance(f, _Harmless) for f in existing.filters):
                    existing.addFilter(_Harmless())
        if handler is not None and (name in ("ray", "ray.data") or not logger.propagate):
            logger.addHandler(handler)


def _noise(text: str) -> bool:
    return any(noise in text for noise in NOISE)


class _Harmless(logging.Filter):
    """Drops NOISE from a console handler (the log file's handler keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _noise(record.getMessage())


class _Tee:
    """A text stream that also writes to a log file; a terminal stays a terminal (isatty, fileno)."""

    def __init__(self, stream, log):
        self._stream, self._log = stream, log
        self._dropped = False

    def write(self, text: str) -> int:
        """Everything to the log; to the console, all but NOISE lines (and the newline `print` writes
        after a dropped line)."""
        self._log.write(text)
        if text == "\n" and self._dropped:
            self._dropped = False
            return len(text)
        lines = text.splitlines(keepends=True)
        kept = "".join(line for line in lines if not _noise(line))
        self._dropped = bool(lines) and not kept
        if kept:
            self._stream.write(kept)
        return len(text)

    def flush(self) -> None:
        self._log.flush()
        self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
