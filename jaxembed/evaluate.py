"""Retrieval evaluation of an encoder on a BEIR-layout split, with MTEB's conventions.

Documents are encoded as `title + " " + text`, queries with the task instruction; faiss
searches the normalized embeddings to a depth (1000 by default) and `jaxembed.metrics`
scores the run with trec_eval's conventions. A hit whose document id equals the query id is
dropped (MTEB's `ignore_identical_ids`: some BEIR corpora contain the queries themselves).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxembed.data.formats import BeirData, load_beir
from jaxembed.errors import UserInputError
from jaxembed.io_utils import atomic_file
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


@dataclasses.dataclass
class SplitEmbeddings:
    """Embeddings of a BEIR split: row i of `queries` is query `query_ids[i]`, row j of
    `corpus` is document `doc_ids[j]` (both in file order)."""

    query_ids: list[str]
    queries: np.ndarray
    doc_ids: list[str]
    corpus: np.ndarray


def encode_split(
    encoder: Encoder,
    data: BeirData,
    instruction: str | None,
    *,
    all_queries: bool = False,
    batch_size: int = 64,
    max_length: int | None = None,
    show_progress: bool = False,
) -> SplitEmbeddings:
    """Documents as `title + " " + text`; the judged queries (or all) with the instruction."""
    doc_ids = list(data.corpus)
    query_ids = [q for q in data.queries if all_queries or q in data.qrels]
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
    return SplitEmbeddings(query_ids, queries, doc_ids, docs)


def search_run(
    embeddings: SplitEmbeddings,
    query_ids: Sequence[str],
    *,
    depth: int = DEFAULT_DEPTH,
    ignore_identical_ids: bool = True,
) -> Run:
    """The top-`depth` documents of each of `query_ids`, {query_id: {doc_id: score}}."""
    row = {q: i for i, q in enumerate(embeddings.query_ids)}
    queries = embeddings.queries[[row[q] for q in query_ids]]
    # One extra hit, in case the query's own id is among the top `depth`.
    scores, rows = top_k(queries, embeddings.corpus, depth + int(ignore_identical_ids))
    run: dict[str, dict[str, float]] = {}
    for qid, q_scores, q_rows in zip(query_ids, scores, rows, strict=True):
        hits = [(embeddings.doc_ids[j], float(s)) for s, j in zip(q_scores, q_rows, strict=True)]
        if ignore_identical_ids:
            hits = [(d, s) for d, s in hits if d != qid]
        run[qid] = dict(hits[:depth])
    return run


def retrieve(
    encoder: Encoder,
    data: BeirData,
    instruction: str | None,
    *,
    depth: int = DEFAULT_DEPTH,
    ignore_identical_ids: bool = True,
    **encode_kwargs: Any,
) -> Run:
    """The top-`depth` documents of every judged query, {query_id: {doc_id: score}}."""
    embeddings = encode_split(encoder, data, instruction, **encode_kwargs)
    judged = [q for q in data.queries if q in data.qrels]
    return search_run(embeddings, judged, depth=depth, ignore_identical_ids=ignore_identical_ids)


def save_embeddings(directory: str | Path, embeddings: SplitEmbeddings) -> None:
    """queries.npy / corpus.npy (float32) with their ids, one a line, in row order: the
    precomputed-embedding input of `jaxembed mine`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, ids, matrix in (
        ("queries", embeddings.query_ids, embeddings.queries),
        ("corpus", embeddings.doc_ids, embeddings.corpus),
    ):
        with atomic_file(directory / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, matrix.astype(np.float32))
        with atomic_file(directory / f"{name}_ids.txt") as tmp:
            tmp.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


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


@dataclasses.dataclass
class Evaluation:
    """What `jaxembed eval` reports: MTEB-shaped result, its scores, and for a run file the
    judged queries it left out."""

    result: dict[str, Any]
    scores: dict[str, float]
    missing_queries: list[str] = dataclasses.field(default_factory=list)


def evaluate_model(
    model: str | Path,
    data_dir: str | Path,
    split: str,
    *,
    ks: Iterable[int],
    depth: int,
    run_output: str | Path,
    instruction: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    dtype: str | None = None,
    mesh: Any = None,
    save_embeddings_to: str | Path | None = None,
    show_progress: bool = True,
) -> Evaluation:
    """A model directory on a BEIR split: encode, search to `depth`, score; the TREC run is
    written to `run_output` (and the embeddings to `save_embeddings_to`, if given)."""
    import time

    from jaxembed.data.trec_run import write_trec_run
    from jaxembed.models.encoder import Encoder

    started = time.perf_counter()
    ks = tuple(sorted(set(ks)))
    data = load_eval_split(data_dir, split)
    encoder = Encoder.from_pretrained(model, mesh=mesh, dtype=dtype)
    embeddings = encode_split(
        encoder,
        data,
        instruction,
        all_queries=save_embeddings_to is not None,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
    )
    judged = [q for q in data.queries if q in data.qrels]
    run = search_run(embeddings, judged, depth=depth)
    if save_embeddings_to is not None:
        save_embeddings(save_embeddings_to, embeddings)
    scores = evaluate_run(data.qrels, run, ks)
    write_trec_run(run_output, run)
    extra = {
        "model": str(model),
        "data": str(data_dir),
        "instruction": instruction,
        "max_length": max_length or encoder.max_length,
        "run": str(run_output),
    }
    result = mteb_result(
        scores,
        task_name=Path(data_dir).resolve().name,
        split=split,
        evaluation_time=time.perf_counter() - started,
        extra=extra,
    )
    return Evaluation(result, scores)


def evaluate_run_file(
    run_path: str | Path, qrels_path: str | Path, split: str, ks: Iterable[int]
) -> Evaluation:
    """An existing TREC run against a qrels file."""
    import time

    from jaxembed.data.formats import read_beir_qrels
    from jaxembed.data.trec_run import read_trec_run

    started = time.perf_counter()
    scored = score_run(read_beir_qrels(qrels_path), read_trec_run(run_path), tuple(sorted(set(ks))))
    result = mteb_result(
        scored["scores"],
        task_name=Path(qrels_path).stem,
        split=split,
        evaluation_time=time.perf_counter() - started,
        extra={"run": str(run_path), "qrels": str(qrels_path)},
    )
    return Evaluation(result, scored["scores"], list(scored["missing_queries"]))
