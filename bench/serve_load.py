"""Load test of the Ray Serve endpoint over loopback: latency, throughput, errors, heavy requests, soak.

    python bench/serve_load.py --run runs/ml100k [--requests 200] [--concurrency 1 8 32] [--k 10]
    python bench/serve_load.py --run runs/ml100k --soak 300          # + S seconds of mixed load
    python bench/serve_load.py --run runs/ml100k --set serve.ingress=direct   # replicas answer HTTP themselves
    python bench/serve_load.py --url http://127.0.0.1:8000 --run runs/ml100k   # an endpoint already up

With --run only, it starts Serve on 127.0.0.1 itself (with `--set serve.ingress=direct`, requests go
straight to the replica's own port: Ray Serve's direct ingress, no proxy hop) and measures, in one run:
- every concurrency with dynamic batching on (serve.max_batch_size) and off (max_batch_size=1);
- `mixed`: ordinary requests alone, then with `--heavy-share` of heavy ones (`exclude_history` over a
  `--heavy-history`-item history) at `--mixed-concurrency`; `heavy_p99_ratio` is the ordinary
  requests' p99 with heavy ones beside them over their p99 alone (target <= 2);
- `soak` (with --soak S): S seconds of valid, invalid and heavy requests, with one hot reload of the
  model half-way; counts 5xx answers and dropped requests (no answer), and the replica's RSS at the
  start and the end (from GET /v1/model). Through the proxy in either mode: the reload redeploys the
  replica, and a redeployed replica answers directly on another port.
Request bodies are real users' histories from the run. Every request loop is bounded in count and time.
Prints one JSON line.
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

from deepinterestgr.config import load_config
from deepinterestgr.storage.runstore import RunStore


@dataclass
class Shot:
    """One request to send: what kind it is (for the per-kind figures), its body and content type."""

    kind: str
    data: bytes
    content_type: str = "application/json"


def valid_shot(body: dict, kind: str = "ordinary") -> Shot:
    return Shot(kind, json.dumps(body).encode())


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds or [0.0]) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)}


async def drive(url: str, shots: list[Shot], concurrency: int, deadline_s: float, cycle: bool = False) -> dict:
    """Send the shots with at most `concurrency` in flight (each once, or round and round until the
    deadline with `cycle`); latency per kind, counts per "kind status", 5xx and dropped (no answer) counted."""
    latencies: dict[str, list[float]] = {}
    statuses: dict[str, int] = {}
    dropped = 0
    stop_at = time.perf_counter() + deadline_s
    queue = list(shots)
    rng = random.Random(0)

    async def client(session):
        nonlocal dropped
        while time.perf_counter() < stop_at and (cycle or queue):
            shot = rng.choice(shots) if cycle else queue.pop()
            began = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/recommend", data=shot.data,
                                        headers={"content-type": shot.content_type}) as answer:
                    await answer.read()
                    key = f"{shot.kind} {answer.status}"
                    statuses[key] = statuses.get(key, 0) + 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                dropped += 1
                continue
            latencies.setdefault(shot.kind, []).append(time.perf_counter() - began)

    began = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    wall = time.perf_counter() - began
    done = sum(len(v) for v in latencies.values())
    out = {"requests": done, "dropped": dropped, "statuses": statuses,
           "errors_5xx": sum(n for s, n in statuses.items() if s.split()[1].startswith("5")),
           "throughput_rps": round(done / wall, 1), **percentiles(latencies.get("ordinary", []))}
    out.update({f"{kind}_{key}": value for kind, seconds in latencies.items() if kind != "ordinary"
                for key, value in percentiles(seconds).items()})
    return out


def invalid_shots(items: list[str]) -> list[Shot]:
    """Requests that must get a 4xx: each class the API refuses."""
    return [
        Shot("invalid", b"{not json"),
        Shot("invalid", b'{"history": ["caf\xe9"]}'),
        Shot("invalid", json.dumps({"history": items[:2]}).encode(), "text/plain"),
        Shot("invalid", json.dumps({"user_id": "nobody-at-all"}).encode()),
        Shot("invalid", json.dumps({"history": items[:2], "k": 0}).encode()),
        Shot("invalid", json.dumps({"history": ["ghost-item"]}).encode()),
    ]


async def replica_rss_mb(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/model") as answer:
        return (await answer.json())["replica_rss_mb"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run with committed tokenize and sft stages")
    parser.add_argument("--config", help="the run's YAML config (for storage settings)")
    parser.add_argument("--url", help="drive this endpoint instead of starting one")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--heavy-share", type=float, default=0.05, help="share of heavy requests in the mixed case")
    parser.add_argument("--heavy-history", type=int, default=1000, help="history length of a heavy request")
    parser.add_argument("--mixed-concurrency", type=int, default=8)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of mixed load with a hot reload (0: skip)")
    parser.add_argument("--deadline-s", type=float, default=120.0, help="per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="config override (serve.* keys)")
    args = parser.parse_args()

    cfg = load_config(args.config, [f"storage.uri={args.run}", *args.set])
    store = RunStore(cfg)
    table = store.read_table("prepare", "interactions").sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    histories: dict[str, list[str]] = {}
    for user, item in zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist()):
        histories.setdefault(user, []).append(item)
    catalog = store.read_table("tokenize", "sids").column("item_id").to_pylist()
    rng = random.Random(args.seed)
    users = rng.choices(sorted(histories), k=args.requests)
    ordinary = [valid_shot({"history": histories[u][-cfg.sft.max_items:], "k": args.k}) for u in users]
    heavy_history = rng.sample(catalog, min(args.heavy_history, len(catalog), cfg.serve.max_history))
    heavy = valid_shot({"history": heavy_history, "k": args.k, "exclude_history": True}, "heavy")
    every = max(1, round(1 / args.heavy_share)) if args.heavy_share > 0 else 0
    mixed = [heavy if every and i % every == every - 1 else shot for i, shot in enumerate(ordinary)]

    out: dict = {"bench": "serve_load", "run": args.run, "k": args.k, "requests": args.requests,
                 "heavy_history": len(heavy_history), "heavy_share": args.heavy_share}
    if args.url:
        out["external"] = {f"c{c}": asyncio.run(drive(args.url, ordinary, c, args.deadline_s)) for c in args.concurrency}
        print(json.dumps(out))
        return 0

    import ray
    from ray import serve

    from serving.app import build_app, direct_urls, ingress_env

    os.environ.update(ingress_env(cfg))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.serve.port})
    proxy = f"http://127.0.0.1:{cfg.serve.port}"
    out["ingress"] = cfg.serve.ingress
    try:
        for label, batch in (("no_batching", 1), ("batching", cfg.serve.max_batch_size)):
            run_cfg = cfg.model_copy(deep=True)
            run_cfg.serve.max_batch_size = batch
            serve.run(build_app(run_cfg), name="bench", route_prefix="/")
            url = direct_urls("bench", "127.0.0.1")[0] if cfg.serve.ingress == "direct" else proxy
            asyncio.run(drive(url, ordinary[:10], 2, args.deadline_s))
            out[label] = {f"c{c}": asyncio.run(drive(url, ordinary, c, args.deadline_s)) for c in args.concurrency}
        top = max(args.concurrency)
        out[f"batching_speedup_c{top}"] = round(out["batching"][f"c{top}"]["throughput_rps"] / out["no_batching"][f"c{top}"]["throughput_rps"], 2)

        c = args.mixed_concurrency
        alone = asyncio.run(drive(url, ordinary, c, args.deadline_s))
        together = asyncio.run(drive(url, mixed, c, args.deadline_s))
        out["mixed"] = {"ordinary_alone": alone, "with_heavy": together,
                        "heavy_p99_ratio": round(together["p99_ms"] / max(alone["p99_ms"], 1e-9), 2)}

        if args.soak > 0:
            shots = ordinary + invalid_shots(catalog) * max(1, len(ordinary) // 60) + [heavy] * max(1, len(ordinary) // 20)
            rss_start = asyncio.run(replica_rss_mb(proxy))

            async def soak() -> dict:
                load = asyncio.create_task(drive(proxy, shots, c, args.soak, cycle=True))
                await asyncio.sleep(args.soak / 2)
                reloaded = cfg.model_copy(deep=True)
                reloaded.serve.batch_wait_timeout_s = cfg.serve.batch_wait_timeout_s + 0.001  # new user_config: a fresh model
                await asyncio.to_thread(serve.run, build_app(reloaded), name="bench", route_prefix="/")
                return await load

            answer = asyncio.run(soak())
            answer.update({"seconds": args.soak, "hot_reloads": 1, "rss_mb_start": rss_start,
                           "rss_mb_end": asyncio.run(replica_rss_mb(proxy))})
            out["soak"] = answer
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
