"""One LLM task over many rows, shared by `dig mine` and `dig label`: cache, generate, parse, retry.

Rows already answered under the same cache key are skipped. The rest go through the configured
backend as a Ray Dataset; answers are parsed on the driver as they stream back and flushed to the
cache every `flush_rows` rows. Rows whose answer does not parse are asked again with seeded
sampling, up to `parse_retries` times; then they are recorded as failed with their raw text, as are
rows the backend could not answer at all.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from actors.generators import generate
from deepinterestgr.config import GeneratorConfig
from deepinterestgr.interests.parsing import ParseError
from deepinterestgr.progress import progress
from deepinterestgr.storage.result_cache import ResultCache, stable_hash


@dataclass
class TaskOutcome:
    """Parsed values by row id, failure records, and the figures for the stage report."""

    values: dict[str, object] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def cache_key(task: str, gen: GeneratorConfig, prompts: str) -> str:
    """What makes two answers interchangeable: task, backend, model, generation settings, prompt version."""
    settings = gen.model_dump(include={"backend", "model", "max_new_tokens", "temperature", "retry_temperature", "base_url", "structured"})
    return f"{task}-{gen.name}-{stable_hash(task, settings, prompts)}"


def _clean(row: dict) -> dict:
    # Rows a backend failed on may come back with missing (None/NaN) outputs.
    def number(value) -> int:
        return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0

    def text(value) -> str:
        return value if isinstance(value, str) else ""

    return {**row, "text": text(row.get("text")), "error": text(row.get("error")), "token_logprobs": text(row.get("token_logprobs")),
            "prompt_tokens": number(row.get("prompt_tokens")), "completion_tokens": number(row.get("completion_tokens"))}


def _seed(seed: int, row_id: str, attempt: int) -> int:
    return int(stable_hash(seed, row_id, attempt), 16) % (2**31)


def run_llm_task(
    task: str, requests: list[dict], parse: Callable[[str], object], gen: GeneratorConfig, cache: ResultCache,
    seed: int, parse_retries: int, flush_rows: int, images: bool = False, schema: dict | None = None,
    top_logprobs: int = 0,
) -> TaskOutcome:
    """Answer every request ({"id", "messages", "truncated"}) once; see the module docstring.

    With a `schema` and `gen.structured`, the backend decodes under that JSON schema. With
    `top_logprobs` k > 0, `parse` is called as parse(text, steps): steps holds the k likeliest tokens
    of every answer step ({token text: log-probability}), empty when the backend gave none.
    """
    schema_text = json.dumps(schema, sort_keys=True) if schema is not None and gen.structured else ""
    started = time.perf_counter()
    for r in requests:
        r["request"] = json.dumps(r.pop("messages"), sort_keys=True)
        r["request_hash"] = stable_hash(r["request"])
    done = cache.load()
    pending = [r for r in requests if (r["id"], r["request_hash"]) not in done]
    fresh = len(pending)
    print(f"{task} ({gen.name}): {fresh} of {len(requests)} rows to answer ({len(requests) - fresh} from the cache), "
          f"batches of {gen.batch_size} on the {gen.backend} backend; rate and ETA follow the first batch", file=sys.stderr, flush=True)
    outcome = TaskOutcome()
    tokens = {"prompt_tokens": 0, "completion_tokens": 0}
    retried = 0
    for attempt in range(parse_retries + 1):
        if not pending:
            break
        temperature = gen.temperature if attempt == 0 else gen.retry_temperature
        rows = [{"id": r["id"], "request": r["request"], "request_hash": r["request_hash"], "temperature": temperature,
                 "seed": _seed(seed, r["id"], attempt), "schema": schema_text, "top_logprobs": top_logprobs} for r in pending]
        blocks = max(1, min(len(rows), math.ceil(len(rows) / gen.batch_size)))
        answers = generate(ray.data.from_items(rows, override_num_blocks=blocks), gen, images)
        retry, buffer = [], []
        label = f"{task} ({gen.name})" + (f" retry {attempt}" if attempt else "")
        with progress(len(rows), label, "rows") as bar:
            for batch in answers.iter_batches(batch_size=flush_rows, batch_format="pandas"):
                for row in batch.to_dict("records"):
                    row = _clean(row)
                    tokens["prompt_tokens"] += row["prompt_tokens"]
                    tokens["completion_tokens"] += row["completion_tokens"]
                    if row["error"]:
                        outcome.failures.append({"task": task, "source": gen.name, "id": row["id"], "error": row["error"], "raw": row["text"]})
                        continue
                    try:
                        value = parse(row["text"], json.loads(row["token_logprobs"] or "[]")) if top_logprobs else parse(row["text"])
                    except ParseError as exc:
                        if attempt < parse_retries:
                            retry.append(row)
                        else:
                            outcome.failures.append({"task": task, "source": gen.name, "id": row["id"],
                                                     "error": f"unparseable after {attempt + 1} tries: {exc}", "raw": row["text"]})
                        continue
                    buffer.append({"id": row["id"], "request_hash": row["request_hash"], "value": json.dumps(value),
                                   "raw": row["text"], "prompt_tokens": row["prompt_tokens"],
                                   "completion_tokens": row["completion_tokens"]})
                cache.append(buffer)
                bar.update(len(batch))
                buffer = []
        retried += len(retry)
        pending = retry
    seconds = time.perf_counter() - started
    done = cache.load()
    for r in requests:
        row = done.get((r["id"], r["request_hash"]))
        if row is not None:
            outcome.values[r["id"]] = ResultCache.value(row)
    outcome.stats = {
        "rows": len(requests), "answered": len(outcome.values), "failed": len(outcome.failures),
        "failure_rate": round(len(outcome.failures) / max(1, len(requests)), 4),
        "from_cache": len(requests) - fresh, "retried": retried,
        "truncated": sum(1 for r in requests if r.get("truncated")),
        **tokens, "seconds": round(seconds, 2),
        "rows_per_s": round(fresh / seconds, 3) if fresh and seconds else None,
        "tokens_per_s": round(tokens["completion_tokens"] / seconds, 1) if fresh and seconds else None,
    }
    return outcome
