"""Ray Data callables that keep an encoder loaded: one instance per actor in the pool."""

from __future__ import annotations

import io
import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from deepinterestgr.storage.filesystem import read_uri
from deepinterestgr.storage.result_cache import stable_hash
from deepinterestgr.weights import resolve_text_encoder
from deepinterestgr.tokenizer.text import enriched_text, interest_text, is_scored, weighted_descriptors, weighted_mean


def _rows(batch: dict[str, np.ndarray]) -> list[dict]:
    names = list(batch)
    return [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]


class TextEmbedder:
    """Adds `text_embedding` (L2-normalised) of each item's enriched text, or of one text `column`; with
    `interests`, also `interest_embedding` of its descriptors alone (all zeros without any), from the same
    loaded encoder (`tokenize.interest_weights`): for an item the label stage scored, the p_good-weighted
    mean of every descriptor's own vector ("p_good"); otherwise, or with "labels", its labelled-good
    descriptors encoded together.

    With `known` (item id -> (text hash, vector), from the tokenize stage's cache), items whose text
    is unchanged reuse their vector instead of being encoded again; `text_hash` is added either way.
    """

    def __init__(self, model: str, batch_size: int = 64, device: str = "cpu", column: str | None = None,
                 known: dict[str, tuple[str, list[float]]] | None = None, interests: bool = False,
                 interest_weights: str = "p_good"):
        if column and interests:
            raise ValueError("TextEmbedder: `interests` reads each item's descriptors, so it needs item rows, not one text `column`")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(resolve_text_encoder(model), device=device)
        self.batch_size, self.column, self.known, self.interests = batch_size, column, known or {}, interests
        self.interest_weights = interest_weights

    def _dimension(self) -> int:
        # sentence-transformers renamed the method; older releases only have the first name
        model = self.model
        return (model.get_embedding_dimension if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension)()

    def _encode(self, texts: list[str], vectors: np.ndarray, rows: list[int]) -> None:
        if rows:
            encoded = self.model.encode([texts[row] for row in rows], batch_size=self.batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True)
            vectors[rows] = encoded.astype(np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = None if self.column else _rows(batch)
        texts = [str(t) for t in batch[self.column]] if self.column else [enriched_text(row) for row in rows]
        hashes = [stable_hash(text) for text in texts]
        ids = [str(i) for i in batch["item_id"]] if "item_id" in batch else [""] * len(texts)
        cached = [self.known.get(i, ("", None)) for i in ids]
        vectors = np.zeros((len(texts), self._dimension()), dtype=np.float32)
        for row, (known_hash, vector) in enumerate(cached):
            if known_hash == hashes[row]:
                vectors[row] = vector
        self._encode(texts, vectors, [row for row, (h, (known_hash, _)) in enumerate(zip(hashes, cached)) if known_hash != h])
        batch["text_embedding"] = vectors
        batch["text_hash"] = np.array(hashes)
        if self.interests:
            # p_good weighs what the label stage scored; an item it did not score keeps the labels channel.
            weighted = [self.interest_weights == "p_good" and is_scored(row) for row in rows]
            descriptors = ["" if by_weight else interest_text(row) for row, by_weight in zip(rows, weighted)]
            batch["interest_embedding"] = np.zeros_like(vectors)
            self._encode(descriptors, batch["interest_embedding"], [row for row, text in enumerate(descriptors) if text])
            if any(weighted):
                scored = np.flatnonzero(weighted)
                batch["interest_embedding"][scored] = self._weighted_interests([rows[row] for row in scored], vectors.shape[1])
        return batch

    def _weighted_interests(self, rows: list[dict], dimension: int) -> np.ndarray:
        pairs = [(row, text, weight) for row, item in enumerate(rows) for text, weight in weighted_descriptors(item)]
        # Items share descriptors (a catalog has far fewer interests than items): encode each text once.
        texts, index = np.unique(np.array([text for _, text, _ in pairs], dtype=object), return_inverse=True)
        vectors = np.zeros((len(texts), dimension), dtype=np.float32)
        self._encode(list(texts), vectors, list(range(len(texts))))
        return weighted_mean(vectors[index.reshape(-1)], np.array([w for *_, w in pairs], dtype=np.float64),
                             np.array([row for row, *_ in pairs], dtype=np.int64), len(rows))


class ImageEmbedder:
    """Adds `image_embedding` (CLIP vision pooler output) and `image_ok` for each item's image_uri.

    An image that cannot be read gets a zero vector and image_ok=False; the batch goes on.
    """

    def __init__(self, model: str, filesystem: pafs.FileSystem | None = None, timeout_s: float = 10.0, device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, CLIPVisionModel

        self.torch = torch
        self.model = CLIPVisionModel.from_pretrained(model).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.filesystem, self.timeout_s, self.device = filesystem, timeout_s, device
        self.dim = self.model.config.hidden_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, ok = [], []
        for uri in batch["image_uri"]:
            try:
                images.append(Image.open(io.BytesIO(read_uri(str(uri), self.filesystem, self.timeout_s))).convert("RGB") if uri else None)
            except Exception:  # noqa: BLE001 - any unreadable image becomes a per-row failure
                images.append(None)
            ok.append(images[-1] is not None)
        vectors = np.zeros((len(images), self.dim), dtype=np.float32)
        present = [i for i, image in enumerate(images) if image is not None]
        if present:
            inputs = self.processor(images=[images[i] for i in present], return_tensors="pt").to(self.device)
            with self.torch.no_grad():
                vectors[present] = self.model(**inputs).pooler_output.float().cpu().numpy()
        batch["image_embedding"] = vectors
        batch["image_ok"] = np.array(ok)
        return batch
