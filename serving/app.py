"""The Ray Serve application: one deployment that answers HTTP and holds the model, with dynamic batching.

    serve run serving.app:app_builder config=configs/default.yaml run=runs/default
    serve deploy serving/serve_config.yaml        (on a cluster; see the README)

A replica keeps a `Predictor` loaded. Two ways to a newer model, both loading it beside
the old one and swapping it in with one assignment, so requests in flight finish on the model they
started with: a new `user_config` (another run or stage; `serve deploy` applies it in place), and a
watcher that polls the run's manifest every `serve.reload_interval_s` and picks up a newer commit of
the served stage (a rerun of `dig sft`, or `dig grpo`).
"""


import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
import ray
from ray import serve

from actors.predictor import Predictor
from deepinterestgr.config import ConfigError, RunConfig, load_config
from deepinterestgr.recommender.request import RecommendRequest, RequestError
from deepinterestgr.storage.filesystem import pinned
from deepinterestgr.storage.runstore import RunStore
from serving.bodies import read_json_body

api = FastAPI(title="DeepInterestGR", description="Generative recommendation with deep interests")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment
@serve.ingress(api)
class Recommender:
    """HTTP and the model in one replica (one hop per request); `recommend` calls are batched.

    Requests are parsed and checked on the replica's event loop, and every call of the batched
    method shares one beam search per beam width, run off the loop so the next batch gathers meanwhile.
    """

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
    async def _recommend_batch(self, queries: list[RecommendRequest]) -> list[dict | RequestError]:
        predictor = self.predictor
        return await asyncio.to_thread(predictor.recommend, queries)

    @api.post("/v1/recommend")
    async def recommend(self, request: Request) -> JSONResponse:
        began = time.perf_counter()
        limits = self.cfg.serve
        try:
            parsed = RecommendRequest.parse(await read_json_body(request, limits.max_body_bytes), limits)
        except RequestError as error:
            return _error(error.status, str(error))
        answer = await self._recommend_batch(parsed)
        if isinstance(answer, RequestError):
            return _error(answer.status, str(answer))
        answer["latency_ms"] = round((time.perf_counter() - began) * 1000, 2)
        return JSONResponse(answer)

    @api.get("/v1/items/{item_id}")
    async def item(self, item_id: str) -> JSONResponse:
        try:
            return JSONResponse(self.predictor.item(item_id))
        except RequestError as error:
            return _error(error.status, str(error))

    @api.get("/v1/model")
    async def model(self) -> dict:
        return self.predictor.describe()

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}


def ingress_env(cfg: RunConfig) -> dict[str, str]:
    """The environment Ray Serve's processes must start with for `serve.ingress` (empty for the proxy).

    Direct replicas take ports from `serve.direct_port` on, with room for every replica twice over:
    a redeploy starts the new replicas before the old ones release their ports."""
    if cfg.serve.ingress != "direct":
        return {}
    s = cfg.serve
    last = s.direct_port + 2 * (s.max_replicas if s.autoscale else s.num_replicas) + 1
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(s.direct_port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(min(last, 65535))}


def direct_urls(app_name: str, host: str) -> list[str]:
    """The HTTP addresses where the app's replicas answer directly (empty unless direct ingress is on);
    `host` is `serve.host`, where they listen (the node's address when it is 0.0.0.0).

    Asks the Serve controller for the app's target groups: Ray has no public call for this yet."""
    from ray.serve.context import _get_global_client

    groups = ray.get(_get_global_client()._controller.get_target_groups.remote(app_name))
    return sorted({f"http://{t.ip if host == '0.0.0.0' else host}:{t.port}" for g in groups for t in g.targets
                   if g.protocol.value == "HTTP" and t.name.startswith("SERVE_REPLICA")})


def build_app(cfg: RunConfig):
    """The application for a run config: replica count, batching and resources come from `cfg.serve`."""
    cfg = pinned(cfg)
    s = cfg.serve
    scaling = (
        {"autoscaling_config": {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                "target_ongoing_requests": s.target_ongoing_requests}}
        if s.autoscale else {"num_replicas": s.num_replicas}
    )
    return Recommender.options(
        user_config=cfg.model_dump(mode="json"),
        max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica},
        **scaling,
    ).bind()


def app_builder(args: dict):
    """`serve run` / `serve deploy` entry: args `config` (YAML path), `run` (URI), `set` (list of key=value)."""
    overrides = list(args.get("set") or [])
    if args.get("run"):
        overrides.append(f"storage.uri={args['run']}")
    try:
        return build_app(load_config(args.get("config"), overrides))
    except ConfigError as error:
        raise ValueError(f"serving config: {error}") from None
