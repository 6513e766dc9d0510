"""Mining throughput with the local backend (SmolLM2): batched vs one prompt at a time, the grouped attention
kernel (`mine.miners[].attention: grouped`) vs transformers' sdpa on the same batches, the prompts' shared
opening computed once per batch vs in every row, and the full Ray Data stage vs the bare backend, on the
same synthetic items in one run.

    python bench/mine_bench.py [--items 32] [--batch-size 16] [--cpus 2] [--max-new-tokens 128]

Prints one JSON line. "bare" is LocalGenerator.generate called in this process with torch on
`--cpus` threads; "stage" is ray_jobs.llm_batch.run_llm_task (Ray Data actor pool with `--cpus` CPUs,
model load, parsing and the result cache included) on a fresh run folder.
"""

import argparse
import json
import logging
import sys
import tempfile
import time

import ray
import torch

from actors.generators import LocalGenerator
from deepinterestgr.config import GeneratorConfig, load_config
from deepinterestgr.data.registry import load_raw
from deepinterestgr.interests.parsing import parse_descriptors
from deepinterestgr.interests.requests import item_request
from deepinterestgr.interests.schemas import descriptors_schema
from deepinterestgr.prompts import load_template
from deepinterestgr.storage.result_cache import ResultCache
from deepinterestgr.storage.runstore import RunStore
from ray_jobs.llm_batch import run_llm_task


SCHEMA = descriptors_schema(8)  # what `dig mine` decodes items under


def timed(generator: LocalGenerator, chats: list, batch_size: int) -> tuple[dict, list[str]]:
    """Figures of answering `chats` in batches of `batch_size` under the mining schema, and the answers."""
    started, outputs = time.perf_counter(), []
    for start in range(0, len(chats), batch_size):
        part = chats[start:start + batch_size]
        outputs += generator.generate(part, [0.0] * len(part), [0] * len(part), [json.dumps(SCHEMA, sort_keys=True)] * len(part))
    seconds = time.perf_counter() - started
    tokens = sum(o["completion_tokens"] for o in outputs)
    figures = {"items_per_s": round(len(chats) / seconds, 3), "tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 1)}
    return figures, [o["text"] for o in outputs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    cfg = load_config(None, [])
    templates = load_template(cfg.mine.prompts)
    items = load_raw(cfg.data, cfg.seed).items.to_pylist()[: args.items]
    chats = [item_request(templates, i["title"], i["description"], None, 8, 768).messages for i in items]

    torch.set_num_threads(args.cpus)
    generator = LocalGenerator("SmolLM2-135M-Instruct", args.max_new_tokens)
    one, _ = timed(generator, chats, 1)
    batched, answers = timed(generator, chats, args.batch_size)
    del generator
    stock, stock_answers = timed(LocalGenerator("SmolLM2-135M-Instruct", args.max_new_tokens, attention="sdpa"), chats, args.batch_size)
    unshared, unshared_answers = timed(LocalGenerator("SmolLM2-135M-Instruct", args.max_new_tokens, min_shared_tokens=1 << 30),
                                       chats, args.batch_size)

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    gen = GeneratorConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, num_cpus=args.cpus)
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(load_config(None, [f"storage.uri={folder}"]))
        requests = [{"id": i["item_id"], "messages": chat, "truncated": False} for i, chat in zip(items, chats)]
        started = time.perf_counter()
        outcome = run_llm_task("items", requests, lambda text: parse_descriptors(text, 8), gen,
                               ResultCache(store, "mine", "bench"), cfg.seed, parse_retries=0, flush_rows=64, schema=SCHEMA)
        stage_seconds = time.perf_counter() - started
    stage = {"items_per_s": round(len(items) / stage_seconds, 3), "seconds": round(stage_seconds, 1),
             "failure_rate": outcome.stats["failure_rate"]}
    print(json.dumps({
        "bench": "mine_throughput", "model": "SmolLM2-135M-Instruct", "items": len(items), "batch_size": args.batch_size,
        "cpus": args.cpus, "max_new_tokens": args.max_new_tokens, "one_at_a_time": one, "batched": batched,
        "batching_speedup": round(batched["items_per_s"] / one["items_per_s"], 2), "batched_sdpa": stock,
        "grouped_speedup": round(batched["items_per_s"] / stock["items_per_s"], 2),
        "grouped_same_answers": sum(a == b for a, b in zip(answers, stock_answers)), "batched_unshared_opening": unshared,
        "shared_opening_speedup": round(batched["items_per_s"] / unshared["items_per_s"], 2),
        "shared_opening_same_answers": sum(a == b for a, b in zip(answers, unshared_answers)), "stage": stage,
        "stage_share_of_bare": round(stage["items_per_s"] / batched["items_per_s"], 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
