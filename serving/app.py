"""The Ray Serve application: a FastAPI ingress and a recommender deployment with dynamic batching.

    serve run serving.app:app_builder config=configs/default.yaml run=runs/default
    serve deploy serving/serve_config.yaml        (on a cluster; see the README)

The recommender replica keeps a `Predictor` loaded. Two ways to a newer model, both loading it beside
the old one and swapping it in with one assignment, so requests in flight finish on the model they
started with: a new `user_config` (another run or stage; `serve deploy` applies it in place), and a
watcher that polls the run's manifest every `serve.reload_interval_s` and picks up a newer commit of
the served stage (a rerun of `dig sft`, or `dig grpo`).
"""


import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.predictor import Predictor, Query, RequestError
from deepinterestgr.config import ConfigError, RunConfig, load_config
from deepinterestgr.storage.filesystem import pinned
from deepinterestgr.storage.runstore import RunStore
from serving.schemas import RecommendRequest, describe_errors

api = FastAPI(title="DeepInterestGR", description="Generative recommendation with deep interests")


@serve.deployment
class Recommender:
    """Holds the model; `recommend` calls from all clients are batched into one beam search."""

    def __init__(self):
        self.predictor = None
        self.cfg: RunConfig | None = None
        self.watcher: asyncio.Task | None = None

    async def reconfigure(self, config: dict) -> None:
        """Serve calls this with the deployment's user_config at start and whenever it changes."""
        cfg = RunConfig.model_validate(config)
        fresh = await asyncio.to_thread(Predictor, cfg)
        self._recommend_batch.set_max_batch_size(cfg.serve.max_batch_size)
        self._recommend_batch.set_batch_wait_timeout_s(cfg.serve.batch_wait_timeout_s)
        self.cfg, self.predictor = cfg, fresh
        if self.watcher is None and cfg.serve.reload_interval_s > 0:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.serve.reload_interval_s)
            cfg, current = self.cfg, self.predictor
            try:
                entry = await asyncio.to_thread(RunStore(cfg).entry, current.stage)
                if entry is not None and entry.fingerprint != current.version:
                    fresh = await asyncio.to_thread(Predictor, cfg)
                    if self.cfg is cfg:
                        self.predictor = fresh
            except Exception as error:  # a storage hiccup must not stop the watcher or the replica
                print(f"model watcher: {error!r}; keeping {current.version}")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _recommend_batch(self, queries: list[Query]) -> list[dict | RequestError]:
        predictor = self.predictor
        # The beam search runs off the event loop, so the next batch can gather meanwhile.
        return await asyncio.to_thread(predictor.recommend, queries)

    async def recommend(self, query: Query) -> dict:
        answer = await self._recommend_batch(query)
        if isinstance(answer, RequestError):
            return {"error": str(answer), "status": answer.status}
        return answer

    def item(self, item_id: str) -> dict:
        try:
            return self.predictor.item(item_id)
        except RequestError as error:
            return {"error": str(error), "status": error.status}

    def describe(self) -> dict:
        return self.predictor.describe()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP in front of the recommender: parses and checks requests, times them, maps errors to 4xx."""

    def __init__(self, recommender: DeploymentHandle, max_k: int, max_history: int, max_body_bytes: int):
        self.recommender, self.max_k, self.max_history, self.max_body_bytes = recommender, max_k, max_history, max_body_bytes

    @api.post("/v1/recommend")
    async def recommend(self, request: Request) -> JSONResponse:
        began = time.perf_counter()
        body = await request.body()
        if len(body) > self.max_body_bytes:
            return _error(413, f"body is {len(body)} bytes; the limit is {self.max_body_bytes}")
        try:
            parsed = RecommendRequest.model_validate(json.loads(body))
        except json.JSONDecodeError as error:
            return _error(400, f"body is not valid JSON: {error}")
        except ValidationError as error:
            return _error(422, describe_errors(error))
        if parsed.k > self.max_k:
            return _error(422, f"k: {parsed.k} is above the maximum of {self.max_k}")
        if parsed.history is not None and len(parsed.history) > self.max_history:
            return _error(422, f"history: {len(parsed.history)} items is above the maximum of {self.max_history}")
        query = Query(parsed.k, parsed.user_id, parsed.history, parsed.exclude_history)
        answer = await self.recommender.recommend.remote(query)
        if "error" in answer:
            return _error(answer["status"], answer["error"])
        answer["latency_ms"] = round((time.perf_counter() - began) * 1000, 2)
        return JSONResponse(answer)

    @api.get("/v1/items/{item_id}")
    async def item(self, item_id: str) -> JSONResponse:
        answer = await self.recommender.item.remote(item_id)
        return _error(answer["status"], answer["error"]) if "error" in answer else JSONResponse(answer)

    @api.get("/v1/model")
    async def model(self) -> dict:
        return await self.recommender.describe.remote()

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}


def build_app(cfg: RunConfig):
    """The application for a run config: replica count, batching and resources come from `cfg.serve`."""
    cfg = pinned(cfg)
    s = cfg.serve
    scaling = (
        {"autoscaling_config": {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                "target_ongoing_requests": s.target_ongoing_requests}}
        if s.autoscale else {"num_replicas": s.num_replicas}
    )
    recommender = Recommender.options(
        user_config=cfg.model_dump(mode="json"),
        max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica},
        **scaling,
    ).bind()
    return Ingress.options(max_ongoing_requests=s.max_ongoing_requests, ray_actor_options={"num_cpus": 0}).bind(recommender, s.max_k, s.max_history, s.max_body_bytes)


def app_builder(args: dict):
    """`serve run` / `serve deploy` entry: args `config` (YAML path), `run` (URI), `set` (list of key=value)."""
    overrides = list(args.get("set") or [])
    if args.get("run"):
        overrides.append(f"storage.uri={args['run']}")
    try:
        return build_app(load_config(args.get("config"), overrides))
    except ConfigError as error:
        raise ValueError(f"serving config: {error}") from None
