"""`dig serve --run URI`: serve a trained run over HTTP with Ray Serve until interrupted."""

from __future__ import annotations

import os
import signal
import sys
import time

from ray import serve

from actors.predictor import model_stage
from deepinterestgr.storage.runstore import RunStore
from ray_jobs.common import USER_ERRORS, parse_config, start_ray
from serving.app import build_app, direct_urls, ingress_env

APP_NAME = "deepinterestgr"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config("serve", argv)
        store = RunStore(cfg)
        stage = model_stage(store, cfg.serve.model_stage)
        store.require(stage)
        store.require("tokenize")
    except USER_ERRORS as exc:
        print(f"dig serve: error: {exc}", file=sys.stderr)
        return 2
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    print(f"dig serve: starting the {stage} model of {store.uri} at {url}", file=sys.stderr)
    try:
        # Serve's processes read these when they start, so before the local cluster does.
        os.environ.update(ingress_env(cfg))
        start_ray(cfg)
        # Process managers (systemd, Kubernetes, `kill`) stop with SIGTERM: shut Serve down as on Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
        print(f"dig serve: ready at {url} (Ctrl-C or SIGTERM stops)\n"
              f"  curl -s {url}/v1/recommend -H 'content-type: application/json' -d '{{\"history\": [\"<item_id>\"], \"k\": 10}}'",
              file=sys.stderr)
        if cfg.serve.ingress == "direct":
            direct = direct_urls(APP_NAME, cfg.serve.host)
            print(f"dig serve: replicas answer directly at {', '.join(direct)}" if direct else
                  "dig serve: serve.ingress=direct is not in effect in this cluster (start it with "
                  "RAY_SERVE_ENABLE_DIRECT_INGRESS=1); serving through the proxy only", file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("dig serve: stopping", file=sys.stderr)
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
