"""Reading JSONL input with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxembed.errors import UserInputError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every line; bad UTF-8, bad JSON or a non-object is an error."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserInputError(f"{path}:{number}: invalid UTF-8 ({e.reason})") from e
            if not line.strip():
                raise UserInputError(f"{path}:{number}: empty line")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserInputError(f"{path}:{number}: invalid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise UserInputError(f"{path}:{number}: expected a JSON object")
            yield number, record


def read_texts(path: str | Path, key: str = "text") -> list[str]:
    """The `key` string of every line of a JSONL file."""
    texts = []
    for number, record in iter_jsonl(path):
        value = record.get(key)
        if not isinstance(value, str):
            problem = "missing" if value is None else f"not a string ({type(value).__name__})"
            raise UserInputError(f"{path}:{number}: {key!r} is {problem}")
        texts.append(value)
    if not texts:
        raise UserInputError(f"{path}: no input lines")
    return texts
