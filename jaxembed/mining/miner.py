"""The mining loop on embeddings: search, score the positives, select, optionally fill.

Queries go through in blocks; per block the memory is the block's query vectors, its
[block, k] candidate table and one corpus chunk (see `search.CorpusSearch`). The search keeps
`window + max_positives` candidates per query, as sentence-transformers does with
`range_max + max_positives`, so a query whose positives all rank on top still has `window`
non-positive candidates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from jaxembed.errors import UserInputError
from jaxembed.mining.methods import MiningConfig, passes_rule, select_negatives
from jaxembed.mining.report import MiningReport
from jaxembed.mining.search import CorpusSearch, IndexConfig
from jaxembed.mining.sources import EmbeddingSource
from jaxembed.progress import progress_bar

_FILL_TAG = 0xF111
_FILL_ROUNDS = 8  # draws of 4x the missing count before a query is left short


@dataclasses.dataclass
class MinedBlock:
    queries: np.ndarray  # [B] query indices
    negatives: np.ndarray  # [B, N] corpus rows, best first, -1 padded
    scores: np.ndarray  # [B, N] teacher scores (nan where missing)
    filled: np.ndarray  # [B, N] True for random fill
    positive_scores: list[np.ndarray]  # per query, its own positives' scores (input order)


def _positive_scores(
    corpus: EmbeddingSource,
    qv: np.ndarray,
    lists: Sequence[Sequence[int]],
) -> list[np.ndarray]:
    """Scores of each block query against each row in its list (rows gathered once)."""
    flat = np.fromiter((r for rows in lists for r in rows), np.int64)
    owner = np.repeat(np.arange(len(lists)), [len(rows) for rows in lists])
    unique, inverse = np.unique(flat, return_inverse=True)
    vectors = corpus.rows(unique)
    scores = np.einsum("ij,ij->i", qv[owner], vectors[inverse])
    return np.split(scores, np.cumsum([len(rows) for rows in lists])[:-1])


def mine_embeddings(
    queries: EmbeddingSource,
    corpus: EmbeddingSource,
    query_rows: np.ndarray,
    positives: Sequence[Sequence[int]],
    config: MiningConfig,
    index: IndexConfig | None = None,
    *,
    group: np.ndarray | None = None,
    group_positives: Sequence[Sequence[int]] | None = None,
    keep: np.ndarray | None = None,
    query_block: int = 16384,
    report: MiningReport | None = None,
    query_ids: Sequence[str] | None = None,
    show_progress: bool = False,
) -> Iterator[MinedBlock]:
    """Mine negatives for query i (row `query_rows[i]` of `queries`) whose positives are the
    corpus rows `positives[i]`; yields one `MinedBlock` per block of queries, in order.

    `group[i]` / `group_positives[g]` pool positives across queries with the same text (by
    default every query is its own group); `keep` masks corpus rows that may be searched
    (e.g. one row per distinct text). Sampling draws depend on `config.seed` and the block;
    `query_ids` name short queries in the report (default: their index).
    """
    index = index or IndexConfig()
    query_rows = np.asarray(query_rows, np.int64)
    if queries.dim != corpus.dim:
        raise UserInputError(
            f"embedding dimensions differ: {queries.name} has {queries.dim}, "
            f"{corpus.name} has {corpus.dim}"
        )
    if len(positives) != len(query_rows):
        raise ValueError("one positives list per query is needed")
    if group is None:
        group, group_positives = np.arange(len(query_rows)), positives
    assert group_positives is not None
    for i, rows in enumerate(positives):
        if not len(rows):
            raise UserInputError(f"query {i} has no positive")
        bad = [r for r in rows if not 0 <= r < corpus.n]
        if bad:
            raise UserInputError(f"query {i}: positive row {bad[0]} is outside {corpus.name}")
    max_positives = max(len(p) for p in group_positives)
    k = config.window + max_positives
    searcher = CorpusSearch(corpus, keep, index, show_progress=show_progress)
    keep_rows = np.arange(corpus.n) if keep is None else np.flatnonzero(keep)
    # Key (group, corpus row) pairs as one int64 so positive tests are one np.isin.
    n_rows = np.int64(corpus.n)
    bar = progress_bar(total=len(query_rows), desc="mine", unit="query", disable=not show_progress)
    for start in range(0, len(query_rows), query_block):
        idx = np.arange(start, min(start + query_block, len(query_rows)))
        qv = queries.rows(query_rows[idx])
        scores, ids = searcher.search(qv, k)
        groups = group[idx]
        block_groups = [group_positives[g] for g in groups]
        pos_keys = np.fromiter(
            (g * n_rows + r for g, rows in zip(groups, block_groups, strict=True) for r in rows),
            np.int64,
        )
        is_positive = np.isin(groups[:, None] * n_rows + ids, pos_keys) & (ids >= 0)
        group_scores = _positive_scores(corpus, qv, block_groups)
        pos = np.array([s.min() for s in group_scores])
        rng = np.random.default_rng([config.seed, start])
        sel = select_negatives(scores, ids >= 0, is_positive, pos, config, rng)
        cols = np.maximum(sel.columns, 0)
        found = sel.columns >= 0
        negatives = np.where(found, np.take_along_axis(ids, cols, 1), -1)
        neg_scores = np.where(found, np.take_along_axis(scores, cols, 1), np.nan)
        filled = np.zeros_like(found)
        if config.fewer == "fill":
            for b in np.flatnonzero(sel.count < config.num_negatives):
                _fill(
                    b,
                    idx[b],
                    qv[b],
                    pos[b],
                    ids[b],
                    block_groups[b],
                    negatives,
                    neg_scores,
                    filled,
                    int(sel.count[b]),
                    keep_rows,
                    corpus,
                    config,
                )
        own = [
            _own_scores(positives[i], rows, s)
            for i, rows, s in zip(idx, block_groups, group_scores, strict=True)
        ]
        if report is not None:
            _account(report, sel.removed, scores.size, own, negatives, neg_scores, filled)
            for i in idx[(negatives >= 0).sum(axis=1) < config.num_negatives]:
                report.add_short(str(i) if query_ids is None else query_ids[i])
        bar.update(len(idx))
        yield MinedBlock(idx, negatives, neg_scores, filled, own)
    bar.close()


def _own_scores(own: Sequence[int], pooled: Sequence[int], scores: np.ndarray) -> np.ndarray:
    if list(own) == list(pooled):  # the usual case: a group of one query
        return scores
    by_row = dict(zip(pooled, scores.tolist(), strict=True))
    return np.array([by_row[r] for r in own], np.float32)


def _fill(
    b: int,
    query: int,
    qv: np.ndarray,
    pos: float,
    candidates: np.ndarray,
    group_positives: Sequence[int],
    negatives: np.ndarray,
    neg_scores: np.ndarray,
    filled: np.ndarray,
    count: int,
    keep_rows: np.ndarray,
    corpus: EmbeddingSource,
    config: MiningConfig,
) -> None:
    """Top up row b with random corpus documents that are not positives, not among the
    searched candidates (each of those was chosen or ruled out) and pass the score rule."""
    rng = np.random.default_rng([config.seed, _FILL_TAG, query])
    taken = set(candidates.tolist()) | set(group_positives)
    need = config.num_negatives - count
    for _ in range(_FILL_ROUNDS):
        draw = np.unique(rng.choice(keep_rows, size=min(4 * need, len(keep_rows))))
        draw = np.array([r for r in draw.tolist() if r not in taken], np.int64)
        if not len(draw):
            continue
        taken.update(draw.tolist())
        s = corpus.rows(draw) @ qv
        ok = passes_rule(s, np.full(len(s), pos), config)
        for r, score in zip(draw[ok][:need], s[ok][:need], strict=True):
            negatives[b, count], neg_scores[b, count], filled[b, count] = r, score, True
            count += 1
        need = config.num_negatives - count
        if need == 0:
            return


def _account(
    report: MiningReport,
    removed: dict[str, int],
    candidates: int,
    own: list[np.ndarray],
    negatives: np.ndarray,
    scores: np.ndarray,
    filled: np.ndarray,
) -> None:
    report.queries += len(own)
    report.candidates += candidates
    report.removed.update(removed)
    found = negatives >= 0
    report.negatives += int(found.sum())
    report.filled += int(filled.sum())
    report.positive_scores.add(np.concatenate(own))
    report.negative_scores.add(scores[found])
