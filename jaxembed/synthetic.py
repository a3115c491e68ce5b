"""A deterministic synthetic retrieval task that lexical matching cannot solve.

The world has concepts; each concept has several surface words (synonyms). A document
mentions a handful of concepts, each written with one synonym. Its query names a subset of
those concepts, each written with a *different* synonym than the document used, so a query
shares no word with its relevant document: only a model that has learned which words mean
the same thing ranks it first. Training queries and held-out queries use disjoint
documents, so held-out scores measure generalization, not memorization.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ru",
    "te",
    "sa",
    "no",
    "vi",
    "pe",
    "zu",
    "da",
    "fo",
    "gi",
    "ha",
    "ke",
]


@dataclass(frozen=True)
class SyntheticTask:
    train_records: list[dict]  # training JSONL records (query, positives, negatives)
    corpus: dict[str, str]  # held-out corpus: doc id -> text
    queries: dict[str, str]  # held-out queries: query id -> text
    qrels: dict[str, dict[str, int]]  # held-out relevance
    instruction: str


def _words(rng: np.random.Generator, count: int) -> list[str]:
    seen: set[str] = set()
    while len(seen) < count:
        seen.add("".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4)))))
    return sorted(seen)


def make_task(
    seed: int = 0,
    num_concepts: int = 60,
    synonyms: int = 2,
    concepts_per_doc: int = 6,
    concepts_per_query: int = 3,
    train_docs: int = 1500,
    eval_docs: int = 400,
    eval_queries: int = 150,
    negatives: int = 3,
) -> SyntheticTask:
    rng = np.random.default_rng(seed)
    words = _words(rng, num_concepts * synonyms)
    rng.shuffle(words)
    forms = [words[c * synonyms : (c + 1) * synonyms] for c in range(num_concepts)]

    def document() -> tuple[list[int], list[int]]:
        concepts = rng.choice(num_concepts, size=concepts_per_doc, replace=False)
        variant = rng.integers(0, synonyms, size=concepts_per_doc)
        return list(concepts), list(variant)

    def render(concepts: list[int], variants: list[int]) -> str:
        return " ".join(forms[c][v] for c, v in zip(concepts, variants, strict=True))

    def query_for(concepts: list[int], variants: list[int]) -> tuple[str, list[int]]:
        picked = rng.choice(len(concepts), size=concepts_per_query, replace=False)
        chosen = [concepts[i] for i in picked]
        # A synonym the document did not use: zero word overlap with the positive.
        other = [(variants[i] + int(rng.integers(1, synonyms))) % synonyms for i in picked]
        return render(chosen, other), chosen

    def related(concepts: list[int], pool: list[tuple[list[int], list[int]]]) -> list[int]:
        """Documents of `pool` sharing the most concepts but not all (hard, not false,
        negatives)."""
        overlap = np.array([len(set(concepts) & set(c)) for c, _ in pool])
        order = np.argsort(-overlap, kind="stable")
        return [int(j) for j in order if overlap[j] < len(concepts)]

    instruction = "Given a query, retrieve the passage it paraphrases"
    train_pool = [document() for _ in range(train_docs)]
    train_texts = [render(c, v) for c, v in train_pool]
    records = []
    for i, (concepts, variants) in enumerate(train_pool):
        query, chosen = query_for(concepts, variants)
        candidates = [j for j in related(chosen, train_pool) if j != i][:negatives]
        records.append(
            {
                "query": query,
                "positives": [{"id": f"t{i}", "text": train_texts[i]}],
                "negatives": [{"id": f"t{j}", "text": train_texts[j]} for j in candidates],
                "instruction": instruction,
            }
        )
    eval_pool = [document() for _ in range(eval_docs)]
    corpus = {f"d{i}": render(c, v) for i, (c, v) in enumerate(eval_pool)}
    queries, qrels = {}, {}
    for q, i in enumerate(rng.choice(eval_docs, size=eval_queries, replace=False)):
        text, _ = query_for(*eval_pool[i])
        queries[f"q{q}"] = text
        qrels[f"q{q}"] = {f"d{i}": 1}
    return SyntheticTask(records, corpus, queries, qrels, instruction)


def write_task(task: SyntheticTask, directory: str | Path) -> Path:
    """Training JSONL plus a BEIR-layout held-out set (corpus, queries, qrels/test.tsv)."""
    directory = Path(directory)
    (directory / "eval" / "qrels").mkdir(parents=True, exist_ok=True)
    with open(directory / "train.jsonl", "w") as f:
        for record in task.train_records:
            f.write(json.dumps(record) + "\n")
    with open(directory / "eval" / "corpus.jsonl", "w") as f:
        for doc_id, text in task.corpus.items():
            f.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(directory / "eval" / "queries.jsonl", "w") as f:
        for qid, text in task.queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(directory / "eval" / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, rels in task.qrels.items():
            for doc_id, rel in rels.items():
                f.write(f"{qid}\t{doc_id}\t{rel}\n")
    return directory
