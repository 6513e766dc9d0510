"""The Ray Serve app over real HTTP on 127.0.0.1, serving a tiny randomly initialised compact model trained on a synthetic run."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import TINY_RUN, copy_of_tiny_run
from deepinterestgr.config import load_config
from deepinterestgr.recommender.artifacts import load_catalog, load_format, load_model
from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import sft

SERVE = ["serve.max_k=20", "serve.max_body_bytes=2048", "serve.batch_wait_timeout_s=0.05", "serve.reload_interval_s=1"]


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory, unused_port):
    from ray import serve

    from serving.app import build_app

    cfg, store = copy_of_tiny_run(tiny_run, tmp_path_factory.mktemp("run"), *SERVE)
    port = unused_port
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="dig-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}", cfg, store
    serve.shutdown()


def post(url, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{url}/v1/recommend", data=data, headers={"content-type": "application/json"}, timeout=60, **kwargs)


def test_recommend_by_user_and_by_history_agree_and_explain(served):
    url, cfg, store = served
    sids = store.read_table("tokenize", "sids")
    user = store.read_table("prepare", "interactions").sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    first = user.column("user_id")[0].as_py()
    history = [i for u, i in zip(user.column("user_id").to_pylist(), user.column("item_id").to_pylist()) if u == first]

    by_user = post(url, {"user_id": first, "k": 7})
    by_history = post(url, {"history": history, "k": 7})
    assert by_user.status_code == by_history.status_code == 200, by_user.text
    a, b = by_user.json(), by_history.json()
    assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]], "a user is their history"
    assert len(a["items"]) == 7 and len({i["item_id"] for i in a["items"]}) == 7
    scores = [i["score"] for i in a["items"]]
    assert scores == sorted(scores, reverse=True)
    sid_of = dict(zip(sids.column("item_id").to_pylist(), sids.column("sid").to_pylist()))
    assert all(i["sid"] == sid_of[i["item_id"]] and i["title"] and "interests" in i for i in a["items"])
    assert a["model_version"] == store.require("sft").fingerprint and a["latency_ms"] > 0

    # the served ranking is the library's beam search with the model's item-head weight
    catalog = load_catalog(store)
    fmt = load_format(store, "sft", catalog)
    assert fmt.item_weight == cfg.sft.item_score_weight > 0
    rows = [catalog.item_ids.index(i) for i in history]
    width = max(cfg.serve.beam_width, 7)
    local = beam_search(load_model(store, "sft"), [fmt.prompt(rows)], catalog.trie, fmt.vocab, width, width,
                        item_weight=fmt.item_weight)
    assert [i["item_id"] for i in a["items"]] == [catalog.item_ids[r] for r in local.items[0][:7]]
    assert scores == pytest.approx(local.scores[0][:7].tolist(), abs=1e-4)

    excluded = post(url, {"history": history, "k": 7, "exclude_history": True}).json()
    assert not {i["item_id"] for i in excluded["items"]} & set(history)


def test_concurrent_requests_are_batched_without_changing_answers(served):
    url, _, store = served
    items = store.read_table("tokenize", "sids").column("item_id").to_pylist()
    bodies = [{"history": items[i : i + 1 + i % 4], "k": 5} for i in range(16)]
    alone = [post(url, body).json() for body in bodies]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda body: post(url, body).json(), bodies))
    for one, many in zip(alone, together):
        assert [i["item_id"] for i in one["items"]] == [i["item_id"] for i in many["items"]]
        assert [i["score"] for i in one["items"]] == pytest.approx([i["score"] for i in many["items"]], abs=1e-4)


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    ({"k": 5}, 422, "exactly one of user_id or history"),
    ({"user_id": "u", "history": ["x"]}, 422, "exactly one of user_id or history"),
    ({"history": ["x"], "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"history": ["x"], "k": 21}, 422, "above the maximum of 20"),
    ({"history": ["x"], "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"history": "x"}, 422, "history: Input should be a valid list"),
    ({"history": []}, 422, "history is empty"),
    ({"history": ["nope", "nada"]}, 422, "all 2 item ids are unknown"),
    ({"user_id": "nobody"}, 404, "unknown user_id 'nobody'"),
    ({"history": ["x" * 3000]}, 413, "limit is 2048"),
    ('{"history": ["caf\xe9"]}'.encode("latin-1"), 400, "not UTF-8"),
    (b'{"k": ' + b"9" * 5000 + b"}", 413, "limit is 2048"),
    (b"[" * 1000 + b"]" * 1000, 400, "JSON"),
    (b'{"history": ["x"], "k": 1e400}', 422, "k:"),
    (b"", 400, "not valid JSON"),
])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(served, body, status, message):
    url, _, _ = served
    answer = post(url, body)
    assert answer.status_code == status and message in answer.json()["error"], answer.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_declared_json_gets_415(served, content_type):
    url, _, _ = served
    headers = {"content-type": content_type} if content_type else {}
    answer = requests.post(f"{url}/v1/recommend", data=b'{"history": ["x"]}', headers=headers, timeout=60)
    assert answer.status_code == 415 and "application/json" in answer.json()["error"], answer.text
    charset = requests.post(f"{url}/v1/recommend", data=b'{"user_id": "nobody"}', timeout=60,
                            headers={"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 404, "parameters after the media type are fine"


def test_a_streamed_body_is_answered_413_at_the_limit_before_it_ends(served):
    import socket
    from urllib.parse import urlparse

    url, _, _ = served
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as conn:
        # chunked, no content-length: the server must count while reading; the body never ends
        conn.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        for _ in range(4):
            conn.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
        answer = conn.recv(4096)
        while not answer.endswith(b"}"):
            more = conn.recv(4096)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 413") and b"2048" in answer, answer[:300]


def test_unknown_history_items_are_ignored_and_reported_and_lookups_work(served):
    url, _, store = served
    item = store.read_table("tokenize", "sids").column("item_id")[0].as_py()
    answer = post(url, {"history": ["ghost", item], "k": 3})
    assert answer.status_code == 200 and answer.json()["ignored_items"] == ["ghost"]
    looked_up = requests.get(f"{url}/v1/items/{item}", timeout=30)
    assert looked_up.status_code == 200 and looked_up.json()["item_id"] == item and looked_up.json()["title"]
    assert requests.get(f"{url}/v1/items/ghost", timeout=30).status_code == 404
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    model = requests.get(f"{url}/v1/model", timeout=30).json()
    assert model["stage"] == "sft" and model["sid_levels"] == list(load_catalog(store).trie.sizes)
    assert model["model_version"] == store.require("sft").fingerprint


def test_hot_reload_swaps_in_a_newer_commit_without_failing_requests_in_flight(served):
    url, cfg, store = served
    item = store.read_table("tokenize", "sids").column("item_id")[0].as_py()
    old = store.require("sft").fingerprint
    statuses, versions, stop = [], [], threading.Event()

    def hammer():
        while not stop.is_set() and len(statuses) < 2000:
            answer = post(url, {"history": [item], "k": 3})
            statuses.append(answer.status_code)
            versions.append(answer.json().get("model_version"))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        retrained = load_config(None, TINY_RUN + SERVE + [f"storage.uri={cfg.storage.uri}", "sft.lr=0.002"])
        new = sft.run(retrained, RunStore(retrained)).fingerprint
        deadline = time.time() + 90
        while time.time() < deadline and (not versions or versions[-1] != new):
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert new != old and versions[0] == old and versions[-1] == new, "the watcher swapped the model in"
    assert set(statuses) == {200}, "no request failed during the swap"


def test_serve_deploy_config_validates_and_its_builder_reads_config_and_run(served):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    _, cfg, store = served
    schema = ServeDeploySchema.model_validate(yaml.safe_load(open("serving/serve_config.yaml")))
    app = schema.applications[0]
    assert app.import_path == "serving.app:app_builder"
    from serving.app import app_builder

    built = app_builder({**app.args, "run": cfg.storage.uri, "set": app.args["set"] + ["serve.max_k=7"]})
    recommender = built._bound_deployment
    assert recommender.user_config["serve"]["max_k"] == 7, "the overrides reach the deployment"
    assert recommender.user_config["storage"]["uri"] == cfg.storage.uri
    assert recommender._deployment_config.autoscaling_config.max_replicas == 8, "serve_config.yaml's set list applied"
    with pytest.raises(ValueError, match="serve.max_k"):
        app_builder({"config": app.args["config"], "set": ["serve.max_k=0"]})


def test_dig_serve_answers_http_from_a_trained_run_until_terminated(served, tmp_path):
    """`dig serve` in its own local cluster, with direct ingress: the replica answers on its own port
    exactly as through the proxy."""
    import re
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port

    _, cfg, store = served
    port, direct_port, log = free_port(), free_port(), tmp_path / "serve.log"
    dig = str(Path(sys.executable).with_name("dig"))
    user = store.read_table("prepare", "interactions").column("user_id")[0].as_py()
    with open(log, "w") as stderr:
        # its own local Ray cluster ("local"), as on a laptop, beside the test session's
        process = subprocess.Popen([dig, "serve", "--run", cfg.storage.uri, "--set", f"serve.port={port}",
                                    "--set", "ray.address=local", "--set", "ray.num_cpus=1",
                                    "--set", "serve.ingress=direct", "--set", f"serve.direct_port={direct_port}"],
                                   stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        try:
            deadline, answer = time.time() + 240, None
            while time.time() < deadline and process.poll() is None and "ready at" not in log.read_text():
                time.sleep(1)
            answer = post(f"http://127.0.0.1:{port}", {"user_id": user, "k": 4})
            assert answer.status_code == 200 and len(answer.json()["items"]) == 4
            direct = re.search(r"replicas answer directly at (http://127\.0\.0\.1:(\d+))", log.read_text())
            assert direct and direct_port <= int(direct[2]) <= direct_port + 3, log.read_text()[-2000:]
            straight = post(direct[1], {"user_id": user, "k": 4})
            assert straight.status_code == 200 and straight.json()["items"] == answer.json()["items"]
            assert post(direct[1], {"user_id": user, "k": 0}).status_code == 422, "the same validation"
        finally:
            process.send_signal(signal.SIGTERM)  # as a process manager stops it; Ctrl-C takes the same path
            process.wait(timeout=120)
    text = log.read_text()
    assert process.returncode == 0 and f"ready at http://127.0.0.1:{port}" in text and "stopping" in text, text[-2000:]
    serve_logs = Path(cfg.storage.uri) / "logs" / "serve"
    kept = "".join(p.read_text(errors="replace") for p in serve_logs.rglob("*.log"))
    assert "/v1/recommend" in kept, "Serve's per-request lines are kept in the run's logs"
    per_request = [line for line in text.splitlines() if "/v1/recommend" in line and "curl" not in line]
    assert not per_request and "will not be applied" not in text, f"...and not on the console: {text[-2000:]}"
