"""The Gecko round-trip check: a generated query is kept only if a teacher embedder (any
model `jaxembed encode` loads) ranks the document it was written for in its top k over the
whole seed corpus. The corpus is embedded once per run (held in host memory: 1.5 GB for a
million 384-dimensional documents)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxembed.data.records import Passage


class RoundTrip:
    def __init__(
        self,
        teacher: str | Path,
        corpus: dict[str, Passage],
        top_k: int = 10,
        max_length: int = 256,
        batch_size: int = 32,
        show_progress: bool = False,
    ):
        from jaxembed.models.encoder import Encoder

        self.top_k = top_k
        self.encoder = Encoder.from_pretrained(teacher)
        self.kw = dict(batch_size=batch_size, max_length=max_length)
        ids = list(corpus)
        self.row = {doc_id: i for i, doc_id in enumerate(ids)}
        texts = [corpus[doc_id].full_text() for doc_id in ids]
        self.documents = self.encoder.encode(texts, show_progress=show_progress, **self.kw)

    def ranks(self, records: list[dict[str, Any]]) -> list[int]:
        """Each record's seed document's rank (0 = first) for the record's query, the
        query encoded with the record's instruction as in training."""
        queries = self.encoder.encode_per_instruction(
            [r["query"] for r in records],
            [r.get("instruction") for r in records],
            show_progress=False,
            **self.kw,
        )
        scores = queries @ self.documents.T
        own_rows = [self.row[r["positives"][0]["id"]] for r in records]
        own = scores[np.arange(len(records)), own_rows]
        return (scores > own[:, None]).sum(axis=1).tolist()
