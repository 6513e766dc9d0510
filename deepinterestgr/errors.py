"""Errors that name what the user must fix (a file and line, a field, a key)."""


class DataError(ValueError):
    """Raw data is malformed: the message names the file, the line or the field."""


class StorageError(RuntimeError):
    """The run storage cannot be reached or holds something unexpected."""
