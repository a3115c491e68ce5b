"""Reproduce MTEB's published SciFact scores of all-MiniLM-L6-v2 with `jaxembed eval`.

The full reproduction compares with MTEB's own result file (embeddings-benchmark/results, in
`../shared/data/mteb_results`). It encodes the whole 5,183-document corpus, about 20 CPU
minutes here, so it is marked slow (`pytest -m slow`). The default run covers the same path
on a SciFact subset: `jaxembed eval` against mteb's own evaluation of the sentence-transformers
model (PyTorch weights, mteb's document formatting, search and scorer).
"""

from __future__ import annotations

import json

import pytest

from jaxembed.cli import main

# Every metric at these cutoffs must agree; 0.001 is the tolerance.
CHECKED = [f"{m}_at_{k}" for m in ("ndcg", "map", "recall", "mrr") for k in (1, 10, 100)]


@pytest.fixture(scope="module")
def published(shared_data):
    path = shared_data / "mteb_results" / "sentence-transformers__all-MiniLM-L6-v2" / "SciFact.json"
    return json.loads(path.read_text())["scores"]["test"][0]


@pytest.mark.slow
def test_jaxembed_eval_reproduces_mteb_scifact(shared_data, minilm_dir, published, tmp_path):
    out = tmp_path / "scifact.json"
    argv = ["eval", "--model", str(minilm_dir), "--data", str(shared_data / "scifact")]
    argv += ["--split", "test", "--max-length", "256", "--output", str(out), "--quiet"]
    assert main(argv) == 0
    ours = json.loads(out.read_text())["scores"]["test"][0]
    assert ours["ndcg_at_10"] == pytest.approx(0.64508, abs=1e-3)
    assert ours["recall_at_100"] == pytest.approx(0.925, abs=1e-3)
    for name in CHECKED:
        assert ours[name] == pytest.approx(published[name], abs=1e-3), name


SUBSET_QUERIES = 40
SUBSET_OTHERS = 60


def write_subset(shared_data, directory):
    """The first test queries, their judged documents and some others, as a BEIR split."""
    from jaxembed.data.formats import load_beir

    data = load_beir(shared_data / "scifact", "test")
    qids = list(data.qrels)[:SUBSET_QUERIES]
    judged = {d for q in qids for d in data.qrels[q]}
    others = [d for d in data.corpus if d not in judged][:: len(data.corpus) // SUBSET_OTHERS]
    keep = judged | set(others[:SUBSET_OTHERS])
    (directory / "qrels").mkdir(parents=True)
    with open(directory / "corpus.jsonl", "w") as f:
        for d, p in data.corpus.items():
            if d in keep:
                f.write(json.dumps({"_id": d, "title": p.title, "text": p.text}) + "\n")
    with open(directory / "queries.jsonl", "w") as f:
        for q in qids:
            f.write(json.dumps({"_id": q, "text": data.queries[q]}) + "\n")
    rows = [f"{q}\t{d}\t{s}" for q in qids for d, s in data.qrels[q].items()]
    (directory / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows))
    return load_beir(directory, "test")


def test_jaxembed_eval_equals_mteb_with_sentence_transformers_on_a_scifact_subset(
    shared_data, minilm_dir, tmp_path
):
    mteb = pytest.importorskip("mteb", reason="mteb (test extra)")
    from sentence_transformers import SentenceTransformer

    from data_helpers.mteb_task import local_task

    subset = write_subset(shared_data, tmp_path / "scifact-subset")
    out = tmp_path / "m.json"
    argv = ["eval", "--model", str(minilm_dir), "--data", str(tmp_path / "scifact-subset")]
    assert main([*argv, "--max-length", "256", "--output", str(out), "--quiet"]) == 0
    ours = json.loads(out.read_text())["scores"]["test"][0]

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    model.max_seq_length = 256
    result = mteb.evaluate(
        model, local_task(subset), cache=None, co2_tracker=False, show_progress_bar=False
    )
    theirs = result.task_results[0].scores["test"][0]
    for name in CHECKED:
        # mteb rounds to 1e-5; embeddings agree to ~1e-6, so ranks (and scores) are the same.
        assert ours[name] == pytest.approx(theirs[name], abs=2e-5), name
