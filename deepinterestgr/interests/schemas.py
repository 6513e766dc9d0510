"""JSON schemas of the answers the parsers read: what constrained decoding holds each backend to.

The shapes match `parsing` (descriptors with confidences, long/short-term phrases, a 0/1 label), and
the length limits match what the parsers keep, so a constrained answer always parses.
"""

from __future__ import annotations

from deepinterestgr.interests.parsing import MAX_DESCRIPTOR_CHARS

# Shorter than the parsers' limit: three phrases and their confidences must fit the miners' token
# budget (max_new_tokens), or a constrained answer is cut off before its JSON closes.
PHRASE_CHARS = min(60, MAX_DESCRIPTOR_CHARS)
_PHRASE = {"type": "string", "minLength": 3, "maxLength": PHRASE_CHARS}


def descriptors_schema(max_descriptors: int) -> dict:
    """`{"descriptors": [{"descriptor": ..., "confidence": 0..1}]}`, 1 to `max_descriptors` of them."""
    descriptor = {"type": "object", "properties": {"descriptor": _PHRASE, "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
                  "required": ["descriptor", "confidence"], "additionalProperties": False}
    return {"type": "object", "properties": {"descriptors": {"type": "array", "items": descriptor, "minItems": 1,
                                                             "maxItems": max_descriptors}},
            "required": ["descriptors"], "additionalProperties": False}


# Up to three shorter phrases per horizon: six phrases must fit the same budget as three descriptors.
USER_INTERESTS_SCHEMA = {
    "type": "object",
    "properties": {key: {"type": "array", "items": {**_PHRASE, "maxLength": 40}, "minItems": 1, "maxItems": 3}
                   for key in ("long_term", "short_term")},
    "required": ["long_term", "short_term"], "additionalProperties": False,
}

LABEL_SCHEMA = {"type": "object", "properties": {"label": {"type": "integer", "enum": [0, 1]}},
                "required": ["label"], "additionalProperties": False}
