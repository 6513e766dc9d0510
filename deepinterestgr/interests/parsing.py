"""From free-form model text to validated records: find the JSON, check it, normalise, merge.

Small models wrap their answer in reasoning, repeat the example, or stop mid-object; every parser
here either returns a clean value or raises ParseError saying what was wrong, so the caller can
retry the row and finally record it as failed with its raw text.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata

MAX_DESCRIPTOR_CHARS = 120
MAX_CAPTION_CHARS = 600
_SPACE = re.compile(r"\s+")
_EDGE_PUNCTUATION = " .,;:!?\"'`-*•"
# Placeholders copied from the prompt's answer template are not answers.
_TEMPLATE_VALUES = {"...", "…", "descriptor", "string", ""}


class ParseError(ValueError):
    """A model answer that does not hold the expected JSON; the message says what is missing."""


def normalise(text: str) -> str:
    """NFKC, casefold, collapse whitespace, strip surrounding punctuation."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip(_EDGE_PUNCTUATION)


def json_objects(text: str) -> list[dict]:
    """Every top-level JSON object embedded in `text`, in order of appearance."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while (start := text.find("{", position)) != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        if isinstance(value, dict):
            found.append(value)
        position = end
    return found


def _last_with(text: str, key: str) -> dict:
    # The answer comes after the reasoning, so the last object holding the key is the answer.
    objects = [o for o in json_objects(text) if key in o]
    if not objects:
        raise ParseError(f"no JSON object with {key!r} in the answer")
    return objects[-1]


def _truncated_list(text: str, key: str) -> list | None:
    """The complete elements of `"key": [...` in an answer cut off before its object closed.

    Small models often loop on entries until they run out of tokens; the entries they finished are
    still answers.
    """
    start = text.rfind(f'"{key}"')
    if start < 0:
        return None
    bracket = text.find("[", start)
    if bracket < 0:
        return None
    decoder, items, position = json.JSONDecoder(), [], bracket + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return items
        items.append(value)


def _confidence(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParseError(f"confidence {value!r} is not a number")
    if not 0.0 <= value <= 1.0:
        raise ParseError(f"confidence {value!r} is outside [0, 1]")
    return float(value)


def example_descriptors(example_answer: str) -> frozenset[str]:
    """The normalised descriptors of a prompt's worked example: small models copy them verbatim."""
    return frozenset(normalise(d["descriptor"]) for o in json_objects(example_answer) for d in o.get("descriptors", []))


def parse_descriptors(text: str, max_descriptors: int, copied: frozenset[str] = frozenset()) -> list[dict]:
    """`{"descriptors": [{"descriptor", "confidence"}]}` -> normalised, deduplicated, strongest first.

    Entries with an empty, placeholder, overlong or `copied` (from the prompt's example) descriptor
    or a bad confidence are dropped; an answer left with none is a ParseError.
    """
    try:
        entries = _last_with(text, "descriptors")["descriptors"]
    except ParseError:
        entries = _truncated_list(text, "descriptors")
        if not entries:
            raise
    if not isinstance(entries, list):
        raise ParseError("'descriptors' is not a list")
    kept: dict[str, float] = {}
    problems = []
    for entry in entries:
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("descriptor"), str):
                raise ParseError("an entry has no descriptor string")
            descriptor = normalise(entry["descriptor"])
            if descriptor in _TEMPLATE_VALUES or len(descriptor) > MAX_DESCRIPTOR_CHARS:
                raise ParseError(f"descriptor {entry['descriptor'][:40]!r} is empty, a placeholder or too long")
            if descriptor in copied:
                raise ParseError(f"descriptor {descriptor!r} is copied from the prompt's example")
            confidence = _confidence(entry.get("confidence"))
        except ParseError as exc:
            problems.append(str(exc))
            continue
        kept[descriptor] = max(confidence, kept.get(descriptor, 0.0))
    if not kept:
        raise ParseError("no valid descriptor" + (f" ({problems[0]})" if problems else ""))
    ranked = sorted(kept.items(), key=lambda pair: (-pair[1], pair[0]))[:max_descriptors]
    return [{"descriptor": d, "confidence": c} for d, c in ranked]


def merge_descriptors(by_source: dict[str, list[dict]], max_descriptors: int) -> list[dict]:
    """One list from several miners: same normalised text merged (highest confidence, every source)."""
    merged: dict[str, dict] = {}
    for source in sorted(by_source):
        for entry in by_source[source]:
            current = merged.setdefault(entry["descriptor"], {"descriptor": entry["descriptor"], "confidence": 0.0, "sources": []})
            current["confidence"] = max(current["confidence"], entry["confidence"])
            current["sources"].append(source)
    ranked = sorted(merged.values(), key=lambda d: (-d["confidence"], -len(d["sources"]), d["descriptor"]))
    return ranked[:max_descriptors]


def _phrases(payload: dict, key: str) -> list[str]:
    value = payload.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ParseError(f"{key!r} is not a list")
    out = []
    for item in value:
        phrase = normalise(item) if isinstance(item, str) else ""
        if phrase not in _TEMPLATE_VALUES and len(phrase) <= MAX_DESCRIPTOR_CHARS and phrase not in out:
            out.append(phrase)
    return out


def parse_user_interests(text: str) -> str:
    """`{"long_term": [...], "short_term": [...]}` -> one line the recommender prompts can carry."""
    try:
        payload = _last_with(text, "long_term") if "long_term" in text else _last_with(text, "short_term")
    except ParseError:
        payload = {key: found for key in ("long_term", "short_term") if (found := _truncated_list(text, key))}
    long_term, short_term = _phrases(payload, "long_term"), _phrases(payload, "short_term")
    if not long_term and not short_term:
        raise ParseError("no long- or short-term interest")
    parts = []
    if long_term:
        parts.append("long-term: " + ", ".join(long_term))
    if short_term:
        parts.append("short-term: " + ", ".join(short_term))
    return "; ".join(parts)


def parse_label(text: str) -> int:
    """`{"label": 0 | 1}` -> the label."""
    label = _last_with(text, "label")["label"]
    if isinstance(label, str) and label.strip() in ("0", "1"):
        label = int(label.strip())
    if isinstance(label, bool) or label not in (0, 1):
        raise ParseError(f"label {label!r} is not 0 or 1")
    return int(label)


def parse_label_probability(text: str, steps: list[dict[str, float]]) -> float:
    """p(label 1) from the judge's answer: p("1") / (p("1") + p("0")) at the first answer step whose
    likeliest tokens hold either digit; without log-probabilities, the parsed label (0.0 or 1.0)."""
    for step in steps:
        digits = {}
        for token, logprob in step.items():
            if token.strip() in ("0", "1"):
                digits[token.strip()] = max(digits.get(token.strip(), -math.inf), logprob)
        if digits:
            floor = min(step.values()) - math.log(2)  # a digit outside the top k is less likely than all of them
            one, zero = digits.get("1", floor), digits.get("0", floor)
            return 1.0 / (1.0 + math.exp(zero - one))
    return float(parse_label(text))


def parse_caption(text: str) -> str:
    """Free text, whitespace collapsed and bounded; empty is a ParseError."""
    caption = _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    if not caption:
        raise ParseError("empty caption")
    return caption[:MAX_CAPTION_CHARS]
