"""`dig serve --run URI`: serve a trained run over HTTP with Ray Serve until interrupted.

The console keeps our lines and warnings; Ray Serve's own lines (one per request, controller and proxy
bookkeeping) go to `<run>/logs/serve/` (one file per Serve process) and the driver's to
`<run>/logs/serve.log`, for a run on local disk.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from ray import serve
from ray.serve.schema import LoggingConfig

from actors.predictor import model_stage
from deepinterestgr.storage.runstore import RunStore
from ray_jobs.common import USER_ERRORS, parse_config, start_ray
from ray_jobs.console import log_file, route_ray_logs
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
        # Serve's processes read these when they start, so before the local cluster does. Serve's processes
        # log to files only: on stderr every request would be a console line.
        os.environ.update(ingress_env(cfg))
        os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
        driver_log = log_file(store, "serve")
        route_ray_logs(driver_log)
        start_ray(cfg)
        serve_logs = driver_log.with_suffix("") if driver_log is not None else None
        logging_config = LoggingConfig(logs_dir=str(serve_logs)) if serve_logs is not None else None
        # Process managers (systemd, Kubernetes, `kill`) stop with SIGTERM: shut Serve down as on Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port}, logging_config=logging_config)
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", logging_config=logging_config)
        logs = f"; Serve's logs in {serve_logs}" if serve_logs is not None else ""
        print(f"dig serve: ready at {url} (Ctrl-C or SIGTERM stops){logs}\n"
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
