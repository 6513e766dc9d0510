"""The embedded default dataset: a seeded catalog whose items carry known latent interests.

Titles, descriptions and a small PNG per item are built from each item's category and interests
(background colour = category, shapes = interests), and users draw their sequences from 1..N
interests with noise and stickiness. With `interest_text: indirect` no text names an interest: the
title is brand, adjective and product, and the description describes each interest by a situation
that implies it ("feeding a sourdough starter" for baking bread), so the interests must be inferred. The ground truth is kept so later stages can measure how well
mining recovers it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from deepinterestgr.config import DataConfig, SyntheticConfig
from deepinterestgr.data.schema import RawData
from deepinterestgr.data.tables import interactions_table, items_table

USER_TRUTH_SCHEMA = pa.schema([("user_id", pa.string()), ("interests", pa.list_(pa.string()))])

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
# interest -> phrases that imply it without naming it (the indirect catalog's descriptions)
CUES: dict[str, tuple[str, str]] = {
    "meal prep": ("portioning five lunches every Sunday", "stacking containers of batch-cooked rice"),
    "baking bread": ("feeding a sourdough starter", "shaping loaves before the overnight proof"),
    "healthy smoothies": ("blending kale with frozen berries", "a green drink before work"),
    "camp cooking": ("frying breakfast over a fire pit", "dinner beside the tent at dusk"),
    "hosting dinner parties": ("serving twelve guests at a long table", "plating a three-course menu for friends"),
    "quick weeknight dinners": ("supper on the table in twenty minutes", "tired evenings after the commute"),
    "ultralight hiking": ("counting every gram in the pack", "long miles with a base weight under ten pounds"),
    "family camping": ("a weekend at the campground with the kids", "setting up camp for four with a toddler"),
    "trail running": ("fast miles on muddy singletrack", "races through forest paths"),
    "bird watching": ("spotting warblers at dawn", "keeping a life list of species"),
    "backcountry fishing": ("casting for trout in remote alpine lakes", "wading a creek far from any road"),
    "stargazing": ("finding nebulae on a moonless night", "lying in a dark field looking up at the Milky Way"),
    "home office ergonomics": ("a desk that spares your neck and wrists", "eight-hour workdays at the kitchen corner"),
    "bullet journaling": ("dot-grid spreads and habit trackers", "a monthly log drawn by hand"),
    "calligraphy": ("practising italic hand lettering", "nib strokes with thick and thin lines"),
    "remote meetings": ("looking sharp on video calls", "a clean background for the daily stand-up"),
    "exam studying": ("cramming flashcards before finals", "late nights revising lecture notes"),
    "project planning": ("mapping milestones and deadlines for a team", "gantt charts on the wall"),
    "strength training": ("adding plates to your squat every week", "heavy sets and progressive overload"),
    "yoga practice": ("holding downward dog through a morning flow", "sun salutations on a quiet mat"),
    "marathon training": ("building up to a twenty-mile long run", "race day at mile 26"),
    "injury recovery": ("easing a sore knee back into motion", "physiotherapy exercises after a sprain"),
    "home workouts": ("a sweat session in the living room", "circuits without a gym membership"),
    "cycling endurance": ("century rides on the weekend", "hours in the saddle on long climbs"),
    "learning guitar": ("your first chords and strumming patterns", "practising scales on a beginner's fretboard"),
    "home recording": ("tracking vocals in a spare bedroom", "laying down demos straight into the laptop"),
    "podcasting": ("a weekly talk show with a co-host", "publishing interview episodes"),
    "classical piano": ("Chopin nocturnes and Bach preludes", "preparing a conservatory recital"),
    "dj mixing": ("beatmatching two tracks at the club", "a crowd dancing to your set"),
    "live performance": ("playing gigs on a loud stage", "touring bars with the band"),
    "vegetable growing": ("tomatoes and courgettes in the backyard plot", "harvesting beans all summer"),
    "indoor herbs": ("basil and mint on the windowsill", "fresh parsley grown in the kitchen"),
    "bonsai care": ("wiring and pinching a tiny juniper", "shaping miniature trees in shallow pots"),
    "composting": ("turning food scraps into rich soil", "a bin of worms and kitchen peelings"),
    "flower arranging": ("bouquets of peonies for the table", "cutting stems for a vase display"),
    "lawn care": ("a striped green yard every Saturday", "keeping the grass thick and weed-free"),
    "long-haul flights": ("fourteen hours in economy class", "sleeping across time zones on the plane"),
    "business travel": ("client visits in three cities a week", "hotel check-ins before a sales pitch"),
    "backpacking abroad": ("hostels across Southeast Asia", "months on the road with one bag"),
    "road trips": ("driving coast to coast with the windows down", "motel stops along the interstate"),
    "beach vacations": ("sand, sunscreen and turquoise water", "a week by the sea in the resort"),
    "photography trips": ("chasing golden-hour light in distant landscapes", "travelling with a camera bag and tripod"),
    "competitive shooters": ("ranked matches where reflexes decide", "headshots in tournament lobbies"),
    "retro gaming": ("8-bit classics from the eighties", "cartridges and pixel art of old consoles"),
    "game streaming": ("broadcasting your play to live viewers", "chat and overlays while you play online"),
    "strategy games": ("planning empires turn by turn", "outthinking opponents in long campaigns"),
    "racing simulators": ("lap times on a virtual Nurburgring", "a wheel, pedals and realistic tyre physics"),
    "couch co-op": ("split-screen sessions with friends on the sofa", "passing the second pad to a sibling"),
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


@dataclass
class UserDraws:
    """What user blocks draw from (8 bytes per item, not the catalog's texts): each block's task gets a copy."""

    # interest -> catalog indices of the items that carry it (item i's id is `item_id(i)`)
    pools: dict[str, np.ndarray]
    # the random stream's state after the catalog: user block 0 continues it
    state: dict


@dataclass
class SyntheticCatalog:
    """The items, their true interests and images, and what user blocks draw from."""

    items: list[dict]
    item_truth: list[dict]
    images: dict[str, bytes]
    draws: UserDraws


def item_id(index: int) -> str:
    """The synthetic id of catalog item `index`."""
    return f"i{index:05d}"


def synthetic_catalog(s: SyntheticConfig, seed: int) -> SyntheticCatalog:
    """The catalog for `seed`, drawn item by item from one random stream."""
    rng = np.random.default_rng(seed)
    categories = list(CATALOG)[: s.num_categories]
    items, item_truth, images = [], [], {}
    pools: dict[str, list[int]] = {}
    for index in range(s.num_items):
        category = categories[int(rng.integers(len(categories)))]
        nouns, interests, colour = CATALOG[category]
        pool = interests[: s.interests_per_category]
        picks = sorted(rng.choice(len(pool), size=int(rng.integers(1, 3)), replace=False).tolist())
        chosen = [pool[p] for p in picks]
        noun = nouns[int(rng.integers(len(nouns)))]
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        adjective = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
        model = int(rng.integers(100, 999))
        if s.interest_text == "named":
            title = f"{brand} {adjective} {noun} for {chosen[0]}"
            description = f"A {adjective} {noun} from {brand}, designed for {' and '.join(chosen)}. Model {model}, {category} line."
        else:
            cues = [CUES[interest][int(rng.integers(2))] for interest in chosen]
            title = f"{brand} {adjective} {noun}"
            description = f"A {adjective} {noun} from {brand}, made for {' and for '.join(cues)}. Model {model}, {category} line."
        key = item_id(index)
        items.append({"item_id": key, "title": title, "description": description, "brand": brand, "categories": [category]})
        item_truth.append({"item_id": key, "category": category, "interests": chosen})
        if s.images:
            images[key] = _image(s.image_size, colour, [SHAPES[p] for p in picks])
        for interest in chosen:
            pools.setdefault(interest, []).append(index)
    draws = UserDraws({k: np.array(v, dtype=np.int64) for k, v in pools.items()}, rng.bit_generator.state)
    return SyntheticCatalog(items, item_truth, images, draws)


def user_blocks(s: SyntheticConfig) -> int:
    """How many blocks of `block_users` users the generator draws."""
    return -(-s.num_users // s.block_users)


def synthetic_users(s: SyntheticConfig, seed: int, draws: UserDraws, block: int) -> tuple[pa.Table, pa.Table]:
    """Interactions and true interests of the users of `block`, from the block's own random stream
    (block 0 continues the catalog's, so a one-block catalog is what earlier versions generated):
    blocks can be drawn in any order, on any worker, with the same result."""
    if block == 0:
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = draws.state
    else:
        rng = np.random.default_rng([seed, block])
    available = sorted(draws.pools)
    users, item_ids, times, user_truth = [], [], [], []
    for index in range(block * s.block_users, min(s.num_users, (block + 1) * s.block_users)):
        user_id = f"u{index:05d}"
        count = int(rng.integers(1, min(s.max_user_interests, len(available)) + 1))
        own = [available[k] for k in sorted(rng.choice(len(available), size=count, replace=False).tolist())]
        user_truth.append({"user_id": user_id, "interests": own})
        current = own[int(rng.integers(len(own)))]
        for step in range(int(rng.integers(s.min_sequence, s.max_sequence + 1))):
            if rng.random() < s.noise:
                item = int(rng.integers(s.num_items))
            else:
                if rng.random() >= s.stickiness:
                    current = own[int(rng.integers(len(own)))]
                pool = draws.pools[current]
                item = int(pool[int(rng.integers(len(pool)))])
            users.append(user_id)
            item_ids.append(item_id(item))
            times.append(1_600_000_000 + index * 10 + step * 3600)
    truth = pa.Table.from_pylist(user_truth, schema=USER_TRUTH_SCHEMA)
    return interactions_table(users, item_ids, times), truth


def generate_synthetic(cfg: DataConfig, seed: int) -> RawData:
    """Generate the catalog, users and ground truth for `seed` in this process; same seed, same bytes.
    (The prepare stage draws catalogs of more than one user block on Ray Data instead.)"""
    s: SyntheticConfig = cfg.synthetic
    catalog = synthetic_catalog(s, seed)
    blocks = [synthetic_users(s, seed, catalog.draws, block) for block in range(user_blocks(s))]
    return RawData(
        items=items_table(catalog.items, "synthetic"),
        interactions=pa.concat_tables([b[0] for b in blocks]),
        extras={
            "item_truth": pa.Table.from_pylist(catalog.item_truth),
            "user_truth": pa.concat_tables([b[1] for b in blocks]),
        },
        images=catalog.images,
        order_source="timestamp",
    )
