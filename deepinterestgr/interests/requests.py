"""Chat requests for each LLM task, built from versioned templates (deepinterestgr/prompts/*.yaml).

A request is a list of OpenAI-style chat messages; an image travels as an `image_url` content part,
which the local, vLLM and HTTP backends all accept. Descriptions are cut so that the prompt fits the
model's budget (`max_prompt_tokens`, counted here as 4 characters per token before the model's own
tokenizer sees it); the caller counts the cut rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepinterestgr.prompts import fill

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Request:
    """The messages of one row, and whether its text was cut to fit."""

    messages: list[dict]
    truncated: bool = False


def _budget(template: str, max_prompt_tokens: int, *fixed: str) -> int:
    # Placeholders filled with short values (counts, ids) may add a few characters: keep a margin.
    used = len(template) + sum(len(part) for part in fixed) + 32
    return max(0, max_prompt_tokens * CHARS_PER_TOKEN - used)


def _line(templates: dict, name: str, value: str | None, **extra) -> str:
    return fill(templates[f"{name}_line"], **{name: value}, **extra) if value else ""


def item_request(templates: dict, title: str, description: str | None, caption: str | None,
                 max_descriptors: int, max_prompt_tokens: int) -> Request:
    """Mine an item's purchase motivations from its title, description and image caption."""
    title, description, caption = (title or "").strip(), (description or "").strip(), (caption or "").strip()
    budget = _budget(templates["item_system"] + templates["item_example_user"] + templates["item_example_assistant"]
                     + templates["item_user"] + templates["description_line"] + templates["caption_line"],
                     max_prompt_tokens, title, caption)
    truncated = len(description) > budget
    description = description[:budget]
    user = fill(templates["item_user"], title=title, max_descriptors=max_descriptors,
                description_line=_line(templates, "description", description),
                caption_line=_line(templates, "caption", caption))
    messages = [
        {"role": "system", "content": templates["item_system"]},
        {"role": "user", "content": templates["item_example_user"]},
        {"role": "assistant", "content": templates["item_example_assistant"]},
        {"role": "user", "content": user},
    ]
    return Request(messages, truncated)


def user_request(templates: dict, titles: list[str], max_prompt_tokens: int) -> Request:
    """Long- and short-term interests from a user's most recent titles (the oldest are cut first)."""
    budget = _budget(templates["user_system"] + templates["user_user"], max_prompt_tokens)
    kept, used = [], 0
    for title in reversed([t.strip() for t in titles if t and t.strip()]):
        if used + len(title) + 3 > budget and kept:
            break
        kept.insert(0, title)
        used += len(title) + 3
    lines = "\n".join(f"- {t}" for t in kept)
    messages = [{"role": "system", "content": templates["user_system"]},
                {"role": "user", "content": fill(templates["user_user"], titles=lines)}]
    return Request(messages, len(kept) < len([t for t in titles if t and t.strip()]))


def caption_request(templates: dict, title: str, image_url: str) -> Request:
    """Describe the item's image from visible evidence only; `image_url` is a URL or a data: URI."""
    content = [{"type": "image_url", "image_url": {"url": image_url}},
               {"type": "text", "text": fill(templates["caption_user"], title=(title or "").strip())}]
    return Request([{"role": "system", "content": templates["caption_system"]}, {"role": "user", "content": content}])


def judge_request(templates: dict, title: str, description: str | None, descriptor: str, max_prompt_tokens: int) -> Request:
    """Ask the judge whether a descriptor is specific, actionable and grounded in the item."""
    description = (description or "").strip()
    budget = _budget(templates["judge_system"] + templates["judge_user"], max_prompt_tokens, title or "", descriptor)
    user = fill(templates["judge_user"], title=(title or "").strip(), descriptor=descriptor,
                description_line=_line(templates, "description", description[:budget]))
    messages = [{"role": "system", "content": templates["judge_system"]}]
    for example in ("good_example", "bad_example"):
        messages += [{"role": "user", "content": templates[f"{example}_user"]}, {"role": "assistant", "content": templates[f"{example}_assistant"]}]
    return Request(messages + [{"role": "user", "content": user}], len(description) > budget)
