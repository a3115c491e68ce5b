"""Reranking a retrieval run: the top-k documents of each query rescored by a cross-encoder,
with the metrics of the retriever's own top-k and of the reranked top-k.

`jaxembed rerank --model DIR --data BEIR_DIR --run run.trec --top-k 100 --output out.trec`

Both rankings are scored over the same k documents per query (the retriever's top k), so the
difference is the reranker's alone. A query with fewer than k documents in the run has all
of them reranked (counted as `short_queries` in the report, not an error); a run naming a
query or document that the dataset lacks is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxembed.data.formats import BeirData
from jaxembed.data.trec_run import check_run_ids, read_trec_run, write_trec_run
from jaxembed.errors import UserInputError
from jaxembed.evaluate import load_eval_split
from jaxembed.io_utils import atomic_file, check_output_directories
from jaxembed.metrics import Run, evaluate_run, missing_queries, ranked
from jaxembed.models.reranker import Reranker

REPORTED = ("ndcg_at_10", "recall_at_10", "mrr_at_10")
DEFAULT_KS = (1, 3, 5, 10, 20, 100)


@dataclass
class RerankResult:
    before: dict[str, float]  # the retriever's ranking of the same top-k
    after: dict[str, float]  # the reranker's
    reranked: dict[str, dict[str, float]]
    top_k: int
    pairs: int
    short_queries: int  # queries with fewer than top_k documents in the run
    missing_queries: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "after": self.after,
            "top_k": self.top_k,
            "queries": len(self.reranked),
            "pairs": self.pairs,
            "short_queries": self.short_queries,
            "missing_queries": self.missing_queries,
        }


def top_k_run(run: Run, top_k: int) -> dict[str, dict[str, float]]:
    """Each query's `top_k` best documents (trec_eval's order), scores kept."""
    if top_k < 1:
        raise UserInputError(f"--top-k {top_k}: must be >= 1")
    return {qid: {d: scores[d] for d in ranked(scores)[:top_k]} for qid, scores in run.items()}


def rerank_run(
    reranker: Reranker,
    data: BeirData,
    run: Run,
    *,
    top_k: int = 100,
    batch_size: int = 32,
    max_length: int = 512,
    query_max_length: int | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    show_progress: bool = True,
) -> RerankResult:
    """Rerank the top `top_k` of `run` (ids must exist in `data`) and score both rankings."""
    truncated = top_k_run(run, top_k)
    keys = [(qid, doc) for qid, docs in truncated.items() for doc in docs]
    scores = reranker.score(
        [data.queries[qid] for qid, _ in keys],
        [data.corpus[doc].full_text() for _, doc in keys],
        batch_size=batch_size,
        max_length=max_length,
        query_max_length=query_max_length,
        show_progress=show_progress,
    )
    reranked: dict[str, dict[str, float]] = {qid: {} for qid in truncated}
    for (qid, doc), score in zip(keys, scores, strict=True):
        reranked[qid][doc] = float(score)
    ks = tuple(ks)
    return RerankResult(
        before=evaluate_run(data.qrels, truncated, ks),
        after=evaluate_run(data.qrels, reranked, ks),
        reranked=reranked,
        top_k=top_k,
        pairs=len(keys),
        short_queries=sum(len(docs) < top_k for docs in run.values()),
        missing_queries=missing_queries(data.qrels, truncated),
    )


def format_table(result: RerankResult) -> str:
    lines = [f"{'metric':<14}{'retriever':>11}{'reranked':>11}"]
    for name in REPORTED:
        label = name.replace("_at_", "@")
        lines.append(f"{label:<14}{result.before[name]:>11.4f}{result.after[name]:>11.4f}")
    return "\n".join(lines)


def rerank_files(
    model: str | Path,
    data_dir: str | Path,
    run_path: str | Path,
    output: str | Path,
    *,
    split: str = "test",
    top_k: int = 100,
    metrics_output: str | Path | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    query_max_length: int | None = None,
    show_progress: bool = True,
) -> RerankResult:
    """`jaxembed rerank`: read, check, rerank, write the run and the metrics JSON."""
    output = Path(output)
    metrics_output = Path(metrics_output) if metrics_output else Path(f"{output}.metrics.json")
    check_output_directories(output, metrics_output)
    if top_k < 1:
        raise UserInputError(f"--top-k {top_k}: must be >= 1")
    data = load_eval_split(data_dir, split)
    run = read_trec_run(run_path)
    check_run_ids(run, run_path, query_ids=data.queries, doc_ids=data.corpus)
    reranker = Reranker.from_pretrained(model)
    if max_length is None:
        max_length = int(reranker.max_length or 512)
    result = rerank_run(
        reranker,
        data,
        run,
        top_k=top_k,
        batch_size=batch_size,
        max_length=max_length,
        query_max_length=query_max_length,
        show_progress=show_progress,
    )
    write_trec_run(output, result.reranked, name="jaxembed-rerank")
    with atomic_file(metrics_output) as tmp:
        tmp.write_text(json.dumps(result.report(), indent=2) + "\n", encoding="utf-8")
    return result
