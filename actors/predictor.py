"""A loaded recommender that answers recommendation requests: the model behind Ray Serve replicas.

It holds one run's trained model, SID trie, catalog text, mined interests and users' histories, and
answers a batch of requests with one constrained beam search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil
import torch

from deepinterestgr.config import RunConfig
from deepinterestgr.recommender.artifacts import item_texts, load_catalog, load_format, load_model, user_interests
from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.recommender.request import RecommendRequest, RequestError
from deepinterestgr.storage.runstore import RunStore


@dataclass
class Resolved:
    rows: list[int]
    ignored: list[str] = field(default_factory=list)
    interests: str | None = None


def model_stage(store: RunStore, wanted: str) -> str:
    """The stage whose model is served: grpo when it ran (or when asked), else sft."""
    if wanted != "auto":
        return wanted
    return "grpo" if store.entry("grpo") is not None else "sft"


class Predictor:
    """Loads a run's recommender once; `recommend` answers a batch of queries."""

    def __init__(self, cfg: RunConfig):
        # As many torch threads as the replica has CPUs: more only fight the proxy and other replicas.
        torch.set_num_threads(cfg.serve.torch_threads or max(1, int(cfg.serve.cpus_per_replica)))
        self.cfg = cfg
        store = RunStore(cfg)
        self.stage = model_stage(store, cfg.serve.model_stage)
        self.version = store.require(self.stage).fingerprint
        self.run_uri = store.uri
        self.catalog = load_catalog(store)
        self.format = load_format(store, self.stage, self.catalog, cfg.sft.backbone)
        self.model = load_model(store, self.stage)
        if cfg.serve.gpus_per_replica and torch.cuda.is_available():
            self.model.to("cuda")
        self.rows = {item: row for row, item in enumerate(self.catalog.item_ids)}
        texts = {t.row: t for t in item_texts(store, self.catalog.item_ids)}
        self.titles = [texts[r].title if r in texts else "" for r in range(len(self.catalog.item_ids))]
        self.descriptors = [texts[r].descriptors if r in texts else [] for r in range(len(self.catalog.item_ids))]
        self.user_interests = user_interests(store)
        seqs = self.catalog.sequences
        # A served user's history is everything the run knows about them, held-out items included.
        self.histories = {
            user: seqs.train[u] + [int(x) for x in (seqs.valid[u], seqs.test[u]) if x >= 0]
            for u, user in enumerate(seqs.user_ids)
        }

    def describe(self) -> dict:
        """What `GET /v1/model` answers."""
        return {"model_version": self.version, "stage": self.stage, "run": self.run_uri,
                "backbone": self.cfg.sft.backbone,
                "sid_levels": list(self.format.vocab.sizes), "items": len(self.catalog.item_ids), "users": len(self.histories),
                "replica_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1)}

    def item(self, item_id: str) -> dict:
        row = self.rows.get(item_id)
        if row is None:
            raise RequestError(404, f"unknown item_id {item_id!r}")
        return self._item(row, None)

    def _item(self, row: int, score: float | None) -> dict:
        out = {"item_id": self.catalog.item_ids[row], "title": self.titles[row],
               "sid": self.catalog.codes[row].tolist(), "interests": self.descriptors[row]}
        if score is not None:
            out["score"] = score
        return out

    def _resolve(self, query: RecommendRequest) -> Resolved:
        if query.user_id is not None:
            rows = self.histories.get(query.user_id)
            if rows is None:
                raise RequestError(404, f"unknown user_id {query.user_id!r}: send their history instead")
            return Resolved(rows, [], self.user_interests.get(query.user_id))
        rows, ignored = [], []
        for item in query.history or []:
            row = self.rows.get(item)
            if row is None:
                ignored.append(item)
            else:
                rows.append(row)
        if not rows:
            detail = f" (all {len(ignored)} item ids are unknown)" if ignored else ""
            raise RequestError(422, f"history is empty{detail}: send at least one known item_id")
        return Resolved(rows, ignored)

    def recommend(self, queries: list[RecommendRequest]) -> list[dict | RequestError]:
        """One answer per query, in order: a result dict, or the RequestError to send back."""
        answers: list[dict | RequestError] = [None] * len(queries)
        todo = []
        for i, query in enumerate(queries):
            try:
                todo.append((i, query, self._resolve(query)))
            except RequestError as error:
                answers[i] = error
        if not todo:
            return answers
        # One beam search per width, so a request with a large k does not widen everyone's beams.
        # Excluded history is pruned inside the search, so it never widens a beam.
        by_width: dict[int, list] = {}
        for entry in todo:
            by_width.setdefault(max(self.cfg.serve.beam_width, entry[1].k), []).append(entry)
        for width, group in sorted(by_width.items()):
            prompts = [self.format.prompt(r.rows, r.interests) for _, _, r in group]
            exclude = [r.rows if q.exclude_history else [] for _, q, r in group]
            result = beam_search(self.model, prompts, self.catalog.trie, self.format.vocab, beam_width=width, top_k=width,
                                 pad_id=self.format.pad_id, exclude=exclude if any(exclude) else None,
                                 item_weight=self.format.item_weight)
            for (i, query, resolved), items, scores in zip(group, result.items, result.scores):
                chosen = [(int(it), float(sc)) for it, sc in zip(items, scores) if it >= 0][: query.k]
                answers[i] = {
                    "items": [self._item(row, score) for row, score in chosen],
                    "ignored_items": resolved.ignored,
                    "user_interests": resolved.interests,
                    "model_version": self.version,
                }
        return answers
