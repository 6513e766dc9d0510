"""Load test of the Ray Serve endpoint over loopback: p50/p95/p99 latency, throughput and errors.

    python bench/serve_load.py --run runs/ml100k [--requests 200] [--concurrency 1 8 32] [--k 10]
    python bench/serve_load.py --url http://127.0.0.1:8000 --run runs/ml100k   # an endpoint already up

With --run only, it starts Serve on 127.0.0.1 itself and measures every concurrency twice in one run,
with dynamic batching on (serve.max_batch_size) and off (max_batch_size=1, an in-place reconfigure),
and prints one JSON line. Request bodies are real users' histories from the run. Every request loop
is bounded in count and time.
"""

import argparse
import asyncio
import json
import random
import sys
import time

import aiohttp
import numpy as np

from deepinterestgr.config import load_config
from deepinterestgr.storage.runstore import RunStore


async def drive(url: str, bodies: list[dict], concurrency: int, deadline_s: float) -> dict:
    """Send every body once with at most `concurrency` in flight; latency per request, errors counted."""
    latencies, errors, queue = [], 0, list(bodies)
    stop_at = time.perf_counter() + deadline_s

    async def client(session):
        nonlocal errors
        while queue and time.perf_counter() < stop_at:
            body = queue.pop()
            began = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/recommend", json=body) as answer:
                    await answer.read()
                    if answer.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run with committed tokenize and sft stages")
    parser.add_argument("--config", help="the run's YAML config (for storage settings)")
    parser.add_argument("--url", help="drive this endpoint instead of starting one")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--deadline-s", type=float, default=120.0, help="per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = load_config(args.config, [f"storage.uri={args.run}", "serve.torch_threads=1"])
    table = RunStore(cfg).read_table("prepare", "interactions").sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    histories: dict[str, list[str]] = {}
    for user, item in zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist()):
        histories.setdefault(user, []).append(item)
    rng = random.Random(args.seed)
    users = rng.choices(sorted(histories), k=args.requests)
    bodies = [{"history": histories[u][-cfg.sft.max_items:], "k": args.k} for u in users]

    out: dict = {"bench": "serve_load", "run": args.run, "k": args.k, "requests": args.requests}
    if args.url:
        out["external"] = {f"c{c}": asyncio.run(drive(args.url, bodies, c, args.deadline_s)) for c in args.concurrency}
        print(json.dumps(out))
        return 0

    import ray
    from ray import serve

    from serving.app import build_app

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.serve.port})
    url = f"http://127.0.0.1:{cfg.serve.port}"
    try:
        for label, batch in (("batching", cfg.serve.max_batch_size), ("no_batching", 1)):
            run_cfg = cfg.model_copy(deep=True)
            run_cfg.serve.max_batch_size = batch
            serve.run(build_app(run_cfg), name="bench", route_prefix="/")
            asyncio.run(drive(url, bodies[:10], 2, args.deadline_s))
            out[label] = {f"c{c}": asyncio.run(drive(url, bodies, c, args.deadline_s)) for c in args.concurrency}
        top = max(args.concurrency)
        out[f"batching_speedup_c{top}"] = round(out["batching"][f"c{top}"]["throughput_rps"] / out["no_batching"][f"c{top}"]["throughput_rps"], 2)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
