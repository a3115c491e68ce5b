"""Positive-aware negative selection (NV-Retriever) on a table of ranked candidates.

Everything here works on numbers only: per query, the search's candidates (corpus rows and
teacher scores, best first), which of them are positives, and the query's weakest positive
score. The rules, in the order they apply:

1. positives (and, upstream, exact-duplicate texts of a positive) are never negatives;
2. the method's score rule drops candidates that look like false negatives:
   `abs`    keeps score < t,
   `margin` keeps score < pos - m,
   `perc`   keeps score < pos - |pos| * (1 - p)  (= pos * p for pos >= 0; the paper's
            TopK-PercPos, best at p = 0.95),
   `naive` and `shift` drop nothing;
3. of the survivors (best first) only the first `range_max` are eligible, and the first
   `shift` of those are skipped (TopK-shifted-by-N);
4. the top `num_negatives` of the rest are taken, or that many are sampled (uniformly, or from
   a softmax over the scores at a temperature) and put back in score order.

"pos" is the lowest score among the query's positives. Differences from sentence-transformers'
`mine_hard_negatives` (`max_score` = abs, `absolute_margin` = margin, `relative_margin` = 1 - p,
`range_min` = shift), each tested in tests/test_mining_st_parity.py:

- a score exactly on the threshold is dropped here (the paper's strict "<") and kept there
  (it removes only scores strictly above the threshold);
- for pos < 0 the paper's literal pos * p would sit above pos; both libraries use the
  sign-safe pos - |pos| * (1 - p) instead (sentence-transformers issue #3819).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from jaxembed.errors import UserInputError

Method = Literal["naive", "shift", "abs", "margin", "perc"]
Sampling = Literal["top", "uniform", "softmax"]
Fewer = Literal["keep", "fill"]

METHODS: tuple[str, ...] = ("naive", "shift", "abs", "margin", "perc")
SAMPLINGS: tuple[str, ...] = ("top", "uniform", "softmax")
FEWER: tuple[str, ...] = ("keep", "fill")
_SCORE_RULES = ("abs", "margin", "perc")


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """How negatives are chosen; `margin` is t (abs), m (margin) or p (perc)."""

    method: Method = "perc"
    margin: float | None = 0.95
    num_negatives: int = 4
    shift: int = 0
    # Survivors eligible per query; default shift + 10 * num_negatives (room for sampling).
    range_max: int | None = None
    sampling: Sampling = "top"
    temperature: float = 1.0
    fewer: Fewer = "keep"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserInputError(f"method {self.method!r} is not one of {METHODS}")
        if self.sampling not in SAMPLINGS:
            raise UserInputError(f"sampling {self.sampling!r} is not one of {SAMPLINGS}")
        if self.fewer not in FEWER:
            raise UserInputError(f"fewer {self.fewer!r} is not one of {FEWER}")
        if self.num_negatives < 1:
            raise UserInputError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.shift < 0:
            raise UserInputError(f"shift must be >= 0, got {self.shift}")
        if self.method == "shift" and self.shift < 1:
            raise UserInputError("method 'shift' needs shift >= 1 (the candidates to skip)")
        if self.method in _SCORE_RULES:
            if self.margin is None or not np.isfinite(self.margin):
                raise UserInputError(f"method {self.method!r} needs a finite margin")
            if self.method == "perc" and not 0.0 < self.margin <= 1.0:
                raise UserInputError(f"method 'perc' needs 0 < margin <= 1, got {self.margin}")
            if self.method == "margin" and self.margin < 0:
                raise UserInputError(f"method 'margin' needs margin >= 0, got {self.margin}")
        elif self.margin is not None:
            raise UserInputError(f"method {self.method!r} takes no margin (got {self.margin})")
        if self.range_max is not None and self.range_max - self.shift < self.num_negatives:
            raise UserInputError(
                f"range_max={self.range_max} leaves {self.range_max - self.shift} candidates "
                f"after shift={self.shift}, fewer than num_negatives={self.num_negatives}"
            )
        if self.sampling == "softmax" and not self.temperature > 0:
            raise UserInputError(f"temperature must be > 0, got {self.temperature}")

    @property
    def window(self) -> int:
        """Survivors eligible per query (`range_max`, or its default)."""
        if self.range_max is not None:
            return self.range_max
        return self.shift + 10 * self.num_negatives

    def thresholds(self, pos: np.ndarray) -> np.ndarray | None:
        """Per query, the score a negative must stay strictly below (None: no score rule)."""
        pos = np.asarray(pos, np.float64)
        if self.method == "abs":
            return np.full(pos.shape, float(self.margin))
        if self.method == "margin":
            return pos - float(self.margin)
        if self.method == "perc":
            return pos - np.abs(pos) * (1.0 - float(self.margin))
        return None


@dataclasses.dataclass
class Selection:
    """Per query: chosen candidate columns (best first, -1 padded) and rule counts."""

    columns: np.ndarray  # [B, num_negatives] int, column into the candidate table or -1
    count: np.ndarray  # [B] negatives found
    # Candidates removed by each rule, summed over the block.
    removed: dict[str, int]


def select_negatives(
    scores: np.ndarray,
    valid: np.ndarray,
    is_positive: np.ndarray,
    pos: np.ndarray,
    config: MiningConfig,
    rng: np.random.Generator,
) -> Selection:
    """Choose negatives from candidate tables [B, K] sorted best first.

    `valid` is False for padding (a corpus smaller than K), `is_positive` marks positives and
    their duplicates, `pos` [B] is each query's weakest positive score.
    """
    scores = np.asarray(scores, np.float64)
    n = config.num_negatives
    candidates = valid & ~is_positive
    threshold = config.thresholds(pos)
    if threshold is None:
        rule_drop = np.zeros_like(candidates)
    else:
        rule_drop = candidates & ~(scores < threshold[:, None])
    survivors = candidates & ~rule_drop
    rank = np.cumsum(survivors, axis=1) - 1  # rank among the survivors, best first
    eligible = survivors & (rank < config.window)
    skipped = eligible & (rank < config.shift)
    pool = eligible & ~skipped
    if config.sampling == "top":
        chosen = pool & (rank < config.shift + n)
    else:
        # Gumbel-top-k: the n largest of log-weight + Gumbel noise are a draw of n without
        # replacement with probability proportional to the weights (uniform: equal weights).
        keys = rng.gumbel(size=scores.shape)
        if config.sampling == "softmax":
            keys = keys + scores / config.temperature
        keys = np.where(pool, keys, -np.inf)
        top = np.argsort(-keys, axis=1, kind="stable")[:, :n]
        chosen = np.zeros_like(pool)
        np.put_along_axis(chosen, top, True, axis=1)
        chosen &= pool
    count = chosen.sum(axis=1)
    # Chosen columns in table (= score) order, padded with -1.
    order = np.argsort(~chosen, axis=1, kind="stable")[:, :n]
    if order.shape[1] < n:  # fewer candidate columns than negatives wanted
        order = np.pad(order, ((0, 0), (0, n - order.shape[1])), constant_values=-1)
    columns = np.where(np.arange(n)[None, :] < count[:, None], order, -1)
    removed = {
        "positive": int((valid & is_positive).sum()),
        config.method if threshold is not None else "score_rule": int(rule_drop.sum()),
        "shift": int(skipped.sum()),
        "beyond_range_max": int((survivors & ~eligible).sum()),
        "not_chosen": int((pool & ~chosen).sum()),
    }
    removed.pop("score_rule", None)
    return Selection(columns, count, removed)


def passes_rule(score: np.ndarray, pos: np.ndarray, config: MiningConfig) -> np.ndarray:
    """The score rule alone (for random fill candidates): True where a negative may be kept."""
    threshold = config.thresholds(pos)
    if threshold is None:
        return np.ones(np.shape(score), bool)
    return np.asarray(score, np.float64) < threshold
