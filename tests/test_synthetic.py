import io

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from deepinterestgr.config import DataConfig, SyntheticConfig
from deepinterestgr.data.registry import load_raw
from deepinterestgr.data.synthetic import CATALOG, generate_synthetic


def _small(**kw):
    return DataConfig(loader="synthetic", synthetic=SyntheticConfig(**{"num_items": 60, "num_users": 80, **kw}))


def test_same_seed_same_data_and_images():
    a, b = load_raw(_small(), seed=7), load_raw(_small(), seed=7)
    assert a.items.equals(b.items) and a.interactions.equals(b.interactions)
    assert a.images == b.images
    assert a.extras["user_truth"].equals(b.extras["user_truth"])
    c = load_raw(_small(), seed=8)
    assert not c.interactions.equals(a.interactions)


def test_images_encode_the_category_colour():
    raw = load_raw(_small(), seed=1)
    truth = {row["item_id"]: row for row in raw.extras["item_truth"].to_pylist()}
    for item_id, png in list(raw.images.items())[:10]:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        assert image.getpixel((image.width - 1, 0)) == CATALOG[truth[item_id]["category"]][2]


def test_sequences_follow_user_interests_up_to_the_noise():
    raw = load_raw(_small(noise=0.1), seed=2)
    item_interests = {r["item_id"]: set(r["interests"]) for r in raw.extras["item_truth"].to_pylist()}
    user_interests = {r["user_id"]: set(r["interests"]) for r in raw.extras["user_truth"].to_pylist()}
    rows = raw.interactions.to_pylist()
    matching = sum(bool(item_interests[r["item_id"]] & user_interests[r["user_id"]]) for r in rows)
    assert matching / len(rows) > 0.85
    lengths = raw.interactions.group_by("user_id").aggregate([("item_id", "count")]).column("item_id_count")
    assert pc.min(lengths).as_py() >= 5 and pc.max(lengths).as_py() <= 20


def test_titles_and_descriptions_carry_the_latent_interests():
    raw = load_raw(_small(), seed=3)
    truth = {r["item_id"]: r["interests"] for r in raw.extras["item_truth"].to_pylist()}
    for item in raw.items.to_pylist():
        assert all(interest in item["description"] for interest in truth[item["item_id"]])


def test_indirect_catalog_names_no_interest_and_implies_each_true_one_in_the_description():
    from deepinterestgr.data.synthetic import CUES

    assert set(CUES) == {interest for _, interests, _ in CATALOG.values() for interest in interests}
    raw = load_raw(_small(interest_text="indirect"), seed=3)
    truth = {r["item_id"]: r["interests"] for r in raw.extras["item_truth"].to_pylist()}
    for item in raw.items.to_pylist():
        text = f"{item['title']} {item['description']}".lower()
        assert not [interest for interest in CUES if interest in text], item
        assert all(any(cue in item["description"] for cue in CUES[interest]) for interest in truth[item["item_id"]])
    # The users' behaviour is drawn from the same latent interests as in the named catalog.
    named = load_raw(_small(), seed=3)
    assert named.extras["user_truth"].num_rows == raw.extras["user_truth"].num_rows


def test_user_blocks_are_independent_streams_and_one_block_is_the_whole_generator():
    from deepinterestgr.data.synthetic import synthetic_catalog, synthetic_users

    cfg = _small(num_users=90, block_users=40)
    catalog = synthetic_catalog(cfg.synthetic, 0)
    late_first = [synthetic_users(cfg.synthetic, 0, catalog.draws, block)[0] for block in (2, 1, 0)]
    whole = generate_synthetic(cfg, 0).interactions
    assert pa.concat_tables(late_first[::-1]).equals(whole), "blocks drawn in any order give the same data"
    assert set(late_first[0].column("user_id").to_pylist()) == {f"u{i:05d}" for i in range(80, 90)}
    one_block = generate_synthetic(_small(num_users=90, block_users=90), 0)
    assert one_block.interactions.slice(0, late_first[2].num_rows).equals(late_first[2]), "block 0 continues the catalog's stream"
    assert not one_block.interactions.equals(whole), "later blocks draw from their own seeds"
