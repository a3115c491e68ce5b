"""Exact top-k inner-product search with faiss, in query blocks of bounded memory.

Embeddings are L2-normalized by the encoder, so inner product is cosine similarity. faiss's
flat index returns the same top k as a full score matrix would, but never materializes more
than one block of it.
"""

from __future__ import annotations

import faiss
import numpy as np

from jaxembed.errors import UserInputError
from jaxembed.progress import progress_bar

QUERY_BLOCK = 1024


def flat_ip_index(doc_emb: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(doc_emb.shape[1])
    index.add(np.ascontiguousarray(doc_emb, dtype=np.float32))
    return index


def top_k(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    k: int,
    *,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, doc indices), both [num_queries, min(k, num_docs)], best first."""
    if query_emb.ndim != 2 or doc_emb.ndim != 2 or query_emb.shape[1] != doc_emb.shape[1]:
        raise UserInputError(
            f"embedding shapes do not match: queries {query_emb.shape}, documents {doc_emb.shape}"
        )
    if len(doc_emb) == 0:
        raise UserInputError("cannot search an empty corpus")
    k = min(k, len(doc_emb))
    index = flat_ip_index(doc_emb)
    scores = np.empty((len(query_emb), k), np.float32)
    ids = np.empty((len(query_emb), k), np.int64)
    blocks = range(0, len(query_emb), QUERY_BLOCK)
    for start in progress_bar(blocks, desc="search", unit="block", disable=not show_progress):
        block = np.ascontiguousarray(query_emb[start : start + QUERY_BLOCK], dtype=np.float32)
        scores[start : start + len(block)], ids[start : start + len(block)] = index.search(block, k)
    return scores, ids
