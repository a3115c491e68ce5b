"""`--endpoint URL[,model=NAME][,weight=W]`: the servers a synth run asks, and which one
asks for each item (drawn by weight from the item's own seeded generator)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from jaxembed.errors import UserInputError


@dataclass(frozen=True)
class Endpoint:
    url: str  # the OpenAI base URL, e.g. http://127.0.0.1:8000/v1
    model: str = ""  # "" = the first model the server lists
    weight: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.url}#{self.model}" if self.model else self.url


def parse_endpoint(spec: str) -> Endpoint:
    url, *options = [part.strip() for part in spec.split(",")]
    if not url.startswith(("http://", "https://")):
        raise UserInputError(f"--endpoint {spec!r}: the URL must start with http:// or https://")
    fields: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("model", "weight"):
            raise UserInputError(f"--endpoint {spec!r}: {option!r} is not model=NAME or weight=W")
        fields[key] = value
    try:
        weight = float(fields.get("weight", 1.0))
    except ValueError:
        raise UserInputError(f"--endpoint {spec!r}: weight must be a number") from None
    if not weight > 0:
        raise UserInputError(f"--endpoint {spec!r}: weight must be > 0")
    return Endpoint(url.rstrip("/"), fields.get("model", ""), weight)


def api_key(env_var: str) -> str:
    """The key from `env_var`; local servers take any, so a placeholder when unset."""
    return os.environ.get(env_var) or "none"


def draw(endpoints: list[Endpoint], rng: random.Random) -> Endpoint:
    return rng.choices(endpoints, weights=[e.weight for e in endpoints])[0]
