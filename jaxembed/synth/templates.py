"""Prompt templates: the versioned ones shipped in `prompts/` (NAME.vN.txt), or a user's
file in their place. A template is text with `{placeholder}` fields (`{{` and `}}` for
literal braces); one missing or unknown placeholder is an error naming the file."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

from jaxembed.errors import UserInputError

PROMPTS = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class Template:
    name: str  # the step it is for, e.g. "seed_corpus"
    text: str
    version: str  # "seed_corpus.v1", or "FILE@sha256[:8]" for a user's file

    def render(self, **values: object) -> str:
        return self.text.format(**values)


def builtin(name: str) -> Template:
    versions = sorted(PROMPTS.glob(f"{name}.v*.txt"), key=lambda p: int(p.stem.rsplit("v", 1)[1]))
    if not versions:
        raise UserInputError(f"no built-in prompt template {name!r}")
    latest = versions[-1]
    return Template(name, latest.read_text(encoding="utf-8"), latest.stem)


def from_file(name: str, path: str | Path, placeholders: frozenset[str]) -> Template:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"{path}: cannot read the prompt template ({e})") from None
    check(text, placeholders, str(path))
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return Template(name, text, f"{path.name}@{digest}")


def check(text: str, placeholders: frozenset[str], source: str) -> None:
    """`text` uses exactly `placeholders` (each at least once, nothing else)."""
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as e:  # an unmatched brace
        raise UserInputError(
            f"{source}: not a valid template ({e}; write {{{{ for a literal brace)"
        ) from None
    missing, unknown = placeholders - used, used - placeholders
    if missing:
        raise UserInputError(
            f"{source}: missing placeholder {', '.join('{' + m + '}' for m in sorted(missing))}"
        )
    if unknown:
        raise UserInputError(
            f"{source}: unknown placeholder {', '.join('{' + u + '}' for u in sorted(unknown))} "
            f"(this template takes {', '.join('{' + p + '}' for p in sorted(placeholders))})"
        )
