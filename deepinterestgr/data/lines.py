"""Reading line-oriented raw files (plain or gzip) with errors that name the file and line."""

from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from deepinterestgr.errors import DataError


def open_text(path: str | Path) -> IO[str]:
    """Open a text file, transparently decompressing `.gz`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def read_records(
    path: str | Path, *, allow_python_literals: bool = False, drop_bad: bool = False, dropped: dict | None = None
) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for each non-empty line of a JSON-lines file.

    The 2014 Amazon meta files hold Python literals (single quotes) rather than JSON, hence the
    literal fallback. A malformed line raises, or is counted in `dropped` when `drop_bad` is set.
    """
    def reject(message: str) -> None:
        if not drop_bad:
            raise DataError(message)
        if dropped is not None:
            dropped["malformed_lines"] = dropped.get("malformed_lines", 0) + 1

    with open_text(path) as handle:
        for number, line in enumerate(tqdm(handle, desc=f"read {Path(path).name}", unit=" lines", leave=False), 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                record = _python_literal(line) if allow_python_literals else None
                if record is None:
                    reject(f"{path}:{number}: malformed JSON line ({exc.msg})")
                    continue
            if not isinstance(record, dict):
                reject(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                continue
            yield number, record


def _python_literal(line: str) -> object:
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None

def require(record: dict, field: str, path: str | Path, number: int) -> object:
    """Return record[field], or raise naming the file, line and field."""
    if field not in record or record[field] is None:
        raise DataError(f"{path}:{number}: missing field {field!r}")
    return record[field]
