"""`jaxembed eval`: the run is an exact search, metrics are trec_eval's, bad input is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxembed.cli import main
from jaxembed.data.trec_run import read_trec_run
from jaxembed.models.encoder import Encoder

from data_helpers.beir import write_beir
from tiny_models import make_hf_model

pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec-eval-terrier (test extra)")

DEPTH = 15


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    make_hf_model("llama", directory)
    return directory


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "tinyset")


@pytest.fixture(scope="module")
def evaluated(model_dir, beir_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "metrics.json"
    argv = ["eval", "--model", str(model_dir), "--data", str(beir_dir), "--output", str(out)]
    emb = out.parent / "emb"
    assert main([*argv, "--depth", str(DEPTH), "--save-embeddings", str(emb), "--quiet"]) == 0
    return json.loads(out.read_text()), read_trec_run(out.with_suffix(".trec")), emb


def read_qrels(path):
    qrels = {}
    for line in path.read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    return qrels


def test_run_is_the_exact_top_k_without_the_query_itself(evaluated, model_dir, beir_dir):
    _, run, _ = evaluated
    docs = [json.loads(line) for line in (beir_dir / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (beir_dir / "queries.jsonl").read_text().splitlines()]
    encoder = Encoder.from_pretrained(model_dir)
    doc_text = [(f"{d['title']} {d['text']}".strip() if d["title"] else d["text"]) for d in docs]
    scores = (
        encoder.encode([q["text"] for q in queries], show_progress=False)
        @ encoder.encode(doc_text, show_progress=False).T
    )
    for q, row in zip(queries, scores, strict=True):
        expected = [docs[j]["_id"] for j in np.argsort(-row) if docs[j]["_id"] != q["_id"]]
        assert set(run[q["_id"]]) == set(expected[:DEPTH])
        for doc_id, score in run[q["_id"]].items():
            j = next(i for i, d in enumerate(docs) if d["_id"] == doc_id)
            assert score == pytest.approx(row[j], abs=1e-5)
    assert "q3" not in run["q3"]


def test_saved_embeddings_are_all_queries_and_documents_in_file_order(
    evaluated, model_dir, beir_dir
):
    emb = evaluated[2]
    queries = [json.loads(line) for line in (beir_dir / "queries.jsonl").read_text().splitlines()]
    docs = [json.loads(line) for line in (beir_dir / "corpus.jsonl").read_text().splitlines()]
    assert (emb / "queries_ids.txt").read_text().split() == [q["_id"] for q in queries]
    assert (emb / "corpus_ids.txt").read_text().split() == [d["_id"] for d in docs]
    encoder = Encoder.from_pretrained(model_dir)
    expected = encoder.encode([q["text"] for q in queries], show_progress=False)
    np.testing.assert_allclose(np.load(emb / "queries.npy"), expected, atol=1e-6)
    assert np.load(emb / "corpus.npy").shape == (len(docs), encoder.config.hidden_size)


def test_metrics_json_equals_pytrec_eval_on_the_written_run(evaluated, beir_dir):
    result, run, _ = evaluated
    qrels = read_qrels(beir_dir / "qrels" / "test.tsv")
    with_positives = {q: r for q, r in qrels.items() if any(v > 0 for v in r.values())}
    per_query = pytrec_eval.RelevanceEvaluator(
        with_positives, {"ndcg_cut.1,10", "recall.5,10", "map_cut.10", "P.3"}
    ).evaluate(run)
    scores = result["scores"]["test"][0]
    assert result["task_name"] == "tinyset"
    assert scores["main_score"] == scores["ndcg_at_10"]
    for ours, theirs in [
        ("ndcg_at_1", "ndcg_cut_1"),
        ("ndcg_at_10", "ndcg_cut_10"),
        ("recall_at_5", "recall_5"),
        ("recall_at_10", "recall_10"),
        ("map_at_10", "map_cut_10"),
        ("precision_at_3", "P_3"),
    ]:
        mean = sum(v[theirs] for v in per_query.values()) / len(per_query)
        assert scores[ours] == pytest.approx(mean, abs=1e-9), ours


def test_scoring_the_run_file_gives_the_same_metrics(evaluated, beir_dir, tmp_path):
    result, _, _ = evaluated
    run_path = tmp_path / "run.trec"
    # The run as `jaxembed eval` wrote it, scored without any model.
    run = evaluated[1]
    with open(run_path, "w") as f:
        for qid, docs in run.items():
            for rank, (doc, score) in enumerate(docs.items(), start=1):
                f.write(f"{qid} Q0 {doc} {rank} {score!r} other\n")
    out = tmp_path / "m.json"
    qrels = beir_dir / "qrels" / "test.tsv"
    argv = ["eval", "--run", str(run_path), "--qrels", str(qrels), "--output", str(out)]
    assert main(argv) == 0
    again = json.loads(out.read_text())["scores"]["test"][0]
    assert again == result["scores"]["test"][0]


def _fails(argv, capsys, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for needle in needles:
        assert needle in err, err


def test_qrels_naming_an_unknown_document(model_dir, beir_dir, tmp_path, capsys):
    bad = write_beir(tmp_path / "bad")
    with open(bad / "qrels" / "test.tsv", "a") as f:
        f.write("q1\tnot-a-doc\t1\n")
    lines = (bad / "qrels" / "test.tsv").read_text().count("\n")
    out = tmp_path / "m.json"
    argv = ["eval", "--model", str(model_dir), "--data", str(bad), "--output", str(out)]
    _fails(argv, capsys, f"test.tsv:{lines}", "unknown corpus id", "not-a-doc")
    assert not out.exists()


def test_empty_and_missing_splits(model_dir, beir_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    base = ["eval", "--model", str(model_dir), "--data", str(beir_dir), "--output", str(out)]
    _fails([*base, "--split", "dev"], capsys, "dev.tsv", "file not found")
    empty = write_beir(tmp_path / "empty")
    (empty / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    _fails(
        ["eval", "--model", str(model_dir), "--data", str(empty), "--output", str(out)],
        capsys,
        "no relevant judgments",
    )
    (empty / "corpus.jsonl").unlink()
    _fails(
        ["eval", "--model", str(model_dir), "--data", str(empty), "--output", str(out)],
        capsys,
        "corpus.jsonl: file not found",
    )
    assert not out.exists()


def test_bad_run_files(beir_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    qrels = str(beir_dir / "qrels" / "test.tsv")
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 0.5 x\nq1 Q0 d2 2 0.4\n")
    _fails(["eval", "--run", str(run), "--qrels", qrels, "--output", str(out)], capsys, ":2:")
    run.write_text("q1 Q0 d1 1 high x\n")
    _fails(["eval", "--run", str(run), "--qrels", qrels, "--output", str(out)], capsys, "high")
    missing = str(tmp_path / "nope.trec")
    _fails(["eval", "--run", missing, "--qrels", qrels, "--output", str(out)], capsys, "nope")
    assert not out.exists()


def test_model_and_run_modes_are_exclusive(model_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(model_dir), "--output", str(tmp_path / "m.json")])
    assert e.value.code == 2
