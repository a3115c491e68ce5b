"""Hard-negative mining throughput: jaxembed vs sentence-transformers, same embeddings.

Both miners get the same unit vectors (a planted corpus: each query is a noisy copy of its
positive) and the same settings: TopK-PercPos 95% (`relative_margin=0.05`), range_max and
num_negatives, sampling "top", faiss flat (exact) search on CPU. Timed from embeddings in
memory (jaxembed: .npy files in the page cache; ST: a model whose encode returns them) to the
finished output (jaxembed: training JSONL + report on disk; ST: its `datasets.Dataset`,
triplet format). Rounds alternate between the two; medians are reported, and the negative sets
are compared query by query.

    python benchmarks/mining.py [--shapes 5183x300,5000x5000,50000x4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxembed.mining.inputs import load_beir_task
from jaxembed.mining.methods import MiningConfig
from jaxembed.mining.pipeline import run_mining


class PrecomputedModel:
    """The parts of a SentenceTransformer that `mine_hard_negatives` uses, over fixed tables."""

    def __init__(self, queries: dict[str, np.ndarray], docs: dict[str, np.ndarray], dim: int):
        import torch
        from sentence_transformers.util import pairwise_cos_sim

        self.device = torch.device("cpu")
        self._queries, self._docs, self._dim = queries, docs, dim
        self.similarity_pairwise = pairwise_cos_sim  # what a cosine SentenceTransformer uses

    def encode_query(self, texts, **_):
        return np.stack([self._queries[t] for t in texts])

    def encode_document(self, texts, **_):
        return np.stack([self._docs[t] for t in texts])

    def get_embedding_dimension(self) -> int:
        return self._dim


def make_data(root: Path, docs: int, queries: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    doc_emb = rng.standard_normal((docs, dim), dtype=np.float32)
    doc_emb /= np.linalg.norm(doc_emb, axis=1, keepdims=True)
    positives = rng.choice(docs, size=queries, replace=False)
    query_emb = doc_emb[positives] + 0.06 * rng.standard_normal((queries, dim), dtype=np.float32)
    query_emb /= np.linalg.norm(query_emb, axis=1, keepdims=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(docs):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"document {i}"}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i in range(queries):
            f.write(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n")
    with open(root / "qrels.tsv", "w") as f:
        f.writelines(f"q{i}\td{p}\t1\n" for i, p in enumerate(positives))
    np.save(root / "c.npy", doc_emb)
    np.save(root / "q.npy", query_emb)
    return doc_emb, query_emb, positives


def run_ours(root: Path, task, config: MiningConfig) -> tuple[float, dict[str, set[str]]]:
    out = root / "mined.jsonl"
    start = time.perf_counter()
    run_mining(
        task, config, out, query_embeddings=[root / "q.npy"], corpus_embeddings=[root / "c.npy"]
    )
    seconds = time.perf_counter() - start
    mined = {}
    for line in out.read_text().splitlines():
        rec = json.loads(line)
        mined[rec["query"]] = {f"document {n['id'][1:]}" for n in rec["negatives"]}
    return seconds, mined


def run_st(dataset, model, corpus: list[str], config: MiningConfig):
    from sentence_transformers.util import mine_hard_negatives

    start = time.perf_counter()
    out = mine_hard_negatives(
        dataset,
        model,
        corpus=corpus,
        num_negatives=config.num_negatives,
        range_max=config.range_max,
        relative_margin=1 - config.margin,
        sampling_strategy="top",
        output_format="triplet",
        use_faiss=True,
        verbose=False,
    )
    seconds = time.perf_counter() - start
    mined: dict[str, set[str]] = {}
    for row in out:
        mined.setdefault(row["query"], set()).add(row["negative"])
    return seconds, mined


def bench_shape(docs: int, queries: int, args: argparse.Namespace) -> dict:
    from datasets import Dataset

    config = MiningConfig("perc", 0.95, num_negatives=args.negatives, range_max=args.range_max)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        doc_emb, query_emb, positives = make_data(root, docs, queries, args.dim)
        task = load_beir_task(root / "corpus.jsonl", root / "queries.jsonl", root / "qrels.tsv")
        corpus = [f"document {i}" for i in range(docs)]
        query_texts = [f"query {i}" for i in range(queries)]
        model = PrecomputedModel(
            dict(zip(query_texts, query_emb, strict=True)),
            dict(zip(corpus, doc_emb, strict=True)),
            args.dim,
        )
        dataset = Dataset.from_dict(
            {"query": query_texts, "positive": [corpus[p] for p in positives]}
        )
        ours_s, st_s = [], []
        for _ in range(args.rounds):
            seconds, mine = run_ours(root, task, config)
            ours_s.append(seconds)
            seconds, ref = run_st(dataset, model, corpus, config)
            st_s.append(seconds)
        same = sum(mine.get(q, set()) == ref.get(q, set()) for q in query_texts)
    ours_t, st_t = statistics.median(ours_s), statistics.median(st_s)
    return dict(
        docs=docs,
        queries=queries,
        ours=queries / ours_t,
        st=queries / st_t,
        ratio=st_t / ours_t,
        same=same,
        ours_s=ours_s,
        st_s=st_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        default="5183x300,5000x5000,50000x4000",
        help="DOCSxQUERIES,...: SciFact-sized, overhead-bound, search-bound",
    )
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--range-max", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    print(
        f"dim {args.dim}, perc 0.95, range_max {args.range_max}, {args.negatives} negatives, "
        f"faiss flat on CPU, median of {args.rounds} alternating rounds"
    )
    print("| corpus | queries | jaxembed q/s | sentence-transformers q/s | ratio | same sets |")
    print("|---|---|---|---|---|---|")
    for docs, queries in shapes:
        r = bench_shape(docs, queries, args)
        print(
            f"| {docs:,} | {queries:,} | {r['ours']:.0f} | {r['st']:.0f} | "
            f"**{r['ratio']:.2f}x** | {r['same']}/{queries} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
