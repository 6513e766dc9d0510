"""`dig mine`: deep-interest mining (MLIM) over items and users with one or more LLM backends.

Captions first (when a captioner is configured), then each miner over every item, merged into one
descriptor list per item (each descriptor keeps its source models), then user interests from each
user's last training titles. Outputs: `mine/items` (the catalog + caption + descriptors),
`mine/user_interests`, `mine/failures` (every row that failed, with its raw text) and a report.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import ray

from deepinterestgr.config import RunConfig
from deepinterestgr.errors import DataError
from deepinterestgr.interests.parsing import example_descriptors, merge_descriptors, parse_caption, parse_descriptors, parse_user_interests
from deepinterestgr.interests.requests import caption_request, item_request, user_request
from deepinterestgr.interests.schemas import USER_INTERESTS_SCHEMA, descriptors_schema
from deepinterestgr.interests.tables import DESCRIPTOR_TYPE, FAILURE_SCHEMA
from deepinterestgr.prompts import load_template
from deepinterestgr.recommender.sequences import build_sequences
from deepinterestgr.storage.filesystem import read_uri
from deepinterestgr.storage.result_cache import ResultCache
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from ray_jobs.common import stage_main, to_table, up_to_date
from ray_jobs.llm_batch import TaskOutcome, cache_key, run_llm_task

STAGE = "mine"


@dataclass
class Mined:
    entry: ManifestEntry
    items: pa.Table


def sample_ids(ids: list[str], limit: int | None, seed: int) -> list[str]:
    """All ids, or a seeded sample of `limit` of them (in their original order)."""
    if limit is None or limit >= len(ids):
        return ids
    keep = set(np.random.default_rng(seed).choice(len(ids), size=limit, replace=False).tolist())
    return [i for n, i in enumerate(ids) if n in keep]


def _run(cfg: RunConfig, store: RunStore, task: str, requests: list[dict], parse, gen, images: bool = False,
         schema: dict | None = None) -> TaskOutcome:
    cache = ResultCache(store, STAGE, cache_key(task, gen, cfg.mine.prompts))
    return run_llm_task(task, requests, parse, gen, cache, cfg.seed, cfg.mine.parse_retries, cfg.mine.flush_rows, images, schema)


def caption_items(cfg: RunConfig, store: RunStore, items: list[dict], templates: dict) -> tuple[dict, list[dict], dict]:
    """Captions by item id; images that cannot be read are failures without a model call."""
    requests, failures = [], []
    for item in items:
        if not item.get("image_uri"):
            continue
        try:
            data = base64.b64encode(read_uri(item["image_uri"], store.fs)).decode()
        except (OSError, ValueError) as exc:
            failures.append({"task": "caption", "source": cfg.mine.captioner.name, "id": item["item_id"],
                             "error": f"image {item['image_uri']} could not be read: {exc}", "raw": ""})
            continue
        request = caption_request(templates, item.get("title") or "", f"data:image/png;base64,{data}")
        requests.append({"id": item["item_id"], "messages": request.messages, "truncated": request.truncated})
    outcome = _run(cfg, store, "caption", requests, parse_caption, cfg.mine.captioner, images=True)
    stats = {**outcome.stats, "unreadable_images": len(failures)}
    return outcome.values, failures + outcome.failures, stats


def mine_items(cfg: RunConfig, store: RunStore, items: list[dict], captions: dict, templates: dict) -> tuple[dict, list[dict], dict]:
    """Merged descriptors by item id, failures, and per-miner figures."""
    m = cfg.mine
    by_item: dict[str, dict[str, list]] = {}
    failures, stats = [], {}
    for gen in m.miners:
        requests = []
        for item in items:
            request = item_request(templates, item.get("title") or "", item.get("description"), captions.get(item["item_id"]),
                                   m.max_descriptors, gen.max_prompt_tokens)
            requests.append({"id": item["item_id"], "messages": request.messages, "truncated": request.truncated})
        parse = partial(parse_descriptors, max_descriptors=m.max_descriptors,
                        copied=example_descriptors(templates["item_example_assistant"]))
        outcome = _run(cfg, store, "items", requests, parse, gen, schema=descriptors_schema(m.max_descriptors))
        for item_id, descriptors in outcome.values.items():
            by_item.setdefault(item_id, {})[gen.name] = descriptors
        failures += outcome.failures
        stats[gen.name] = outcome.stats
    merged = {item_id: merge_descriptors(sources, m.max_descriptors) for item_id, sources in by_item.items()}
    return merged, failures, stats


def mine_users(cfg: RunConfig, store: RunStore, titles: dict[str, str], templates: dict) -> tuple[dict, list[dict], dict]:
    """Interests text by user id, from each user's last `history_titles` training titles."""
    m = cfg.mine
    sequences = build_sequences(store.read_table("prepare", "interactions"), list(titles))
    names = list(titles.values())
    chosen = set(sample_ids(sequences.user_ids, m.max_users, cfg.seed))
    requests = []
    for user_id, rows in zip(sequences.user_ids, sequences.train):
        if user_id in chosen and rows:
            request = user_request(templates, [names[r] for r in rows[-m.history_titles:]], m.miners[0].max_prompt_tokens)
            requests.append({"id": user_id, "messages": request.messages, "truncated": request.truncated})
    outcome = _run(cfg, store, "users", requests, parse_user_interests, m.miners[0], schema=USER_INTERESTS_SCHEMA)
    return outcome.values, outcome.failures, outcome.stats


def mined_table(items: pa.Table, captions: dict, descriptors: dict) -> pa.Table:
    """The catalog with `caption` and `descriptors` columns (null / empty where nothing was mined)."""
    ids = items.column("item_id").to_pylist()
    table = items.append_column("caption", pa.array([captions.get(i) for i in ids], pa.string()))
    return table.append_column("descriptors", pa.array([descriptors.get(i, []) for i in ids], DESCRIPTOR_TYPE))


def commit_descriptors(cfg: RunConfig, store: RunStore, descriptors: dict[str, list[dict]], source: str) -> None:
    """A mine stage holding the given descriptors (no LLM), so label and tokenize read them as mined ones:
    a stand-in miner of known quality (the interest ablation, tests). Kept when a mine stage is committed."""
    if store.entry("mine") is not None:
        return
    catalog = store.read_table("prepare", "items").sort_by("item_id")
    with store.stage("mine", cfg.section_hash("mine"), store.inputs(("prepare",))) as attempt:
        table = mined_table(catalog, {}, descriptors)
        attempt.write_table("items", table)
        attempt.write_table("user_interests", pa.table({"user_id": pa.array([], pa.string()), "interests": pa.array([], pa.string())}))
        attempt.write_table("failures", pa.Table.from_pylist([], schema=FAILURE_SCHEMA))
        attempt.commit({"items": table.num_rows, "user_interests": 0, "failures": 0},
                       {"items": table.num_rows, "items_mined": len(descriptors), "source": source})


def _load(store: RunStore, entry: ManifestEntry) -> Mined:
    return Mined(entry, store.read_table(STAGE, "items"))


def run(cfg: RunConfig, store: RunStore, items: ray.data.Dataset | None = None) -> Mined:
    """Mine captions, item descriptors and user interests; skipped when inputs and config are unchanged."""
    inputs = store.inputs(("prepare",))
    config_hash = cfg.section_hash("mine")
    if (entry := up_to_date(store, STAGE, config_hash, inputs)) is not None:
        return _load(store, entry)
    catalog = to_table(items) if items is not None else store.read_table("prepare", "items")
    if catalog.num_rows == 0:
        raise DataError("mine: the catalog has no items")
    catalog = catalog.sort_by("item_id")
    templates = load_template(cfg.mine.prompts)
    records = {r["item_id"]: r for r in catalog.to_pylist()}
    chosen = [records[i] for i in sample_ids(list(records), cfg.mine.max_items, cfg.seed)]
    empty = [r["item_id"] for r in chosen if not (r.get("title") or "").strip() and not (r.get("description") or "").strip()]
    chosen = [r for r in chosen if r["item_id"] not in set(empty)]

    with store.stage(STAGE, config_hash, inputs) as attempt:
        failures = [{"task": "items", "source": "input", "id": i, "error": "item has no title and no description", "raw": ""} for i in empty]
        report: dict = {"items": catalog.num_rows, "items_mined": len(chosen), "items_without_text": len(empty)}
        captions: dict = {}
        if cfg.mine.captioner is not None:
            captions, caption_failures, report["captioner"] = caption_items(cfg, store, chosen, templates)
            failures += caption_failures
        descriptors, item_failures, report["miners"] = mine_items(cfg, store, chosen, captions, templates)
        failures += item_failures
        table = mined_table(catalog, captions, descriptors)
        counts = [len(descriptors.get(r["item_id"], [])) for r in chosen]
        report["items_with_descriptors"] = int(sum(1 for c in counts if c))
        report["descriptors_per_item"] = round(float(np.mean(counts)), 2) if counts else 0.0
        interests: dict = {}
        if cfg.mine.user_interests:
            titles = {r["item_id"]: r.get("title") or r["item_id"] for r in catalog.to_pylist()}
            interests, user_failures, report["users"] = mine_users(cfg, store, titles, templates)
            failures += user_failures
        users = pa.table({"user_id": pa.array(sorted(interests), pa.string()),
                          "interests": pa.array([interests[u] for u in sorted(interests)], pa.string())})
        report["failures"] = len(failures)
        attempt.write_table("items", table)
        attempt.write_table("user_interests", users)
        attempt.write_table("failures", pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA))
        entry = attempt.commit({"items": table.num_rows, "user_interests": users.num_rows, "failures": len(failures)}, report)
    return Mined(entry, table)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
