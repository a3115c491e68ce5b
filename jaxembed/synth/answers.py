"""An LLM's answer as a JSON object of the fields a strategy asks for.

The JSON is read with `json.loads` only (never `eval`); an answer wrapped in prose or a
Markdown code fence is read from its first `{` to its last `}`. A missing field, a field of
the wrong type or an empty string is a `BadAnswer` with the reason, which the runner retries
and, in the end, writes to the rejects file with the raw text.
"""

from __future__ import annotations

import json
from typing import Any


class BadAnswer(ValueError):
    """The answer is not what was asked for; the message is the reason (short, stable)."""


def parse_object(text: str) -> dict[str, Any]:
    start, end = text.find("{"), text.rfind("}")
    if start < 0:
        raise BadAnswer("no JSON object")
    if end <= start:  # cut off (max_tokens) or never closed
        raise BadAnswer("malformed JSON")
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        raise BadAnswer("malformed JSON") from None
    if not isinstance(value, dict):
        raise BadAnswer("not a JSON object")
    return value


def text_field(answer: dict[str, Any], key: str) -> str:
    value = answer.get(key)
    if not isinstance(value, str):
        raise BadAnswer(f"missing {key}" if value is None else f"{key} is not a string")
    value = " ".join(value.split())
    if not value:
        raise BadAnswer(f"empty {key}")
    return value


def text_list(answer: dict[str, Any], key: str, minimum: int = 1) -> list[str]:
    value = answer.get(key)
    if not isinstance(value, list):
        raise BadAnswer(f"missing {key}" if value is None else f"{key} is not a list")
    items = [" ".join(v.split()) for v in value if isinstance(v, str) and v.strip()]
    if len(items) < minimum:
        raise BadAnswer(f"{key} has fewer than {minimum} strings")
    return items
