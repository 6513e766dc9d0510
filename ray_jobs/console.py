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
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file(store: RunStore, command: str) -> Path | None:
    """`<run>/logs/<command>.log` for a run on local disk; None for object storage (Ray's session logs keep them)."""
    if not isinstance(store.fs, pafs.LocalFileSystem):
        return None
    path = Path(store.root) / "logs" / f"{command}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def route_ray_logs(path: Path | None) -> None:
    """Ray's console handlers keep WARNING and above; a file handler at `path` takes INFO and above."""
    import ray.data  # Ray Data installs its own handlers on import: adjust them after

    if not sys.stderr.isatty():
        # Redrawn bars (Ray Data's, in the driver and in Train workers) are noise in a log; lines stay.
        ray.data.DataContext.get_current().enable_progress_bars = False

    handler = None
    if path is not None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(_FORMAT))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for existing in logger.handlers:
            if isinstance(existing, logging.StreamHandler) and not isinstance(existing, logging.FileHandler):
                existing.setLevel(max(existing.level, logging.WARNING))
        if handler is not None and (name in ("ray", "ray.data") or not logger.propagate):
            logger.addHandler(handler)
