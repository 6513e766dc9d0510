"""What every stage entrypoint shares: argument parsing into the config, and joining Ray."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import pyarrow as pa
import ray

from deepinterestgr.config import ConfigError, RunConfig, load_config
from deepinterestgr.errors import DataError, StorageError

USER_ERRORS = (ConfigError, DataError, StorageError)


def parse_config(stage: str, argv: list[str] | None) -> RunConfig:
    """`--config FILE`, `--set key=value` (repeatable) and `--run URI` (= --set storage.uri=URI)."""
    parser = argparse.ArgumentParser(prog=f"dig {stage}", description=f"Run the '{stage}' stage.")
    parser.add_argument("--config", help="YAML run config (default: the embedded default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--run", help="run storage URI: a local folder or s3://bucket/prefix")
    args = parser.parse_args(argv)
    overrides = list(args.set) + ([f"storage.uri={args.run}"] if args.run else [])
    return load_config(args.config, overrides)


def start_ray(cfg: RunConfig) -> None:
    """Join the configured cluster, or start a local one (what `ray job submit` and a laptop both need)."""
    if ray.is_initialized():
        return
    ray.init(
        address=cfg.ray.address,
        num_cpus=cfg.ray.num_cpus,
        ignore_reinit_error=True,
        logging_level=logging.WARNING,
        include_dashboard=False,
    )


def run_main(stage: str, argv: list[str] | None, body) -> int:
    """Parse the config, call `body(cfg)`, print its report as JSON; user errors exit 2 with one line."""
    try:
        cfg = parse_config(stage, argv)
        report = body(cfg)
    except USER_ERRORS as exc:
        print(f"dig {stage}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str))
    return 0


def to_table(dataset: ray.data.Dataset) -> pa.Table:
    """Collect a (small) Ray Dataset on the driver as one Arrow table."""
    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))
