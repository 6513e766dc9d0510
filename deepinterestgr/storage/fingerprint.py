"""Content fingerprints: a stage reruns only when its inputs' bytes (or its config) change."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyarrow import fs as pafs

from deepinterestgr.errors import DataError


def fingerprint_paths(*paths: str | Path | None) -> str:
    """sha256 over the names and bytes of the given files (folders: every file inside, sorted)."""
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: does not exist")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.name).encode())
            try:
                with file.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            except OSError as exc:
                raise DataError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()[:16]


def fingerprint_listing(*places: pafs.FileSystem | str) -> str:
    """sha256 over the paths, sizes and modification times of files (filesystem, path pairs; folders:
    every file inside): for inputs too large, or too remote, to read through the driver."""
    digest = hashlib.sha256()
    for filesystem, path in zip(places[::2], places[1::2]):
        info = filesystem.get_file_info(path)
        files = filesystem.get_file_info(pafs.FileSelector(path, recursive=True)) if info.type == pafs.FileType.Directory else [info]
        for file in sorted((f for f in files if f.type == pafs.FileType.File), key=lambda f: f.path):
            digest.update(f"{file.path}\0{file.size}\0{file.mtime_ns}\0".encode())
    return digest.hexdigest()[:16]
