"""One writer per run: a lease with an owner and a heartbeat, taken by every stage that writes.

Two jobs writing one run (a retried `ray job submit`, a second `dig pipeline` on a preemptible
node) would interleave attempts and commits. The lease is one small object, `<run>/_lease.json`
({owner, command, acquired_at, heartbeat_at}):

- local runs: an exclusive `flock` on `<run>/_lease.lock` guards read-decide-write of the lease file
  (written to a temporary name, then renamed);
- S3 runs: conditional PUTs: create with `If-None-Match: *`, renew and take over with `If-Match` on
  the ETag last seen, so two writers cannot both win.

The holder renews the heartbeat every `storage.lease_renew_s` from a thread. A second writer is refused
with the holder's name and the age of its heartbeat. A lease whose heartbeat is older than
`storage.lease_timeout_s`, or whose owner was a process on this machine that has exited, is taken over
(said on the console). A holder that finds its lease taken over commits nothing more (`check`).
Within one process the lease is re-entrant: the pipeline holds it across its stages.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

from deepinterestgr.config import StorageConfig
from deepinterestgr.errors import StorageError
from deepinterestgr.storage.filesystem import s3_endpoint_and_region

LEASE_FILE = "_lease.json"
LOCK_FILE = "_lease.lock"


@dataclass
class Holder:
    """Who holds a run's lease and how recently it said so."""

    owner: str
    command: str
    acquired_at: float
    heartbeat_at: float

    @property
    def host(self) -> str:
        return self.owner.split(":")[0]

    @property
    def pid(self) -> int:
        return int(self.owner.split(":")[1])

    def age(self) -> float:
        return max(0.0, time.time() - self.heartbeat_at)


def _process_gone(holder: Holder) -> bool:
    """True when the holder was a process on this machine that no longer runs."""
    if holder.host != socket.gethostname():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _LocalBackend:
    """The lease file under an exclusive flock: every read-decide-write is one critical section."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, LEASE_FILE)

    def transact(self, decide) -> object:
        """Call decide(current holder or None) under the lock; it returns (new holder or None to keep, result)."""
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, LOCK_FILE), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self._read()
                new, result = decide(current)
                if new is not None:
                    temporary = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
                    with open(temporary, "w", encoding="utf-8") as handle:
                        json.dump(asdict(new), handle)
                    os.replace(temporary, self.path)
                return result
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> Holder | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                return Holder(**json.load(handle))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # a torn or foreign file holds no lease

    def delete_if(self, owner: str) -> None:
        def decide(current):
            if current is not None and current.owner == owner:
                os.remove(self.path)
            return None, None

        self.transact(decide)


class _S3Backend:
    """The lease object under conditional PUTs (S3 and moto support If-None-Match and If-Match)."""

    def __init__(self, root: str, cfg: StorageConfig):
        import boto3
        from botocore.config import Config

        bucket, _, prefix = root.partition("/")
        self.bucket, self.key = bucket, f"{prefix}/{LEASE_FILE}".lstrip("/")
        endpoint, region = s3_endpoint_and_region(cfg)
        if endpoint and "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=region,
            config=Config(connect_timeout=cfg.s3_connect_timeout_s, read_timeout=cfg.s3_request_timeout_s,
                          retries={"max_attempts": cfg.s3_max_attempts, "mode": "standard"}))

    def _read(self) -> tuple[Holder | None, str | None]:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise
        try:
            return Holder(**json.loads(answer["Body"].read())), answer["ETag"]
        except (ValueError, TypeError):
            return None, answer["ETag"]

    def transact(self, decide) -> object:
        """As the local backend's, with the write conditional on the object being what was read; a lost
        race reads again and decides again."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._transact(decide)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"s3://{self.bucket}/{self.key}: the run's lease cannot be read or written ({exc})") from None

    def _transact(self, decide) -> object:
        from botocore.exceptions import ClientError

        for _ in range(5):
            current, etag = self._read()
            new, result = decide(current)
            if new is None:
                return result
            condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
            try:
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(asdict(new)).encode(), **condition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    continue
                raise
            return result
        raise StorageError(f"s3://{self.bucket}/{self.key}: the lease kept changing under five conditional writes")

    def delete_if(self, owner: str) -> None:
        current, _ = self._read()
        if current is not None and current.owner == owner:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


class RunLease:
    """This process's lease on one run (see the module docstring); use `hold()` as a context manager."""

    def __init__(self, root: str, uri: str, cfg: StorageConfig, command: str):
        self.uri, self.cfg, self.command = uri, cfg, command
        self.backend = _S3Backend(root, cfg) if urlparse(uri).scheme == "s3" else _LocalBackend(root)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.depth = 0
        self.lost: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _acquire(self) -> None:
        def decide(current: Holder | None):
            now = time.time()
            if current is None or current.owner == self.owner:
                return Holder(self.owner, self.command, now, now), None
            age = current.age()
            gone = _process_gone(current)
            if gone or age > self.cfg.lease_timeout_s:
                why = "its process has exited" if gone else f"no heartbeat for {age:.0f} s"
                return Holder(self.owner, self.command, now, now), f"taking over the lease of {current.owner} ({current.command}): {why}"
            raise StorageError(f"run {self.uri} is being written by {current.owner} ({current.command}, heartbeat {age:.0f} s ago): "
                               f"wait for it to finish; a writer silent for storage.lease_timeout_s={self.cfg.lease_timeout_s:g} s "
                               "is taken over")

        said = self.backend.transact(decide)
        if said:
            print(f"{self.command}: {said}", file=sys.stderr, flush=True)

    def _renew(self) -> None:
        def decide(current: Holder | None):
            if current is None or current.owner != self.owner:
                self.lost = current or Holder("nobody", "-", 0.0, 0.0)
                return None, None
            return Holder(self.owner, current.command, current.acquired_at, time.time()), None

        self.backend.transact(decide)

    def _beat(self) -> None:
        while not self._stop.wait(self.cfg.lease_renew_s):
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 (a storage hiccup: the next beat tries again)
                print(f"{self.command}: could not renew the lease on {self.uri}: {exc}", file=sys.stderr, flush=True)
            if self.lost is not None:
                return

    def check(self) -> None:
        """Raise StorageError when another writer took this lease over (nothing more may be committed)."""
        if self.lost is not None:
            raise StorageError(f"the lease on {self.uri} was taken over by {self.lost.owner} ({self.lost.command}): "
                               "this writer commits nothing more")

    def __enter__(self) -> RunLease:
        if self.depth == 0:
            self.lost = None
            self._acquire()
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, daemon=True, name="run-lease")
            self._thread.start()
        self.depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth == 0:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            if self.lost is None:
                try:
                    self.backend.delete_if(self.owner)
                except Exception as exc:  # noqa: BLE001 (storage down: the lease expires on its own)
                    print(f"{self.command}: could not release the lease on {self.uri} ({exc}); the next writer takes it "
                          f"over after storage.lease_timeout_s={self.cfg.lease_timeout_s:g} s", file=sys.stderr, flush=True)


_LEASES: dict[str, RunLease] = {}
_LEASES_LOCK = threading.Lock()


def run_lease(root: str, uri: str, cfg: StorageConfig, command: str) -> RunLease:
    """This process's lease object for a run (one per run URI, so holding it is re-entrant)."""
    with _LEASES_LOCK:
        if uri not in _LEASES:
            _LEASES[uri] = RunLease(root, uri, cfg, command)
        return _LEASES[uri]
