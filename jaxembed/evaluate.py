"""Retrieval evaluation of an encoder on a BEIR-layout split.

Documents are encoded as `title + " " + text` (MTEB's convention), queries with the task
instruction; exact inner-product search over the normalized embeddings gives the run, and
`jaxembed.metrics` scores it with trec_eval's conventions.
"""

from __future__ import annotations

import numpy as np

from jaxembed.data.formats import BeirData
from jaxembed.metrics import Run, evaluate_run
from jaxembed.models.encoder import Encoder

SEARCH_BLOCK = 1024  # queries scored against the corpus at a time: bounded memory


def exact_search(
    query_emb: np.ndarray, doc_emb: np.ndarray, query_ids: list[str], doc_ids: list[str], k: int
) -> Run:
    """Top-k documents per query by inner product, {query_id: {doc_id: score}}."""
    k = min(k, len(doc_ids))
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_ids), SEARCH_BLOCK):
        scores = query_emb[start : start + SEARCH_BLOCK] @ doc_emb.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, qid in enumerate(query_ids[start : start + SEARCH_BLOCK]):
            run[qid] = {doc_ids[j]: float(scores[row, j]) for j in top[row]}
    return run


def evaluate_retrieval(
    encoder: Encoder,
    data: BeirData,
    instruction: str | None,
    *,
    ks: tuple[int, ...] = (10,),
    depth: int = 100,
    batch_size: int = 64,
    max_length: int = 512,
    show_progress: bool = False,
) -> dict[str, float]:
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
    run = exact_search(queries, docs, query_ids, doc_ids, max(depth, *ks))
    return evaluate_run(data.qrels, run, ks=ks)
