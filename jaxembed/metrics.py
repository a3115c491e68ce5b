"""Retrieval metrics with trec_eval's conventions (what pytrec_eval and MTEB report).

`qrels` is {query_id: {doc_id: relevance}}, `run` is {query_id: {doc_id: score}}. A run is
ranked by score descending, ties broken by doc id descending (trec_eval's order). Gains are
the graded relevance (linear), discounted by log2(rank + 1); documents with relevance <= 0
are not relevant. Queries without any relevant document are skipped, as trec_eval does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def ranked(scores: Mapping[str, float]) -> list[str]:
    return [doc for doc, _ in sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def ndcg_at_k(relevance: Mapping[str, int], ranking: list[str], k: int) -> float:
    dcg = sum(
        relevance.get(doc, 0) / math.log2(rank + 2)
        for rank, doc in enumerate(ranking[:k])
        if relevance.get(doc, 0) > 0
    )
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(rank + 2) for rank, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(relevance: Mapping[str, int], ranking: list[str], k: int) -> float:
    relevant = {d for d, r in relevance.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def evaluate_run(qrels: Qrels, run: Run, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """Mean nDCG@k and Recall@k over the queries of `qrels` that have a relevant document
    (a query missing from the run scores 0)."""
    totals: dict[str, float] = {}
    count = 0
    for qid, relevance in qrels.items():
        if not any(r > 0 for r in relevance.values()):
            continue
        count += 1
        ranking = ranked(run.get(qid, {}))
        for k in ks:
            totals[f"ndcg_at_{k}"] = totals.get(f"ndcg_at_{k}", 0.0) + ndcg_at_k(
                relevance, ranking, k
            )
            totals[f"recall_at_{k}"] = totals.get(f"recall_at_{k}", 0.0) + recall_at_k(
                relevance, ranking, k
            )
    return {name: value / max(count, 1) for name, value in totals.items()}
