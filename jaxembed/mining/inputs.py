"""What to mine: the corpus, the queries and their positives, validated and indexed by row.

Two layouts: BEIR (corpus.jsonl, queries.jsonl, a qrels .tsv; the judged queries with a
score > 0 are mined) or a training JSONL file whose positives carry corpus ids. Row i of a
query/corpus embedding file is record i of queries.jsonl / corpus.jsonl (or of the training
file). Corpus documents with the same text are one document (the first one): a duplicate of a
positive is that positive, and the search sees each text once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxembed.data.errors import DataFormatError
from jaxembed.data.formats import (
    read_beir_corpus,
    read_beir_qrels,
    read_beir_queries,
    read_training_jsonl,
)
from jaxembed.data.records import Passage
from jaxembed.errors import UserInputError


@dataclasses.dataclass
class MiningTask:
    corpus: list[Passage]  # in file order: row i is record i
    canonical: np.ndarray  # [n] int64: the first corpus row with the same text
    query_ids: list[str]
    query_texts: list[str]
    instructions: list[str]
    query_rows: np.ndarray  # [q] row of each mined query in the query embedding file
    num_query_rows: int  # records in the query file (the embedding file's row count)
    positives: list[list[int]]  # per query: canonical corpus rows, in input order
    # Queries with the same (instruction, text) share a group: one query's positives are
    # never another's negatives (sentence-transformers merges them the same way).
    group: np.ndarray  # [q] int64
    group_positives: list[list[int]]
    corpus_name: str = "corpus"
    query_name: str = "queries"

    @property
    def keep(self) -> np.ndarray:
        """Rows the search sees: one per distinct text."""
        return self.canonical == np.arange(len(self.canonical))

    @property
    def max_positives(self) -> int:
        return max(len(p) for p in self.group_positives)


def _canonical(corpus: list[Passage]) -> np.ndarray:
    first: dict[str, int] = {}
    return np.array([first.setdefault(p.full_text(), i) for i, p in enumerate(corpus)], np.int64)


def _finish(
    corpus: list[Passage],
    canonical: np.ndarray,
    queries: list[tuple[str, str, str, int, list[int]]],
    num_query_rows: int,
    corpus_name: str,
    query_name: str,
) -> MiningTask:
    if not queries:
        raise UserInputError(f"{query_name}: no queries with positives to mine")
    groups: dict[tuple[str, str], int] = {}
    group_positives: list[list[int]] = []
    group = []
    for _, text, instruction, _, positives in queries:
        g = groups.setdefault((instruction, text), len(groups))
        if g == len(group_positives):
            group_positives.append([])
        merged = group_positives[g]
        merged.extend(p for p in positives if p not in merged)
        group.append(g)
    return MiningTask(
        corpus=corpus,
        canonical=canonical,
        query_ids=[q[0] for q in queries],
        query_texts=[q[1] for q in queries],
        instructions=[q[2] for q in queries],
        query_rows=np.array([q[3] for q in queries], np.int64),
        num_query_rows=num_query_rows,
        positives=[q[4] for q in queries],
        group=np.array(group, np.int64),
        group_positives=group_positives,
        corpus_name=corpus_name,
        query_name=query_name,
    )


def _read_corpus(path: Path) -> tuple[list[Passage], dict[str, int], np.ndarray]:
    corpus_by_id = read_beir_corpus(path)
    if not corpus_by_id:
        raise UserInputError(f"{path}: empty corpus (no documents)")
    corpus = list(corpus_by_id.values())
    row = {p.id: i for i, p in enumerate(corpus)}
    return corpus, row, _canonical(corpus)


def load_beir_task(
    corpus_path: str | Path,
    queries_path: str | Path,
    qrels_path: str | Path,
    instruction: str = "",
) -> MiningTask:
    """Every query judged in `qrels_path` is mined; its positives are the documents judged
    with a score > 0. A judged query without one is an error, not silently dropped."""
    corpus_path, queries_path, qrels_path = Path(corpus_path), Path(queries_path), Path(qrels_path)
    corpus, row, canonical = _read_corpus(corpus_path)
    queries = read_beir_queries(queries_path)
    qrels = read_beir_qrels(qrels_path, query_ids=queries, corpus_ids=row)
    query_row = {qid: i for i, qid in enumerate(queries)}
    mined = []
    for qid, judged in qrels.items():
        positives = [d for d, score in judged.items() if score > 0]
        if not positives:
            raise UserInputError(
                f"{qrels_path}: query {qid!r} has no positive (no document judged > 0)"
            )
        rows = list(dict.fromkeys(int(canonical[row[d]]) for d in positives))
        mined.append((qid, queries[qid], instruction, query_row[qid], rows))
    return _finish(corpus, canonical, mined, len(queries), str(corpus_path), str(queries_path))


def load_training_task(
    corpus_path: str | Path, train_path: str | Path, instruction: str = ""
) -> MiningTask:
    """A training JSONL file (the data pipeline's format) whose positives name corpus ids
    (or give a text found in the corpus); existing negatives are ignored. `instruction` is
    the default for records without their own."""
    corpus_path, train_path = Path(corpus_path), Path(train_path)
    corpus, row, canonical = _read_corpus(corpus_path)
    by_text = {}
    for i, p in enumerate(corpus):
        by_text.setdefault(p.full_text(), i)
    # Records come from the non-blank lines in order; keep their numbers for error messages.
    with open(train_path, "rb") as f:
        lines = [n for n, raw in enumerate(f, start=1) if raw.strip()]
    mined = []
    for i, record in enumerate(read_training_jsonl(train_path, instruction=instruction)):
        rows = []
        for p in record.positives:
            if p.id.startswith("text:"):
                r = by_text.get(p.full_text())
                if r is None:
                    raise DataFormatError(
                        train_path, lines[i], f"positive text not found in {corpus_path}"
                    )
            elif p.id in row:
                r = row[p.id]
            else:
                raise DataFormatError(
                    train_path, lines[i], f"positive id {p.id!r} is not in {corpus_path}"
                )
            rows.append(int(canonical[r]))
        mined.append(
            (f"line{lines[i]}", record.query, record.instruction, i, list(dict.fromkeys(rows)))
        )
    return _finish(corpus, canonical, mined, len(mined), str(corpus_path), str(train_path))
