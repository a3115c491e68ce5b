"""The mining report: what each rule removed, who came up short, and score histograms."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

# Cosine scores (and teacher means of them) lie in [-1, 1]; 0.05-wide bins.
HISTOGRAM_EDGES = np.round(np.linspace(-1.0, 1.0, 41), 2)
MAX_LISTED = 100  # short query ids listed in the report; the count is always complete


class _Histogram:
    def __init__(self) -> None:
        self.counts = np.zeros(len(HISTOGRAM_EDGES) - 1, np.int64)
        self.n, self.total = 0, 0.0
        self.low, self.high = np.inf, -np.inf

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        if not values.size:
            return
        clipped = np.clip(values, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1])
        self.counts += np.histogram(clipped, HISTOGRAM_EDGES)[0]
        self.n += values.size
        self.total += float(values.sum())
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))

    def to_json(self) -> dict[str, Any]:
        stats = {"count": self.n, "counts": self.counts.tolist()}
        if self.n:
            stats.update(mean=self.total / self.n, min=self.low, max=self.high)
        return stats


@dataclasses.dataclass
class MiningReport:
    settings: dict[str, Any]
    queries: int = 0
    candidates: int = 0
    removed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    negatives: int = 0
    filled: int = 0
    short_queries: int = 0
    short_query_ids: list[str] = dataclasses.field(default_factory=list)
    positive_scores: _Histogram = dataclasses.field(default_factory=_Histogram)
    negative_scores: _Histogram = dataclasses.field(default_factory=_Histogram)

    def add_short(self, query_id: str) -> None:
        self.short_queries += 1
        if len(self.short_query_ids) < MAX_LISTED:
            self.short_query_ids.append(query_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "queries": self.queries,
            "candidates_examined": self.candidates,
            "removed_by_rule": dict(self.removed),
            "negatives": self.negatives,
            "negatives_filled_at_random": self.filled,
            "queries_short_of_negatives": self.short_queries,
            "short_query_ids": self.short_query_ids,
            "histogram_edges": HISTOGRAM_EDGES.tolist(),
            "positive_scores": self.positive_scores.to_json(),
            "negative_scores": self.negative_scores.to_json(),
        }
