"""What every stage entrypoint shares: argument parsing into the config, and joining Ray."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import pyarrow as pa
import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig
from ray.train import RunConfig as TrainRunConfig

from deepinterestgr.config import ConfigError, RayConfig, RunConfig, TrainerScaling, config_from_yaml, load_config
from deepinterestgr.errors import DataError, StorageError
from deepinterestgr.progress import progress
from deepinterestgr.storage.filesystem import storage_fault
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from ray_jobs.console import log_file, route_ray_logs

USER_ERRORS = (ConfigError, DataError, StorageError)
FOOTER_READERS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"


def arg_parser(stage: str, description: str | None = None) -> argparse.ArgumentParser:
    """`--config FILE`, `--set key=value` (repeatable) and `--run URI` (= --set storage.uri=URI)."""
    parser = argparse.ArgumentParser(prog=f"dig {stage}", description=description or f"Run the '{stage}' stage.")
    parser.add_argument("--config", help="YAML run config (without one: the config.yaml of the run that --run names, "
                                          "else every key's code default, docs/config-reference.md; the demo is "
                                          "configs/default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--run", help="run storage URI: a local folder or s3://bucket/prefix")
    return parser


def config_from(args: argparse.Namespace, *overrides: str, announce: bool = True) -> RunConfig:
    """The run config of parsed `arg_parser` arguments; `overrides` come after the user's `--set`s.

    Without `--config`, a `--run` that already holds a config.yaml starts from it: a later stage (or a rerun)
    of a run then uses the settings its earlier stages were made with, not the code defaults."""
    sets = list(args.set) + ([f"storage.uri={args.run}"] if args.run else []) + list(overrides)
    if args.config is None and args.run:
        # Only the storage keys are needed to find the run (an S3 endpoint, say); the rest may need the file.
        store = RunStore(load_config(None, [s for s in sets if s.startswith("storage.")]))
        saved = store.read_text("config.yaml")
        if saved is not None:
            if announce:
                print(f"config: {store.uri}/config.yaml, the run's own (--config FILE starts from another)",
                      file=sys.stderr)
            return config_from_yaml(saved, f"{store.uri}/config.yaml", sets)
    return load_config(args.config, sets)


def parse_config(stage: str, argv: list[str] | None) -> RunConfig:
    """The run config from a stage's command line (see `arg_parser`)."""
    return config_from(arg_parser(stage).parse_args(argv))


# The worker setup hook, by name: each worker imports it at start (see ray_jobs/worker_setup.py).
QUIET_TRAIN_CLEANER = "ray_jobs.worker_setup.quiet_train_cleaner"


def runtime_env(ray_cfg: RayConfig) -> dict:
    """The job's runtime environment: Ray Data's Parquet footer readers (`ray.parquet_footer_readers`),
    and Ray Train's cleaner quietened on a local cluster without the dashboard."""
    env: dict = {}
    if ray_cfg.parquet_footer_readers is not None:
        # The driver builds some readers itself, the job's workers the rest.
        os.environ[FOOTER_READERS_ENV] = str(ray_cfg.parquet_footer_readers)
        env["env_vars"] = {FOOTER_READERS_ENV: str(ray_cfg.parquet_footer_readers)}
    if ray_cfg.address is None and not ray_cfg.dashboard:
        env["worker_process_setup_hook"] = QUIET_TRAIN_CLEANER
    return env


def start_ray(cfg: RunConfig) -> None:
    """Join the configured cluster, or start a local one (what `ray job submit` and a laptop both need)."""
    if ray.is_initialized():
        return
    ray.init(
        address=cfg.ray.address,
        num_cpus=cfg.ray.num_cpus,
        ignore_reinit_error=True,
        logging_level=logging.WARNING,
        include_dashboard=cfg.ray.dashboard,
        runtime_env=runtime_env(cfg.ray) or None,
    )


def up_to_date(store: RunStore, stage: str, config_hash: str, inputs: dict[str, str]) -> ManifestEntry | None:
    """The stage's committed entry when it was committed with this config and these inputs (a rerun then
    skips the stage, and says so); None when the stage must run.

    Every stage is: `up_to_date` -> `store.stage(...)` (a private attempt) -> write -> `attempt.commit`
    (manifest and report.json) -> `stage_main` for the command line.
    """
    if not store.is_fresh(stage, config_hash, inputs):
        return None
    entry = store.require(stage)
    print(f"{stage}: up to date in {store.uri} (attempt {entry.attempt}); skipped", file=sys.stderr)
    return entry


def stage_main(stage: str, run, argv: list[str] | None) -> int:
    """Parse the config, open the run, join Ray, call `run(cfg, store)` and print its report as JSON.

    `run` returns the stage's ManifestEntry, or an object holding it as `.entry`.

    User errors (config, data, storage) exit 2 with one line naming the problem. Ray's INFO logs go
    to the run's log file, not the console (`ray_jobs.console`).
    """
    try:
        cfg = parse_config(stage, argv)
        store = RunStore(cfg)
        with store.lease(stage):
            store.save_config(cfg)
            route_ray_logs(log_file(store, stage))
            start_ray(cfg)
            result = run(cfg, store)
        report = getattr(result, "entry", result).report
    except USER_ERRORS as exc:
        print(f"dig {stage}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        reason = storage_fault(exc)
        if reason is None:
            raise
        print(f"dig {stage}: error: {reason}; what was committed before is intact: rerun once the storage is back", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str))
    return 0


def to_table(dataset: ray.data.Dataset) -> pa.Table:
    """Collect a (small) Ray Dataset on the driver as one Arrow table."""
    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))


def collect(dataset: ray.data.Dataset, label: str, unit: str, total: int | None = None) -> pa.Table:
    """Run a (small) Ray Dataset and gather it on the driver as one Arrow table, showing progress
    (Ray Data's own is in the log file off a terminal)."""
    tables = []
    with progress(total, label, unit) as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            tables.append(batch)
            bar.update(batch.num_rows)
    return pa.concat_tables(tables) if tables else to_table(dataset)


def train_run_config(cfg: RunConfig, name: str, storage_path: str, fs, score: str, order: str,
                     max_failures: int) -> TrainRunConfig:
    """Where a trainer keeps its checkpoints (all kept, ranked by `score`), its restarts and log level."""
    return TrainRunConfig(
        name=name, storage_path=storage_path, storage_filesystem=fs,
        checkpoint_config=CheckpointConfig(checkpoint_score_attribute=score, checkpoint_score_order=order),
        failure_config=FailureConfig(max_failures=max_failures),
        logging_config=LoggingConfig(log_level=cfg.ray.train_log_level),
    )


def accelerator(num_gpus: float) -> str:
    """The torch device of a Ray Data actor that asks for `num_gpus` (Ray sets its CUDA_VISIBLE_DEVICES)."""
    return "cuda" if num_gpus > 0 else "cpu"


def scaling_config(section: TrainerScaling) -> ScalingConfig:
    """Ray Train scaling from a training stage's config section."""
    return ScalingConfig(num_workers=section.num_workers, use_gpu=section.use_gpu,
                         resources_per_worker={"CPU": section.cpus_per_worker})
