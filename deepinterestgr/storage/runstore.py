"""A run's storage: committed stage outputs, one manifest entry per stage, atomic writes.

Layout under the run root:
    config.yaml                    the resolved config of the latest invocation (less `dig pipeline --stages`)
    manifest/<stage>.json          the committed entry of each stage (written last, atomically)
    <stage>/<attempt>/<table>/     Parquet files of one attempt

A stage writes into a fresh attempt folder and commits by writing its manifest entry; readers only
follow the manifest. A crash therefore leaves the previous commit intact, and the orphaned attempt
is deleted the next time the stage starts, unless the stage is resumable and starts again with the
same config and inputs: then it continues in that folder (sft keeps its finished members there, and
Ray Train resumes an unfinished fit from its latest checkpoint). This works the same on S3, where
renames are not atomic but a single object PUT is.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from deepinterestgr.config import RunConfig
from deepinterestgr.errors import StorageError
from deepinterestgr.storage.filesystem import resolve, storage_fault
from deepinterestgr.storage.lease import RunLease, run_lease

VERSIONED_PACKAGES = ("deepinterestgr", "ray", "torch", "transformers", "pyarrow")
RESUME_FILE = "_resume_key"  # in a resumable attempt: which config and inputs it belongs to


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@dataclass
class ManifestEntry:
    """What a committed stage produced, from which inputs and config."""

    stage: str
    config_hash: str
    inputs: dict[str, str]
    attempt: str
    rows: dict[str, int] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)
    created_at: float = field(default_factory=time.time)

    @property
    def fingerprint(self) -> str:
        """Identifies this commit, for the manifest entries of downstream stages."""
        return f"{self.stage}:{self.attempt}"


class StageAttempt:
    """One attempt at a stage: a private folder that becomes visible only on commit."""

    def __init__(self, store: RunStore, stage: str, config_hash: str, inputs: dict[str, str], attempt: str | None = None):
        self.store, self.stage, self.config_hash, self.inputs = store, stage, config_hash, inputs
        self.resumed = attempt is not None
        self.attempt = attempt or f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.dir = f"{store.root}/{stage}/{self.attempt}"
        self.entry: ManifestEntry | None = None

    def path(self, name: str) -> str:
        """Path (inside the store's filesystem) of a named output of this attempt."""
        return f"{self.dir}/{name}"

    def uri(self, name: str) -> str:
        return self.store.uri_of(self.path(name))

    def write_table(self, name: str, table: pa.Table) -> None:
        """Write one Arrow table as `<name>/part-0.parquet`."""
        self.store.fs.create_dir(self.path(name), recursive=True)
        pq.write_table(table, f"{self.path(name)}/part-0.parquet", filesystem=self.store.fs)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.store.fs.create_dir(self.path(name).rsplit("/", 1)[0], recursive=True)
        with self.store.fs.open_output_stream(self.path(name)) as handle:
            handle.write(data)

    def write_atomic(self, name: str, data: bytes) -> None:
        """A small file that a resumed attempt reads whole or not at all (a record of finished work)."""
        self.store.write_atomic(f"{self.stage}/{self.attempt}/{name}", data)

    def read_text(self, name: str) -> str | None:
        """A file this attempt (or the failed run it resumes) wrote, or None."""
        return self.store.read_text(f"{self.stage}/{self.attempt}/{name}")

    def commit(self, rows: dict[str, int], report: dict) -> ManifestEntry:
        """Make this attempt the stage's output: its report.json, then its manifest entry."""
        entry = ManifestEntry(self.stage, self.config_hash, self.inputs, self.attempt, rows, report)
        self.write_bytes("report.json", json.dumps(report, indent=2, default=str).encode())
        self.store.lease(self.stage).check()
        self.store.write_atomic(f"manifest/{self.stage}.json", json.dumps(asdict(entry), indent=2).encode())
        self.entry = entry
        return entry


class RunStore:
    """Access to one run's storage; the filesystem is picklable, so Ray tasks can use it too."""

    def __init__(self, cfg: RunConfig):
        self.filesystem_spec = cfg.storage
        self.fs, self.root, self.uri = resolve(cfg.storage.uri, cfg.storage)

    def lease(self, command: str) -> RunLease:
        """This process's lease on the run (re-entrant; `with store.lease("dig sft"):` holds it)."""
        return run_lease(self.root, self.uri, self.filesystem_spec, command if command.startswith("dig") else f"dig {command}")

    def uri_of(self, path: str) -> str:
        """A URI for a path inside the store, as other tools (and image loaders) open it."""
        return f"s3://{path}" if isinstance(self.fs, pafs.S3FileSystem) else path

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_atomic(self, relative: str, data: bytes) -> None:
        """Write a small file so readers see the old bytes or the new ones, never a torn write."""
        target = f"{self.root}/{relative}"
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if isinstance(self.fs, pafs.S3FileSystem):
            with self.fs.open_output_stream(target) as handle:
                handle.write(data)
            return
        temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(temporary) as handle:
            handle.write(data)
        self.fs.move(temporary, target)

    def read_text(self, relative: str) -> str | None:
        path = f"{self.root}/{relative}"
        if not self._exists(path):
            return None
        with self.fs.open_input_stream(path) as handle:
            return handle.read().decode()

    def save_config(self, cfg: RunConfig) -> None:
        self.write_atomic("config.yaml", cfg.to_yaml().encode())

    def entry(self, stage: str) -> ManifestEntry | None:
        """The committed manifest entry of a stage, or None."""
        text = self.read_text(f"manifest/{stage}.json")
        if text is None:
            return None
        try:
            return ManifestEntry(**json.loads(text))
        except (TypeError, json.JSONDecodeError) as exc:
            raise StorageError(f"{self.uri}/manifest/{stage}.json is corrupt: {exc}") from None

    def is_fresh(self, stage: str, config_hash: str, inputs: dict[str, str]) -> bool:
        """True when the stage committed with this config and these inputs: skip it."""
        entry = self.entry(stage)
        return entry is not None and entry.config_hash == config_hash and entry.inputs == inputs

    def require(self, stage: str) -> ManifestEntry:
        entry = self.entry(stage)
        if entry is None:
            raise StorageError(f"run {self.uri} has no committed '{stage}' stage: run `dig {stage}` first")
        return entry

    def inputs(self, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, str]:
        """Fingerprints of the stages a stage reads: every required one, and the optional ones that ran."""
        found = {stage: self.require(stage).fingerprint for stage in required}
        found.update({stage: entry.fingerprint for stage in optional if (entry := self.entry(stage)) is not None})
        return found

    def adopt(self, source: "RunStore", stages: tuple[str, ...]) -> None:
        """Start this run from another run's committed stages: their outputs and manifest entries.

        For runs that share upstream work (benchmark arms on one prepare); a stage this run has
        committed already is kept. The entries name attempts, not paths, so the copies are committed as they are.
        """
        for stage in stages:
            entry = source.require(stage)
            if self.entry(stage) is not None:
                continue
            pafs.copy_files(f"{source.root}/{stage}/{entry.attempt}", f"{self.root}/{stage}/{entry.attempt}",
                            source_filesystem=source.fs, destination_filesystem=self.fs)
            self.write_atomic(f"manifest/{stage}.json", source.read_text(f"manifest/{stage}.json").encode())

    def table_path(self, stage: str, name: str) -> str:
        """Folder of a committed table (for ray.data.read_parquet with this store's filesystem)."""
        return f"{self.root}/{stage}/{self.require(stage).attempt}/{name}"

    def read_bytes(self, stage: str, name: str) -> bytes:
        """A committed file of a stage (trie.npz, report.json, ...)."""
        with self.fs.open_input_stream(self.table_path(stage, name)) as handle:
            return handle.read()

    def read_table(self, stage: str, name: str) -> pa.Table:
        return pq.read_table(self.table_path(stage, name), filesystem=self.fs)

    def _uncommitted(self, stage: str) -> list[str]:
        entry = self.entry(stage)
        selector = pafs.FileSelector(f"{self.root}/{stage}", allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector)
                      if info.type == pafs.FileType.Directory and (entry is None or info.base_name != entry.attempt))

    def _remove_uncommitted(self, stage: str, keep: str | None = None) -> None:
        for attempt in self._uncommitted(stage):
            if attempt != keep:
                self.fs.delete_dir(f"{self.root}/{stage}/{attempt}")

    @contextmanager
    def stage(self, stage: str, config_hash: str, inputs: dict[str, str], resumable: bool = False) -> Iterator[StageAttempt]:
        """Run a stage's writes in a private attempt; it is deleted unless `commit` was called.

        A `resumable` stage's failed attempt is kept instead, and the next run of the stage with the
        same config and inputs continues in it (`StageAttempt.resumed`); any other config starts afresh.
        """
        with self.lease(stage):
            yield from self._stage(stage, config_hash, inputs, resumable)

    def _stage(self, stage: str, config_hash: str, inputs: dict[str, str], resumable: bool) -> Iterator[StageAttempt]:
        kept = key = None
        if resumable:
            key = hashlib.sha256(json.dumps([config_hash, inputs], sort_keys=True).encode()).hexdigest()[:16]
            kept = next((a for a in reversed(self._uncommitted(stage)) if self.read_text(f"{stage}/{a}/{RESUME_FILE}") == key), None)
        self._remove_uncommitted(stage, keep=kept)
        attempt = StageAttempt(self, stage, config_hash, inputs, attempt=kept)
        if key is not None and kept is None:
            attempt.write_atomic(RESUME_FILE, key.encode())
        try:
            yield attempt
        except OSError as exc:
            reason = storage_fault(exc)
            if reason is None:
                raise
            raise StorageError(f"{stage}: {reason} while writing {self.uri_of(attempt.dir)}; nothing was committed and the "
                               "previous commit is intact: rerun once the storage is back") from exc
        finally:
            try:
                if attempt.entry is None:
                    if not resumable and self._exists(attempt.dir):
                        self.fs.delete_dir(attempt.dir)
                else:
                    self._remove_uncommitted(stage)
            except OSError:
                pass  # storage is down: the stage's next attempt removes what is left
