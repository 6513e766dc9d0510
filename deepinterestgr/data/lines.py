"""Reading line-oriented raw files (plain or gzip) with errors that name the file and line.

Every way a file can fail to read (missing, a folder, no permission, cut-off or corrupt compressed
data, bytes that are not UTF-8) becomes a `DataError` naming the file, and the line where one is
known, so `dig prepare` exits 2 with one line instead of a traceback.
"""

from __future__ import annotations

import ast
import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from deepinterestgr.errors import DataError
from deepinterestgr.progress import tracked

T = TypeVar("T")

# What a truncated or corrupt gzip stream raises while it is read (BadGzipFile is an OSError).
_READ_ERRORS = (OSError, EOFError, zlib.error)


def check_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path if it names a readable regular file, else raise naming the problem."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a {what}")
    if not path.exists():
        raise DataError(f"{path}: {what} does not exist")
    if not path.is_file():
        raise DataError(f"{path}: is not a regular file; expected a {what}")
    return path


def read_lines(path: str | Path, *, drop_bad: bool = False, dropped: dict | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, text without the line break) for each line of a UTF-8 file, gzip or plain.

    A line that is not UTF-8 raises, or is counted in `dropped["undecodable_lines"]` when `drop_bad`
    is set. Compressed data that ends early or is corrupt always raises: no later line can be trusted.
    """
    path = check_file(path)
    try:
        handle = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot be opened ({exc.strerror or exc})") from None
    number = 0
    with handle:
        lines = iter(tracked(handle, f"read {path.name}", "lines"))
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except _READ_ERRORS as exc:
                kind = "compressed data is cut off or corrupt" if path.suffix == ".gz" else "read failed"
                raise DataError(f"{path}:{number + 1}: {kind} ({exc})") from None
            number += 1
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                if not drop_bad:
                    raise DataError(
                        f"{path}:{number}: bytes that are not UTF-8 at byte {exc.start + 1} of the line "
                        "(re-encode the file as UTF-8, or set data.drop_bad_rows=true to drop such lines)"
                    ) from None
                if dropped is not None:
                    dropped["undecodable_lines"] = dropped.get("undecodable_lines", 0) + 1
                continue
            yield number, text.rstrip("\r\n")


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

    for number, line in read_lines(path, drop_bad=drop_bad, dropped=dropped):
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
        except RecursionError:
            reject(f"{path}:{number}: JSON nested too deeply")
            continue
        if not isinstance(record, dict):
            reject(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            continue
        yield number, record


def _python_literal(line: str) -> object:
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def converted_records(
    path: str | Path, convert: Callable[[dict, str], T], *, allow_python_literals: bool = False,
    drop_bad: bool = False, dropped: dict | None = None,
) -> Iterator[T]:
    """`convert(record, where)` of each record, `where` being "file:line" for its errors.

    A line whose fields are missing or of the wrong type raises, or is counted in
    `dropped["bad_field_lines"]` and skipped when `drop_bad` is set.
    """
    for number, record in read_records(path, allow_python_literals=allow_python_literals, drop_bad=drop_bad, dropped=dropped):
        try:
            converted = convert(record, f"{path}:{number}")
        except DataError:
            if not drop_bad:
                raise
            if dropped is not None:
                dropped["bad_field_lines"] = dropped.get("bad_field_lines", 0) + 1
            continue
        yield converted


def require(record: dict, field: str, where: str) -> object:
    """Return record[field], or raise naming the file, line and field."""
    if field not in record or record[field] is None:
        raise DataError(f"{where}: missing field {field!r}")
    return record[field]


def identifier(value: object, field: str, where: str) -> str:
    """An id field as a string: ids are strings or integers; anything else names the file, line and field."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field {field!r} must be a string or an integer, got {type(value).__name__}")
    return str(value)


def string_list(value: object, field: str, where: str) -> list[str]:
    """A field holding one string or a (nested) list of strings, flattened; None is empty."""
    if value is None:
        return []
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [part for element in value for part in string_list(element, field, where)]
    raise DataError(f"{where}: field {field!r} must be a string or a list of strings, got {type(value).__name__}")


def optional_string(value: object, field: str, where: str) -> str | None:
    """A field that is a string or absent."""
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")


def timestamp(value: object, field: str, where: str) -> int:
    """A field holding a timestamp: an integer (or a numeric string) that fits in 64 bits."""
    try:
        if isinstance(value, bool):
            raise TypeError
        result = int(float(value)) if isinstance(value, str) else int(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: field {field!r} is not an integer timestamp, got {value!r:.40}") from None
    if not -(2**62) < result < 2**62:
        raise DataError(f"{where}: field {field!r} timestamp {result} is out of range")
    return result
