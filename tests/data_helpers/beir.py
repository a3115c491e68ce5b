"""A small BEIR-layout split over the tiny tokenizer's words, for evaluation tests."""

from __future__ import annotations

import json
import random

from tiny_models import WORDS


def write_beir(directory, seed=0, num_docs=40, num_queries=12):
    """A small BEIR split over the tiny tokenizer's words; document "q3" is query q3 itself."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    doc_ids = [f"d{i}" for i in range(num_docs - 1)] + ["q3"]
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) for _ in range(num_queries)]
    with open(directory / "queries.jsonl", "w") as f:
        for q, text in enumerate(queries):
            f.write(json.dumps({"_id": f"q{q}", "text": text}) + "\n")
    with open(directory / "corpus.jsonl", "w") as f:
        for i, doc_id in enumerate(doc_ids):
            title = " ".join(rng.choices(WORDS, k=2)) if i % 3 else ""
            text = " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))
            if doc_id == "q3":  # the query's own text: its top hit unless it is ignored
                title, text = "", queries[3]
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    (directory / "qrels").mkdir(exist_ok=True)
    rows = ["query-id\tcorpus-id\tscore"]
    for q in range(num_queries):
        for doc_id in rng.sample(doc_ids[:-1], rng.randint(1, 4)):
            rows.append(f"q{q}\t{doc_id}\t{rng.choice([0, 1, 2])}")
        rows.append(f"q{q}\t{rng.choice(doc_ids[:-1])}\t1")
    # Later rows win for a repeated pair, as in any dict; keep pairs unique instead.
    seen, unique = set(), []
    for row in rows:
        key = tuple(row.split("\t")[:2])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    (directory / "qrels" / "test.tsv").write_text("\n".join(unique) + "\n")
    return directory
