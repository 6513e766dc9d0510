"""The embedded default dataset: a seeded catalog whose items carry known latent interests.

Titles, descriptions and a small PNG per item are built from each item's category and interests
(background colour = category, shapes = interests), and users draw their sequences from 1..N
interests with noise and stickiness. The ground truth is kept so later stages can measure how well
mining recovers it.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from deepinterestgr.config import DataConfig, SyntheticConfig
from deepinterestgr.data.schema import RawData
from deepinterestgr.data.tables import interactions_table, items_table

# category -> (nouns, interests, RGB colour)
CATALOG: dict[str, tuple[list[str], list[str], tuple[int, int, int]]] = {
    "kitchen": (
        ["knife set", "cast iron skillet", "blender", "spice rack"],
        ["meal prep", "baking bread", "healthy smoothies", "camp cooking", "hosting dinner parties", "quick weeknight dinners"],
        (220, 80, 60),
    ),
    "outdoor": (
        ["backpack", "tent", "headlamp", "water filter"],
        ["ultralight hiking", "family camping", "trail running", "bird watching", "backcountry fishing", "stargazing"],
        (60, 160, 80),
    ),
    "office": (
        ["desk organizer", "notebook", "pen set", "monitor stand"],
        ["home office ergonomics", "bullet journaling", "calligraphy", "remote meetings", "exam studying", "project planning"],
        (70, 110, 200),
    ),
    "fitness": (
        ["yoga mat", "dumbbell set", "resistance bands", "foam roller"],
        ["strength training", "yoga practice", "marathon training", "injury recovery", "home workouts", "cycling endurance"],
        (230, 170, 40),
    ),
    "music": (
        ["guitar strings", "studio headphones", "metronome", "condenser microphone"],
        ["learning guitar", "home recording", "podcasting", "classical piano", "dj mixing", "live performance"],
        (150, 70, 180),
    ),
    "garden": (
        ["pruning shears", "seed starter kit", "watering can", "raised bed"],
        ["vegetable growing", "indoor herbs", "bonsai care", "composting", "flower arranging", "lawn care"],
        (120, 90, 50),
    ),
    "travel": (
        ["packing cubes", "neck pillow", "travel adapter", "luggage scale"],
        ["long-haul flights", "business travel", "backpacking abroad", "road trips", "beach vacations", "photography trips"],
        (40, 180, 190),
    ),
    "gaming": (
        ["controller", "gaming mouse", "gaming headset", "capture card"],
        ["competitive shooters", "retro gaming", "game streaming", "strategy games", "racing simulators", "couch co-op"],
        (200, 60, 140),
    ),
}
BRANDS = ["Acorn", "Boreal", "Cobalt", "Dune", "Ember", "Fjord", "Granite", "Harbor", "Ion", "Juniper"]
ADJECTIVES = ["compact", "durable", "lightweight", "premium", "adjustable", "classic", "portable", "modular"]
SHAPES = ["ellipse", "rectangle", "triangle", "diamond", "cross", "ring"]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    if shape == "ellipse":
        draw.ellipse(box, fill=fill)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "cross":
        w = max(1, (x1 - x0) // 4)
        draw.rectangle((cx - w, y0, cx + w, y1), fill=fill)
        draw.rectangle((x0, cy - w, x1, cy + w), fill=fill)
    else:
        draw.ellipse(box, outline=fill, width=max(1, (x1 - x0) // 6))


def _image(size: int, colour: tuple[int, int, int], shapes: list[str]) -> bytes:
    image = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(image)
    boxes = [(size // 8, size // 8, size * 5 // 8, size * 5 // 8), (size // 2, size // 2, size * 7 // 8, size * 7 // 8)]
    for shape, box, fill in zip(shapes, boxes, [(255, 255, 255), (20, 20, 20)]):
        _draw_shape(draw, shape, box, fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def generate_synthetic(cfg: DataConfig, seed: int) -> RawData:
    """Generate the catalog, users and ground truth for `seed`; same seed, same bytes."""
    s: SyntheticConfig = cfg.synthetic
    rng = np.random.default_rng(seed)
    categories = list(CATALOG)[: s.num_categories]
    items, item_truth, images = [], [], {}
    items_by_interest: dict[str, list[str]] = {}
    for index in range(s.num_items):
        category = categories[int(rng.integers(len(categories)))]
        nouns, interests, colour = CATALOG[category]
        pool = interests[: s.interests_per_category]
        picks = sorted(rng.choice(len(pool), size=int(rng.integers(1, 3)), replace=False).tolist())
        chosen = [pool[p] for p in picks]
        noun = nouns[int(rng.integers(len(nouns)))]
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        adjective = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
        item_id = f"i{index:05d}"
        items.append(
            {
                "item_id": item_id,
                "title": f"{brand} {adjective} {noun} for {chosen[0]}",
                "description": (
                    f"A {adjective} {noun} from {brand}, designed for {' and '.join(chosen)}. "
                    f"Model {int(rng.integers(100, 999))}, {category} line."
                ),
                "brand": brand,
                "categories": [category],
            }
        )
        item_truth.append({"item_id": item_id, "category": category, "interests": chosen})
        images[item_id] = _image(s.image_size, colour, [SHAPES[p] for p in picks])
        for interest in chosen:
            items_by_interest.setdefault(interest, []).append(item_id)

    available = sorted(items_by_interest)
    all_ids = [item["item_id"] for item in items]
    users, item_ids, times, user_truth = [], [], [], []
    for index in range(s.num_users):
        user_id = f"u{index:05d}"
        count = int(rng.integers(1, min(s.max_user_interests, len(available)) + 1))
        own = [available[k] for k in sorted(rng.choice(len(available), size=count, replace=False).tolist())]
        user_truth.append({"user_id": user_id, "interests": own})
        current = own[int(rng.integers(len(own)))]
        for step in range(int(rng.integers(s.min_sequence, s.max_sequence + 1))):
            if rng.random() < s.noise:
                item = all_ids[int(rng.integers(len(all_ids)))]
            else:
                if rng.random() >= s.stickiness:
                    current = own[int(rng.integers(len(own)))]
                pool = items_by_interest[current]
                item = pool[int(rng.integers(len(pool)))]
            users.append(user_id)
            item_ids.append(item)
            times.append(1_600_000_000 + index * 10 + step * 3600)
    return RawData(
        items=items_table(items, "synthetic"),
        interactions=interactions_table(users, item_ids, times),
        extras={
            "item_truth": pa.Table.from_pylist(item_truth),
            "user_truth": pa.Table.from_pylist(user_truth),
        },
        images=images,
        order_source="timestamp",
    )
