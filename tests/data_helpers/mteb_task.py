"""An mteb retrieval task over in-memory BEIR data (mteb evaluates it offline).

Import only after `pytest.importorskip("mteb")`.
"""

from __future__ import annotations

import datasets
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.tasks.retrieval.eng.sci_fact_retrieval import SciFact


def local_task(data, name="TinyLocal"):
    """An mteb retrieval task (SciFact's metadata, renamed) over in-memory BEIR data."""

    class LocalRetrieval(AbsTaskRetrieval):
        ignore_identical_ids = True  # MTEB 1.x's default, and jaxembed's
        metadata = SciFact.metadata.model_copy(
            update={"name": name, "dataset": {"path": "local/tiny", "revision": "0"}}
        )

        def load_data(self, **kwargs):
            docs = list(data.corpus.values())
            corpus = datasets.Dataset.from_dict(
                {
                    "id": [d.id for d in docs],
                    "title": [d.title for d in docs],
                    "text": [d.text for d in docs],
                }
            )
            queries = datasets.Dataset.from_dict(
                {"id": list(data.queries), "text": list(data.queries.values())}
            )
            split = {
                "corpus": corpus,
                "queries": queries,
                "relevant_docs": data.qrels,
                "top_ranked": None,
            }
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrieval()
