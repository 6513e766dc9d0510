"""Finished LLM results kept across attempts of a stage, so a rerun neither repeats nor loses work.

Results live under `<run>/cache/<stage>/<key>/`, outside the stage's attempt folders (which a new
attempt deletes). The key names the task, model, generation settings and prompt version: the same
item under the same key is never asked twice. Each flush writes one whole Parquet shard atomically,
so a crash loses at most the rows since the last flush.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

SCHEMA = pa.schema([
    pa.field("id", pa.string()), pa.field("request_hash", pa.string()), pa.field("value", pa.string()),
    pa.field("raw", pa.string()), pa.field("prompt_tokens", pa.int64()), pa.field("completion_tokens", pa.int64()),
])


def stable_hash(*parts) -> str:
    """A short hash of JSON-serialisable parts, stable across processes and machines."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultCache:
    """Append-only shards of (id, request hash) -> parsed value (JSON), raw text and token counts."""

    def __init__(self, store, stage: str, key: str):
        self.store, self.relative = store, f"cache/{stage}/{key}"
        self.folder = f"{store.root}/{self.relative}"

    def load(self) -> dict[tuple[str, str], dict]:
        """Every cached row by (id, request hash); the latest shard wins for a repeated pair."""
        selector = pafs.FileSelector(self.folder, allow_not_found=True)
        shards = sorted(i.path for i in self.store.fs.get_file_info(selector) if i.path.endswith(".parquet"))
        rows: dict[tuple[str, str], dict] = {}
        for shard in shards:
            for row in pq.read_table(shard, filesystem=self.store.fs).to_pylist():
                rows[(row["id"], row["request_hash"])] = row
        return rows

    def append(self, rows: list[dict]) -> None:
        """Write rows as one new shard (atomically: readers never see part of it)."""
        if not rows:
            return
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer)
        # Shard names sort in write order (then a random suffix against concurrent writers).
        name = f"{len(self._names()):06d}-{uuid.uuid4().hex[:8]}.parquet"
        self.store.write_atomic(f"{self.relative}/{name}", buffer.getvalue())

    def _names(self) -> list[str]:
        selector = pafs.FileSelector(self.folder, allow_not_found=True)
        return [i.base_name for i in self.store.fs.get_file_info(selector) if i.base_name.endswith(".parquet")]

    @staticmethod
    def value(row: dict):
        return json.loads(row["value"])
