"""Mining and labelling for real: the HTTP backend against a local OpenAI-compatible server, Ray Data,
the run store and its cache; the local transformers backend with the real SmolLM2 weights."""

import json

import numpy as np
import pytest
from PIL import Image

from actors.generators import MIN_SHARED_TOKENS, HttpGenerator, LocalGenerator, shared_opening_layout
from chat_server import GENERIC, ChatServer
from deepinterestgr.config import GeneratorConfig, load_config
from deepinterestgr.interests.parsing import parse_descriptors, parse_label, parse_label_probability
from deepinterestgr.interests.requests import judge_request
from deepinterestgr.interests.schemas import LABEL_SCHEMA, USER_INTERESTS_SCHEMA, descriptors_schema
from deepinterestgr.prompts import load_template
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import label, mine, prepare

COLOURS = {"i1": (200, 30, 40), "i2": (20, 180, 60)}
ITEMS = [
    {"item_id": "i1", "title": "Desk lamp for night reading", "description": "A warm LED lamp.", "image_uri": "IMAGE"},
    {"item_id": "i2", "title": "Tent for family camping", "description": "Sleeps four.", "image_uri": "IMAGE"},
    {"item_id": "i3", "title": "Pen set for calligraphy", "description": "x" * 50_000},
    {"item_id": "i4", "title": "Shoes for trail running [429]", "description": "Grippy soles.", "image_uri": "/nonexistent/i4.png"},
    {"item_id": "i5", "title": "Mystery box [prose]", "description": "Who knows."},
    {"item_id": "i6", "title": "Broken listing [500]", "description": "Server trips on it."},
    {"item_id": "i7", "title": "Proxy victim [garbage]", "description": "Answer is HTML."},
    {"item_id": "i8", "title": "", "description": ""},
    {"item_id": "i9", "title": "Yoga mat for home workouts", "description": "Non-slip."},
    {"item_id": "i10", "title": "Headphones for home recording", "description": "Closed back."},
]
SEQUENCES = [
    {"user_id": "u1", "item_ids": ["i1", "i2", "i3", "i9"]},
    {"user_id": "u2", "item_ids": ["i9", "i10", "i1", "i2", "i3"]},
    {"user_id": "u3", "item_ids": ["i5", "i6", "i7", "i8", "i10"]},
]


def _http(name: str, url: str, **extra) -> GeneratorConfig:
    return GeneratorConfig(name=name, backend="http", model="fake", base_url=url, max_retries=1, backoff_s=0.01,
                           timeout_s=5, max_in_flight=4, **extra)


@pytest.fixture
def catalog(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for item_id, colour in COLOURS.items():
        Image.new("RGB", (16, 12), colour).save(folder / f"{item_id}.png")
    with open(folder / "items.jsonl", "w") as handle:
        for item in ITEMS:
            uri = str(folder / f"{item['item_id']}.png") if item.get("image_uri") == "IMAGE" else item.get("image_uri")
            handle.write(json.dumps({**item, "image_uri": uri}) + "\n")
    with open(folder / "sequences.jsonl", "w") as handle:
        handle.writelines(json.dumps(s) + "\n" for s in SEQUENCES)
    return folder


def _config(tmp_path, catalog, server, *extra):
    cfg = load_config(None, [f"storage.uri={tmp_path / 'run'}", "data.loader=jsonl", f"data.path={catalog}",
                             "mine.parse_retries=1", "mine.flush_rows=2", "label.judge_sample=100", *extra])
    cfg.mine.miners = [_http("alpha", server.url), _http("beta", server.url)]
    cfg.mine.captioner = _http("captioner", server.url)
    cfg.label.judge = _http("judge", server.url)
    return cfg


def test_http_backend_retries_429_and_5xx_and_records_garbage_and_timeouts(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sekret")
    with ChatServer(slow_s=1.0) as server:
        generator = HttpGenerator(server.url, "fake", 64, "TEST_LLM_KEY", max_in_flight=3, timeout_s=0.4, max_retries=2, backoff_s=0.01)
        titles = ["Lamp for night reading", "Shoes for running [429]", "Thing [500]", "Thing [garbage]", "Thing [slow]"]
        batch = {"request": np.array([json.dumps([{"role": "user", "content": f"Title: {t}"}]) for t in titles], dtype=object),
                 "temperature": np.zeros(5), "seed": np.arange(5)}
        out = generator(batch)
        assert parse_descriptors(out["text"][0], 5)[0]["descriptor"] == "night reading"
        assert out["error"][0] == "" and out["completion_tokens"][0] > 0
        assert out["error"][1] == "", "a 429 is retried"
        assert "HTTP 500" in out["error"][2] and "gave up after 3 attempts" in out["error"][2]
        assert "malformed response" in out["error"][3] and "upstream proxy error" in out["error"][3]
        assert "gave up" in out["error"][4] and "timed out" in out["error"][4].lower()
        assert server.auth == {"Bearer sekret"}
        calls = [json.dumps(p["messages"][-1]["content"]) for p in server.requests]
        assert sum("[500]" in c for c in calls) == 3 and sum("[garbage]" in c for c in calls) == 1, "no retry of a 200 that is garbage"


def test_mine_and_label_over_http_merge_miners_record_failures_and_resume(ray_cluster, tmp_path, catalog, capfd):
    with ChatServer() as server:
        cfg = _config(tmp_path, catalog, server)
        store = RunStore(cfg)
        prepare.run(cfg, store)
        mined = mine.run(cfg, store)
        items = {r["item_id"]: r for r in mined.items.to_pylist()}
        report = mined.entry.report

        lamp = {d["descriptor"]: d for d in items["i1"]["descriptors"]}
        assert lamp["night reading"]["sources"] == ["alpha", "beta"] and lamp["night reading"]["confidence"] == 0.8
        assert lamp[GENERIC]["confidence"] == 0.3
        assert [d["descriptor"] for d in items["i4"]["descriptors"]][0] == "trail running [429]", "a 429 is retried, then answered"
        for item_id, colour in COLOURS.items():
            assert f"16x12 pixels, mostly rgb{colour}".replace(" ", "") in items[item_id]["caption"].replace(" ", ""), "the image reached the model"
        failures = store.read_table("mine", "failures").to_pylist()
        by_item = {}
        for f in failures:
            by_item.setdefault(f["id"], []).append(f)
        assert "could not be read" in by_item["i4"][0]["error"] and "/nonexistent/i4.png" in by_item["i4"][0]["error"]
        assert {f["source"] for f in by_item["i5"]} == {"alpha", "beta"}
        assert all("unparseable after 2 tries" in f["error"] and "great for many people" in f["raw"] for f in by_item["i5"])
        assert all("HTTP 500" in f["error"] for f in by_item["i6"]) and all("malformed" in f["error"] for f in by_item["i7"])
        assert by_item["i8"][0]["error"] == "item has no title and no description"
        assert all(not items[i]["descriptors"] for i in ("i5", "i6", "i7", "i8"))
        assert report["miners"]["alpha"]["truncated"] == 1 and report["miners"]["alpha"]["failed"] == 3
        interests = dict(zip(*store.read_table("mine", "user_interests").to_pydict().values()))
        assert interests["u1"] == "long-term: night reading; short-term: family camping", "last training title is the penultimate"
        assert not any("i8" in json.dumps(p) for p in server.requests), "an item without text costs no call"
        formats = {json.dumps(p.get("response_format", {}).get("json_schema", {}).get("schema"), sort_keys=True)
                   for p in server.requests if isinstance(p["messages"][-1]["content"], str)}
        assert formats == {json.dumps(s, sort_keys=True) for s in (descriptors_schema(cfg.mine.max_descriptors), USER_INTERESTS_SCHEMA)}, \
            "item and user requests carry their JSON schema; captions are free text"

        # A rerun under a changed stage config asks again only for what failed.
        asked = len(server.requests)
        cfg2 = _config(tmp_path, catalog, server, "mine.parse_retries=0")
        capfd.readouterr()
        again = mine.run(cfg2, store)
        rows = again.entry.report["miners"]["alpha"]["rows"]
        assert f"items (alpha): {rows - 6} of {rows} rows to answer (6 from the cache)" in capfd.readouterr().err, \
            "the stage says at its start how much is left to mine"
        new_titles = {json.dumps(p["messages"][-1]["content"]) for p in server.requests[asked:]}
        assert new_titles and all(any(tag in t for tag in ("[prose]", "[500]", "[garbage]")) for t in new_titles)
        assert again.entry.report["miners"]["alpha"]["from_cache"] == 6

        labelled = label.run(cfg2, store)
        labels = {(r["item_id"], d["descriptor"]): d["label"] for r in labelled.items.to_pylist() for d in r["descriptors"]}
        assert server.requests[-1]["response_format"]["json_schema"]["schema"] == LABEL_SCHEMA
        assert labels[("i1", "night reading")] == 1 and labels[("i1", GENERIC)] == 0, "the classifier learned the judge"
        quality = dict(zip(*store.read_table("label", "item_quality").to_pydict().values()))
        assert quality["i1"] == pytest.approx(0.8 / 1.1) and quality["i5"] == 0.0
        holdout = labelled.entry.report["holdout"]
        assert holdout["pairs"] >= 3 and holdout["agreement"] == 1.0
        # Labels come from the answers' log-probabilities, thresholded against other items' descriptors.
        assert server.requests[-1]["logprobs"] is True and server.requests[-1]["top_logprobs"] == cfg2.label.top_logprobs
        judged = store.read_table("label", "judged").to_pylist()
        assert {round(r["judge_p"], 2) for r in judged} == {0.9, 0.15}
        assert 0.15 < labelled.entry.report["threshold"] <= 0.9 and labelled.entry.report["own_vs_other_items_balanced_accuracy"] > 0.5


def test_shared_opening_layout_puts_the_shared_tokens_first_and_left_pads_the_rest():
    ids, mask, shared = shared_opening_layout([[5, 6, 7, 8, 9], [5, 6, 7, 1], [5, 6, 7, 8, 2, 3, 4]], pad_id=0, min_shared=3)
    assert shared == 3
    assert ids.tolist() == [[5, 6, 7, 0, 0, 8, 9], [5, 6, 7, 0, 0, 0, 1], [5, 6, 7, 8, 2, 3, 4]]
    assert mask.tolist() == [[1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0, 1], [1] * 7]
    # A prompt that is all opening keeps its last token after it: generation needs one uncomputed token per row.
    assert shared_opening_layout([[5, 6, 7], [5, 6, 7, 8]], pad_id=0, min_shared=1)[2] == 2
    # Under min_shared, or one prompt: plain left padding.
    ids, mask, shared = shared_opening_layout([[5, 6, 9], [5, 6, 7, 8]], pad_id=0, min_shared=3)
    assert shared == 0 and ids.tolist() == [[0, 5, 6, 9], [5, 6, 7, 8]] and mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert shared_opening_layout([[5, 6, 7, 8]], pad_id=0, min_shared=1)[2] == 0


def test_local_backend_batches_smollm2_like_one_at_a_time_and_refuses_images(smollm2):
    generator = LocalGenerator("SmolLM2-135M-Instruct", max_new_tokens=12)
    chats = [[{"role": "user", "content": "Name a fruit."}], [{"role": "user", "content": "What colour is the sky on a clear day? Answer in one word."}],
             [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]]
    together = generator.generate(chats, [0.0] * 3, [0] * 3)
    alone = [generator.generate([chat], [0.0], [0])[0] for chat in chats[:2]]
    assert [o["text"] for o in together[:2]] == [o["text"] for o in alone], \
        "left padding and the shared opening computed once must not change greedy answers"
    texts = [generator.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats[:2]]
    _, _, shared = shared_opening_layout([generator.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], 0)
    assert shared >= MIN_SHARED_TOKENS, "the chat template's system text opens both prompts"
    assert all(o["completion_tokens"] > 0 and o["text"] for o in together[:2])
    assert together[0]["prompt_tokens"] < together[1]["prompt_tokens"]
    assert "takes no images" in together[2]["error"]
    with pytest.raises(FileNotFoundError, match="/no/such/model"):
        LocalGenerator("/no/such/model", max_new_tokens=4)


def test_grouped_attention_gives_sdpas_logits_and_answers_on_a_padded_batch_of_smollm2(smollm2):
    """The local backend's grouped kernel against transformers' sdpa, SmolLM2's real weights: a left-padded
    batch's logits (the prompt, then decoding steps from the cache) and greedy answers under a schema."""
    import torch

    from deepinterestgr import grouped_attention

    grouped = LocalGenerator("SmolLM2-135M-Instruct", max_new_tokens=24)
    stock = LocalGenerator("SmolLM2-135M-Instruct", max_new_tokens=24, attention="sdpa")
    assert grouped.model.config._attn_implementation == grouped_attention.NAME
    chats = [[{"role": "user", "content": "Name a fruit."}],
             [{"role": "user", "content": "Why would someone buy a cast iron skillet? Give two reasons."}],
             [{"role": "user", "content": "Tent for family camping: who buys it?"}]]
    prompts = [grouped.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    # Left-padded as generation lays a batch out (the tokenizer's own default side is right).
    batch = grouped.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    assert (batch["attention_mask"] == 0).any(), "the batch must be padded"
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        steps = []
        for model in (grouped.model, stock.model):
            out = model(**batch, use_cache=True)
            step = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True,
                         attention_mask=torch.cat([batch["attention_mask"], torch.ones(3, 1, dtype=torch.long)], 1))
            steps.append((out.logits[real], step.logits))
    assert torch.allclose(steps[0][0], steps[1][0], atol=1e-4) and torch.allclose(steps[0][1], steps[1][1], atol=1e-4)
    schema = [json.dumps(descriptors_schema(2))] * 3
    assert [o["text"] for o in grouped.generate(chats, [0.0] * 3, [0] * 3, schema)] == \
        [o["text"] for o in stock.generate(chats, [0.0] * 3, [0] * 3, schema)]


def test_local_backend_under_a_json_schema_answers_json_that_parses_where_free_text_does_not(smollm2):
    import jsonschema

    from deepinterestgr.interests.parsing import ParseError, parse_label

    generator = LocalGenerator("SmolLM2-135M-Instruct", max_new_tokens=64)
    chats = [[{"role": "user", "content": "Tell me about a tent for family camping."}],
             [{"role": "user", "content": "Is 'night reading' a reason to buy a desk lamp?"}]]
    free = generator.generate(chats, [0.0] * 2, [0] * 2)
    with pytest.raises(ParseError):
        parse_label(free[1]["text"])
    schemas = [json.dumps(descriptors_schema(1)), json.dumps(LABEL_SCHEMA)]
    held = generator.generate(chats, [0.0] * 2, [0] * 2, schemas)
    jsonschema.validate(json.loads(held[0]["text"]), descriptors_schema(1))
    assert parse_descriptors(held[0]["text"], max_descriptors=1)
    assert parse_label(held[1]["text"]) in (0, 1)


def test_local_judge_reads_p_good_from_the_answer_log_probabilities_under_the_label_schema(smollm2):
    generator = LocalGenerator("SmolLM2-135M-Instruct", max_new_tokens=8)
    templates = load_template("label_v1")
    good = judge_request(templates, "Cast iron skillet", "A heavy pan for searing steaks and baking cornbread.", "searing steaks", 768)
    bad = judge_request(templates, "Cast iron skillet", "A heavy pan for searing steaks and baking cornbread.", "learning guitar", 768)
    outputs = generator.generate([good.messages, bad.messages], [0.0, 0.0], [0, 0], [json.dumps(LABEL_SCHEMA)] * 2, [5, 5])
    for out in outputs:
        steps = json.loads(out["token_logprobs"])
        assert len(steps) == out["completion_tokens"]
        p = parse_label_probability(out["text"], steps)
        assert 0.0 < p < 1.0, "a probability, not the answer's 0/1"
        # Greedy decoding picked the likelier digit, so the probability and the answer agree.
        assert (p >= 0.5) == (parse_label(out["text"]) == 1)
    without = generator.generate([good.messages], [0.0], [0], [json.dumps(LABEL_SCHEMA)])[0]
    assert without["token_logprobs"] == "" and without["text"] == outputs[0]["text"]


def test_vllm_rows_turn_the_engines_token_logprobs_into_per_step_token_texts():
    from actors.generators import _vllm_result

    row = {"id": "a", "generated_text": '{"label": 1}', "num_input_tokens": 40, "num_generated_tokens": 2,
           "logprobs": [{7: {"logprob": -0.01, "rank": 1, "decoded_token": '{"label":'}},
                        {16: {"logprob": -0.2, "rank": 1, "decoded_token": "1"}, 15: {"logprob": -1.8, "rank": 2, "decoded_token": "0"}}]}
    out = _vllm_result(row, ("id",))
    steps = json.loads(out["token_logprobs"])
    assert steps == [{'{"label":': -0.01}, {"1": -0.2, "0": -1.8}]
    assert parse_label_probability(out["text"], steps) == pytest.approx(1 / (1 + np.exp(-1.6)))
    assert _vllm_result({**row, "logprobs": None}, ("id",))["token_logprobs"] == ""
