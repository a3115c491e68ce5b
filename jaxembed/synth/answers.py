"""An LLM's answer as a JSON object of the fields a strategy asks for.

The JSON is read with `json.loads` (never `eval`), mended by json_repair where it is not
quite JSON; an answer wrapped in prose or a Markdown code fence is read from its first `{`.
A missing field, a field of the wrong type or an empty string is a `BadAnswer` with the
reason, which the runner retries and, in the end, writes to the rejects file with the raw
text.
"""

from __future__ import annotations

import json
from typing import Any


class BadAnswer(ValueError):
    """The answer is not what was asked for; the message is the reason (short, stable)."""


def parse_object(text: str) -> dict[str, Any]:
    """The answer's JSON object. Strict JSON first; else the common slips of small models
    (a trailing comma, an object left open when `max_tokens` ran out, chatter after it) are
    mended by json_repair, keeping only the strings that were closed in the answer itself,
    so a value cut off mid-way is missing, never shortened."""
    start = text.find("{")
    if start < 0:
        raise BadAnswer("no JSON object")
    end = text.rfind("}")
    try:
        value = json.loads(text[start : end + 1]) if end > start else None
    except (ValueError, RecursionError):  # JSONDecodeError, a huge int, deep nesting
        value = None
    if value is None:
        value = _repaired(text[start:])
    if not isinstance(value, dict):
        raise BadAnswer("not a JSON object")
    return value


def _repaired(text: str) -> Any:
    import json_repair

    try:
        value = json_repair.repair_json(text, return_objects=True)
        value = _closed_strings(value, text) if isinstance(value, dict) else None
    except Exception:  # noqa: BLE001 - whatever the mender trips on, the answer is bad
        value = None
    if not value:
        raise BadAnswer("malformed JSON")
    return value


def _closed_strings(value: Any, raw: str) -> Any:
    if isinstance(value, str):
        closed = json.dumps(value, ensure_ascii=False) in raw or json.dumps(value) in raw
        return value if closed else None
    if isinstance(value, list):
        items = [_closed_strings(v, raw) for v in value]
        return [v for v in items if v is not None]
    if isinstance(value, dict):
        items = {k: _closed_strings(v, raw) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not None}
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
