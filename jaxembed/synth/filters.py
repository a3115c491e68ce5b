"""Filters on generated records: length bounds, exact duplicates and near-duplicates
(MinHash LSH over character 5-grams of the query, datasketch), each counted by rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FilterSettings:
    min_query_words: int = 2
    max_query_words: int = 128
    near_duplicate_threshold: float = 0.85  # Jaccard similarity of 5-gram sets; 0 = off
    num_perm: int = 64


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


class RecordFilter:
    """`rule(record)` is None for a record to keep, else the rule it breaks; a kept record
    is remembered, so later duplicates of it are caught (`remember` refills it on resume)."""

    def __init__(self, settings: FilterSettings):
        from datasketch import MinHashLSH

        self.settings = settings
        self.seen: set[str] = set()
        self.lsh = (
            MinHashLSH(threshold=settings.near_duplicate_threshold, num_perm=settings.num_perm)
            if settings.near_duplicate_threshold
            else None
        )

    def _minhash(self, text: str):
        from datasketch import MinHash

        grams = {text[i : i + 5] for i in range(max(1, len(text) - 4))}
        m = MinHash(num_perm=self.settings.num_perm, seed=1)
        m.update_batch([g.encode() for g in grams])
        return m

    def rule(self, record: dict[str, Any]) -> str | None:
        s = self.settings
        query = normalized(record["query"])
        words = len(query.split())
        if words < s.min_query_words:
            return "query too short"
        if words > s.max_query_words:
            return "query too long"
        if query in self.seen:
            return "duplicate"
        if self.lsh is not None and self.lsh.query(self._minhash(query)):
            return "near duplicate"
        return None

    def remember(self, record: dict[str, Any]) -> None:
        query = normalized(record["query"])
        if query in self.seen:
            return
        self.seen.add(query)
        if self.lsh is not None:
            self.lsh.insert(query, self._minhash(query))

    def forget(self, record: dict[str, Any]) -> None:
        """A remembered record dropped after all (the round trip): it blocks nothing."""
        query = normalized(record["query"])
        if query in self.seen:
            self.seen.discard(query)
            if self.lsh is not None:
                self.lsh.remove(query)
