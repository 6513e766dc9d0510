"""The tokenize stage for real: MiniLM from its wheel on a Ray Data actor pool, RQ-VAE on Ray Train."""

import json

import numpy as np
import pyarrow as pa
import pytest

from deepinterestgr.config import load_config
from deepinterestgr.errors import DataError
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import prepare, tokenize

SMALL = [
    "data.synthetic.num_items=80", "data.synthetic.num_users=20",
    "tokenize.rqvae.codebook_size=16", "tokenize.rqvae.levels=2", "tokenize.rqvae.hidden_dims=[64, 32]",
    "tokenize.rqvae.code_dim=8", "tokenize.rqvae.epochs=30", "tokenize.rqvae.eval_every=10",
    "tokenize.embed_batch_size=32",
]


def _config(path, *extra):
    return load_config(None, SMALL + [f"storage.uri={path}", *extra])


def _run(path, *extra):
    cfg = _config(path, *extra)
    store = RunStore(cfg)
    prepare.run(cfg, store)
    return cfg, store, tokenize.run(cfg, store)


def _codes(sids: pa.Table) -> np.ndarray:
    return np.array(sids.sort_by("item_id").column("sid").to_pylist())


def test_two_workers_recover_a_collapsed_codebook_and_give_unique_sids(ray_cluster, tmp_path):
    cfg, store, out = _run(tmp_path, "tokenize.rqvae.num_workers=2", "tokenize.rqvae.start_collapsed=true")
    history = json.loads(store.read_bytes("tokenize", "history.json"))
    assert len(history) == 3, "one report per eval (epochs 10, 20, 30)"
    assert history[0]["utilisation_l0"] <= 0.25, "still collapsed before the first re-seeding"
    assert history[-1]["utilisation_l0"] > 0.6, "re-seeding recovers utilisation"
    assert history[-1]["reseeded_codes"] > 0

    codes = _codes(out.sids)
    assert len(np.unique(codes, axis=0)) == len(codes) == 80
    ids = out.sids.column("item_id").to_pylist()
    for row, code in zip(ids, out.sids.column("sid").to_pylist()):
        assert ids[out.trie.lookup(code)] == row
    report = out.entry.report
    assert report["collision_rate_after"] == 0 and len(report["levels"]) == 2
    png = store.read_bytes("tokenize", "utilisation.png")[:8]
    assert png == b"\x89PNG\r\n\x1a\n"

    again = tokenize.run(cfg, RunStore(cfg))  # reload from storage: skipped, same SIDs
    assert again.entry.attempt == out.entry.attempt
    assert np.array_equal(_codes(again.sids), codes)


def test_same_seed_same_sids_with_kmeans_init(ray_cluster, tmp_path):
    short = ("tokenize.rqvae.epochs=10", "tokenize.rqvae.eval_every=10")
    _, prepared, first = _run(tmp_path / "a", *short)
    cfg = _config(tmp_path / "b", *short)
    store = RunStore(cfg)
    store.adopt(prepared, ("prepare",))  # the same prepare (its own determinism is prepare's test): only tokenize twice
    assert np.array_equal(_codes(first.sids), _codes(tokenize.run(cfg, store).sids))


def test_residual_kmeans_with_reassignment_then_collaborative_vectors_from_the_embedding_cache(ray_cluster, tmp_path):
    _, store, out = _run(tmp_path, "tokenize.method=rkmeans", "tokenize.disambiguation=reassign")
    codes = _codes(out.sids)
    assert codes.shape == (80, 2), "re-assignment keeps the SID length"
    assert len(np.unique(codes, axis=0)) == 80
    text = np.stack(store.read_table("tokenize", "embeddings").column("text_embedding").to_numpy(zero_copy_only=False))

    cache = tmp_path / "cache" / "tokenize"
    shards = sorted(p.name for p in cache.rglob("*.parquet"))
    assert len(shards) == 1
    fused = load_config(None, SMALL + [f"storage.uri={tmp_path}", "tokenize.method=rkmeans", "tokenize.collaborative.enabled=true",
                                       "tokenize.collaborative.dim=8"])
    again = tokenize.run(fused, RunStore(fused))
    assert sorted(p.name for p in cache.rglob("*.parquet")) == shards, "unchanged texts are not encoded (or cached) again"
    embeddings = RunStore(fused).read_table("tokenize", "embeddings")
    np.testing.assert_array_equal(np.stack(embeddings.column("text_embedding").to_numpy(zero_copy_only=False)), text)
    assert np.stack(embeddings.column("cf_embedding").to_numpy(zero_copy_only=False)).shape == (80, 8)
    assert len(np.unique(_codes(again.sids), axis=0)) == 80
    assert not np.array_equal(_codes(again.sids)[:, :1], codes[:, :1]), "the collaborative vectors move the first level"


def test_external_sid_map(ray_cluster, tmp_path):
    cfg = _config(tmp_path)
    prepare.run(cfg, RunStore(cfg))
    ids = sorted(RunStore(cfg).read_table("prepare", "items").column("item_id").to_pylist())
    mapping = {item: [f"<a_{i % 5}>", f"<b_{i % 7}>"] for i, item in enumerate(ids)}
    path = tmp_path / "sids.json"
    path.write_text(json.dumps(mapping))
    ext = load_config(None, SMALL + [f"storage.uri={tmp_path}", "tokenize.method=external", f"tokenize.external_path={path}"])
    out = tokenize.run(ext, RunStore(ext))
    codes = _codes(out.sids)
    assert codes[:, :2].tolist() == [[i % 5, i % 7] for i in range(len(ids))]
    assert len(np.unique(codes, axis=0)) == len(ids)
    del mapping[ids[3]]
    path.write_text(json.dumps(mapping))
    changed = load_config(None, SMALL + [f"storage.uri={tmp_path}", "tokenize.method=external",
                                         f"tokenize.external_path={path}", "seed=1"])
    with pytest.raises(DataError, match=ids[3]):
        tokenize.run(changed, RunStore(changed))


@pytest.fixture
def tiny_random_clip(tmp_path):
    """A randomly initialised, tiny CLIP vision model: exercises the image path, not image quality."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    folder = tmp_path / "tiny-clip"
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def test_image_path_with_tiny_random_clip_and_an_unreadable_image(ray_cluster, tmp_path, tiny_random_clip):
    cfg = load_config(None, SMALL + [f"storage.uri={tmp_path / 'run'}", f"tokenize.image_encoder={tiny_random_clip}",
                                     "tokenize.rqvae.epochs=10"])
    store = RunStore(cfg)
    prepare.run(cfg, store)
    items = store.read_table("prepare", "items")
    store.fs.delete_file(items.column("image_uri")[0].as_py())
    out = tokenize.run(cfg, store)
    assert out.entry.report["images_unreadable"] == 1
    embeddings = store.read_table("tokenize", "embeddings")
    image = np.stack(embeddings.column("image_embedding").to_numpy(zero_copy_only=False))
    assert image.shape == (80, 16)
    assert (np.abs(image).sum(1) == 0).sum() == 1, "only the unreadable image is a zero vector"
    assert len(np.unique(_codes(out.sids), axis=0)) == 80


def test_bad_embeddings_name_the_items():
    table = pa.table({"item_id": ["a", "b"], "text_embedding": [[0.1, 0.2], [float("nan"), 0.0]]})
    with pytest.raises(DataError, match=r"NaN or infinite for items \['b'\]"):
        tokenize.check_embeddings(table)
    with pytest.raises(DataError, match=r"wrong dimension \(not 2\) for items \['c'\]"):
        tokenize.check_embeddings(pa.table({"item_id": ["a", "b", "c"], "text_embedding": [[0.1, 0.2], [0.3, 0.4], [0.5]]}))
    with pytest.raises(DataError, match="duplicate item ids"):
        tokenize.check_embeddings(pa.table({"item_id": ["a", "a"], "text_embedding": [[0.1], [0.2]]}))
    with pytest.raises(DataError, match="no items"):
        tokenize.check_embeddings(pa.table({"item_id": pa.array([], pa.string())}))


def test_fewer_items_than_codes_is_an_error_before_any_item_is_embedded(ray_cluster, tmp_path):
    with pytest.raises(DataError, match="80 items are fewer than rqvae.codebook_size=128"):
        _run(tmp_path, "tokenize.rqvae.codebook_size=128")
    cfg = _config(tmp_path)
    assert tokenize.known_embeddings(cfg, RunStore(cfg)) == {}, "no item was embedded (the embedding cache is empty)"


def test_interest_channel_appends_descriptor_vectors_and_groups_the_first_sid_level_by_true_interest(ray_cluster, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sklearn.metrics import normalized_mutual_info_score

    from deepinterestgr.weights import resolve_text_encoder
    from ray_jobs import mine

    indirect = ["data.synthetic.interest_text=indirect", "tokenize.method=rkmeans", "data.synthetic.num_items=160"]
    cfg = load_config(None, SMALL + [f"storage.uri={tmp_path}", *indirect])
    store = RunStore(cfg)
    prepare.run(cfg, store)
    truth = {r["item_id"]: r["interests"] for r in store.read_table("prepare", "item_truth").to_pylist()}
    ids = sorted(truth)
    # every fourth item stays unmined: its channel repeats its text vector
    described = {i: [{"descriptor": d, "confidence": 1.0, "sources": ["test"]} for d in truth[i]] for k, i in enumerate(ids) if k % 4}
    mine.commit_descriptors(cfg, store, described, "test")

    def first_level_purity(channel: bool) -> tuple[float, pa.Table]:
        run_cfg = load_config(None, SMALL + [f"storage.uri={tmp_path}", *indirect, f"tokenize.interest_channel={str(channel).lower()}"])
        run_store = RunStore(run_cfg)
        codes = _codes(tokenize.run(run_cfg, run_store).sids)[:, 0]
        main = [truth[i][0] for i in ids]
        return normalized_mutual_info_score(main, codes), run_store.read_table("tokenize", "embeddings").sort_by("item_id")

    folded, folded_table = first_level_purity(False)
    appended, table = first_level_purity(True)
    assert "interest_embedding" not in folded_table.column_names
    text = np.stack(table.column("text_embedding").to_numpy(zero_copy_only=False))
    channel = np.stack(table.column("interest_embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(text, np.stack(folded_table.column("text_embedding").to_numpy(zero_copy_only=False)))
    unmined = [k for k, i in enumerate(ids) if i not in described]
    np.testing.assert_array_equal(channel[unmined], text[unmined])
    encoder = SentenceTransformer(resolve_text_encoder(cfg.tokenize.text_encoder), device="cpu")
    mined = [k for k, i in enumerate(ids) if i in described][:8]
    expected = encoder.encode(["; ".join(truth[ids[k]]) for k in mined], normalize_embeddings=True)
    np.testing.assert_allclose(channel[mined], expected, atol=1e-5)
    assert appended > folded + 0.1, (appended, folded)
