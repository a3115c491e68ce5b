"""Retrieval metrics with trec_eval's conventions, averaged the way MTEB reports them.

`qrels` is {query_id: {doc_id: relevance}}, `run` is {query_id: {doc_id: score}}. A run is
ranked by score descending, ties broken by doc id descending (trec_eval's order, which
pytrec_eval and MTEB share). A document is relevant when its relevance is > 0.

- ndcg_at_k: trec_eval `ndcg_cut.k`: gain = graded relevance, discount log2(rank + 1), the
  ideal ranking built from every relevant document of the qrels.
- map_at_k: trec_eval `map_cut.k`: precision at each relevant rank <= k, summed and divided by
  the query's number of relevant documents.
- recall_at_k (`recall.k`), precision_at_k (`P.k`, always divided by k) and mrr_at_k (the
  reciprocal rank of the first relevant document within the top k; MTEB's MRR@k).

Averages are over the queries that are in both the qrels and the run and have at least one
relevant document: MTEB drops queries without positives, and trec_eval (without -c) scores
only the queries a run answers. `missing_queries` says which qrels queries a run skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

DEFAULT_KS = (1, 3, 5, 10, 20, 100, 1000)
METRICS = ("ndcg", "map", "recall", "precision", "mrr")


def ranked(scores: Mapping[str, float]) -> list[str]:
    return [doc for doc, _ in sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def query_metrics(
    relevance: Mapping[str, int], ranking: list[str], ks: Iterable[int]
) -> dict[str, float]:
    """Every metric at every cutoff for one query (`ranking` best first)."""
    ks = sorted(set(ks))
    num_relevant = sum(1 for r in relevance.values() if r > 0)
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)
    out: dict[str, float] = {}
    dcg = precision_sum = 0.0
    hits = 0
    first_hit = 0  # 1-based rank of the first relevant document; 0 = none yet
    depth = 0
    for k in ks:
        while depth < min(k, len(ranking)):
            gain = relevance.get(ranking[depth], 0)
            depth += 1
            if gain > 0:
                hits += 1
                dcg += gain / math.log2(depth + 1)
                precision_sum += hits / depth
                first_hit = first_hit or depth
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal[:k]))
        out[f"ndcg_at_{k}"] = dcg / idcg if idcg > 0 else 0.0
        out[f"map_at_{k}"] = precision_sum / num_relevant if num_relevant else 0.0
        out[f"recall_at_{k}"] = hits / num_relevant if num_relevant else 0.0
        out[f"precision_at_{k}"] = hits / k
        out[f"mrr_at_{k}"] = 1.0 / first_hit if first_hit else 0.0
    return out


def scored_queries(qrels: Qrels, run: Run) -> list[str]:
    """The queries the averages are over (see the module docstring)."""
    return [qid for qid, rel in qrels.items() if qid in run and any(r > 0 for r in rel.values())]


def missing_queries(qrels: Qrels, run: Run) -> list[str]:
    """Queries with a relevant document that the run does not answer."""
    return [
        qid for qid, rel in qrels.items() if qid not in run and any(r > 0 for r in rel.values())
    ]


def evaluate_run(qrels: Qrels, run: Run, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean of every metric at every cutoff, keyed like MTEB (`ndcg_at_10`, ...)."""
    ks = sorted(set(ks))
    queries = scored_queries(qrels, run)
    totals = dict.fromkeys((f"{m}_at_{k}" for m in METRICS for k in ks), 0.0)
    for qid in queries:
        for name, value in query_metrics(qrels[qid], ranked(run[qid]), ks).items():
            totals[name] += value
    return {name: value / max(len(queries), 1) for name, value in totals.items()}
