"""Resolving a run URI to a pyarrow filesystem (local or S3) the way boto3 reads its settings."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from urllib.parse import urlparse

from pyarrow import fs as pafs

from deepinterestgr.config import RunConfig, StorageConfig
from deepinterestgr.errors import StorageError


def s3_endpoint_and_region(cfg: StorageConfig) -> tuple[str | None, str]:
    """The S3 endpoint (None = AWS's) and region of `storage.s3_*`, else the environment as boto3 reads it."""
    endpoint = cfg.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = cfg.s3_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return endpoint, region


def resolve(uri: str, cfg: StorageConfig) -> tuple[pafs.FileSystem, str, str]:
    """Return (filesystem, root path inside it, display URI) for a local path or `s3://bucket/prefix`."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"storage.uri {uri!r} names no bucket")
        endpoint, region = s3_endpoint_and_region(cfg)
        kwargs: dict = {
            "region": region,
            "connect_timeout": cfg.s3_connect_timeout_s,
            "request_timeout": cfg.s3_request_timeout_s,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=cfg.s3_max_attempts),
        }
        # Explicit keys travel inside the pickled filesystem to Ray workers on other nodes; without
        # them each process falls back to the AWS default chain (instance roles on a cluster).
        if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
            kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
            kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
            kwargs["session_token"] = os.environ.get("AWS_SESSION_TOKEN")
        if endpoint:
            url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = url.netloc
            kwargs["scheme"] = url.scheme
        filesystem = pafs.S3FileSystem(**kwargs)
        root = f"{parsed.netloc}{parsed.path}".rstrip("/")
        try:
            info = filesystem.get_file_info(parsed.netloc)
        except OSError as exc:
            raise StorageError(f"cannot reach S3 for {uri} (endpoint {endpoint or 'AWS default'}): {exc}") from None
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"bucket {parsed.netloc!r} of storage.uri {uri} does not exist (endpoint {endpoint})")
        return filesystem, root, f"s3://{root}"
    if parsed.scheme not in ("", "file"):
        raise StorageError(f"storage.uri {uri!r}: only local paths and s3:// URIs are supported")
    root = str(Path(parsed.path if parsed.scheme == "file" else uri).expanduser().resolve())
    filesystem = pafs.LocalFileSystem()
    filesystem.create_dir(root, recursive=True)
    return filesystem, root, root


def storage_fault(exc: OSError) -> str | None:
    """What a storage failure was, in a few words (a full disk, an unreachable or failing object store),
    or None when `exc` is not a storage failure. Ray task errors wrapping one are recognised too."""
    text = str(exc)
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in text:
        return "no space left on the device"
    failing = [line.strip() for line in text.splitlines() if "AWS Error" in line or "curlCode" in line]
    if failing:
        return f"the object store failed ({failing[-1].split('; Details')[0][:240]})"
    return None


def pinned(cfg: RunConfig) -> RunConfig:
    """A copy of the config whose local storage path is absolute: Ray workers run in other folders."""
    if urlparse(cfg.storage.uri).scheme == "s3":
        return cfg
    copy = cfg.model_copy(deep=True)
    copy.storage.uri = str(Path(cfg.storage.uri.removeprefix("file://")).expanduser().resolve())
    return copy


def read_uri(uri: str, filesystem: pafs.FileSystem | None = None, timeout_s: float = 10.0) -> bytes:
    """Bytes of an http(s) URL, an s3:// object (through `filesystem` when given) or a local file."""
    import urllib.request

    if uri.startswith(("http://", "https://")):
        with urllib.request.urlopen(uri, timeout=timeout_s) as response:
            return response.read()
    if uri.startswith("s3://"):
        path = uri[len("s3://"):]
        if filesystem is None or not isinstance(filesystem, pafs.S3FileSystem):
            filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as handle:
            return handle.read()
    with open(uri.removeprefix("file://"), "rb") as handle:
        return handle.read()
