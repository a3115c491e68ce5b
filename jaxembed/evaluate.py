"""Retrieval evaluation of an encoder on a BEIR-layout split, with MTEB's conventions.

Documents are encoded as `title + " " + text`, queries with the task instruction; faiss
searches the normalized embeddings to a depth (1000 by default) and `jaxembed.metrics`
scores the run with trec_eval's conventions. A hit whose document id equals the query id is
dropped (MTEB's `ignore_identical_ids`: some BEIR corpora contain the queries themselves).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jaxembed.data.formats import BeirData, load_beir
from jaxembed.errors import UserInputError
from jaxembed.metrics import DEFAULT_KS, Qrels, Run, evaluate_run, missing_queries
from jaxembed.models.encoder import Encoder
from jaxembed.search import top_k

DEFAULT_DEPTH = 1000


def load_eval_split(root: str | Path, split: str) -> BeirData:
    """A BEIR split that has something to evaluate (clear errors for missing or empty)."""
    qrels_path = Path(root) / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise UserInputError(f"{qrels_path}: file not found (is split {split!r} in {root}?)")
    data = load_beir(root, split)
    if not any(any(r > 0 for r in judged.values()) for judged in data.qrels.values()):
        raise UserInputError(f"{qrels_path}: split {split!r} has no relevant judgments")
    return data


def retrieve(
    encoder: Encoder,
    data: BeirData,
    instruction: str | None,
    *,
    depth: int = DEFAULT_DEPTH,
    batch_size: int = 64,
    max_length: int = 512,
    ignore_identical_ids: bool = True,
    show_progress: bool = False,
) -> Run:
    """The top-`depth` documents of every judged query, {query_id: {doc_id: score}}."""
    doc_ids = list(data.corpus)
    query_ids = [q for q in data.queries if q in data.qrels]
    docs = encoder.encode(
        [data.corpus[d].full_text() for d in doc_ids],
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
    )
    queries = encoder.encode(
        [data.queries[q] for q in query_ids],
        instruction=instruction,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
    )
    # One extra hit, in case the query's own id is among the top `depth`.
    scores, rows = top_k(queries, docs, depth + int(ignore_identical_ids))
    run: dict[str, dict[str, float]] = {}
    for qid, q_scores, q_rows in zip(query_ids, scores, rows, strict=True):
        hits = [(doc_ids[j], float(s)) for s, j in zip(q_scores, q_rows, strict=True)]
        if ignore_identical_ids:
            hits = [(d, s) for d, s in hits if d != qid]
        run[qid] = dict(hits[:depth])
    return run


def evaluate_retrieval(
    encoder: Encoder,
    data: BeirData,
    instruction: str | None,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    depth: int = DEFAULT_DEPTH,
    **retrieve_kwargs: Any,
) -> dict[str, float]:
    """Mean metrics (`ndcg_at_10`, ...) of the encoder on a BEIR split."""
    ks = tuple(ks)
    run = retrieve(encoder, data, instruction, depth=max(depth, *ks), **retrieve_kwargs)
    return evaluate_run(data.qrels, run, ks=ks)


def mteb_result(
    scores: Mapping[str, float],
    *,
    task_name: str,
    split: str,
    evaluation_time: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A result shaped like MTEB's result files (`scores[split][0]["ndcg_at_10"]`, with
    `main_score` = nDCG@10 as MTEB uses for retrieval)."""
    entry = {"hf_subset": "default", "main_score": scores.get("ndcg_at_10"), **scores}
    result: dict[str, Any] = {
        "task_name": task_name,
        "evaluation_time": evaluation_time,
        "scores": {split: [entry]},
    }
    if extra:
        result["jaxembed"] = dict(extra)
    return result


def score_run(qrels: Qrels, run: Run, ks: Iterable[int] = DEFAULT_KS) -> dict[str, Any]:
    """Metrics of an existing run, plus how many judged queries it left out."""
    missing = missing_queries(qrels, run)
    return {"scores": evaluate_run(qrels, run, ks), "missing_queries": missing}
