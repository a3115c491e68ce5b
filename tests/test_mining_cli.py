"""`jaxembed mine` end to end: BEIR and training-JSONL inputs against a numpy miner, the
report, teacher models (checked against transformers), and bad input (one error line naming
the item, exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jaxembed.cli import main
from jaxembed.data.formats import read_training_jsonl

from tiny_models import WORDS, make_hf_model

RNG = np.random.default_rng(1)
N_DOCS, N_QUERIES, DIM = 60, 10, 12
DOC_TEXTS = [" ".join(RNG.choice(WORDS, size=int(RNG.integers(3, 12)))) for _ in range(N_DOCS)]
QUERY_TEXTS = [" ".join(RNG.choice(WORDS, size=int(RNG.integers(2, 6)))) for _ in range(N_QUERIES)]
POSITIVES = {
    q: sorted(RNG.choice(N_DOCS, size=1 + q % 2, replace=False).tolist()) for q in range(N_QUERIES)
}
DOC_EMB = RNG.standard_normal((N_DOCS, DIM)).astype(np.float32)
QUERY_EMB = np.stack([DOC_EMB[p].mean(0) for p in POSITIVES.values()]) + 0.5 * RNG.standard_normal(
    (N_QUERIES, DIM)
).astype(np.float32)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def beir(tmp_path):
    """BEIR files plus one extra, unjudged query (so query rows != mined queries)."""
    write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(DOC_TEXTS)],
    )
    write_jsonl(
        tmp_path / "queries.jsonl",
        [{"_id": f"q{i}", "text": t} for i, t in enumerate(QUERY_TEXTS)]
        + [{"_id": "unjudged", "text": "w1 w2"}],
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"q{q}\td{d}\t1\n" for q, docs in POSITIVES.items() for d in docs)
        + "q0\td59\t0\n"  # a judged non-relevant document is not a positive
    )
    np.save(tmp_path / "q.npy", np.concatenate([QUERY_EMB, np.ones((1, DIM), np.float32)]))
    np.save(tmp_path / "c.npy", DOC_EMB)
    return tmp_path


def beir_args(root, *extra):
    return [
        "mine",
        "--corpus",
        str(root / "corpus.jsonl"),
        "--queries",
        str(root / "queries.jsonl"),
        "--qrels",
        str(root / "qrels.tsv"),
        "--output",
        str(root / "out" / "train.jsonl"),
        "--quiet",
        *extra,
    ]


def embedding_args(root):
    return ["--query-embeddings", str(root / "q.npy"), "--corpus-embeddings", str(root / "c.npy")]


def expected_perc(table, positives, p=0.95, n=3, window=8):
    """Numpy TopK-PercPos and the count of candidates its rule removes."""
    max_pos = max(len(v) for v in positives.values())
    out, removed = {}, 0
    for q, rows in positives.items():
        pos = table[q, rows].min()
        top = [r for r in np.argsort(-table[q])[: window + max_pos] if r not in rows]
        keep = [int(r) for r in top if table[q, r] < pos * p]
        removed += len(top) - len(keep)
        out[q] = keep[:n]
    return out, removed


def test_beir_precomputed_writes_training_jsonl_and_report(beir, capsys):
    (beir / "out").mkdir()
    args = beir_args(beir, *embedding_args(beir), "--num-negatives", "3", "--range-max", "8")
    assert main(args) == 0, capsys.readouterr().err
    assert "wrote 10 queries" in capsys.readouterr().out
    table = unit(QUERY_EMB) @ unit(DOC_EMB).T
    expected, removed = expected_perc(table, POSITIVES)
    out = beir / "out" / "train.jsonl"
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["query_id"] for x in lines] == [f"q{i}" for i in range(N_QUERIES)]
    for q, line in enumerate(lines):
        assert [n["id"] for n in line["negatives"]] == [f"d{r}" for r in expected[q]]
        assert [p["id"] for p in line["positives"]] == [f"d{r}" for r in POSITIVES[q]]
        for item in line["positives"] + line["negatives"]:
            assert abs(item["score"] - table[q, int(item["id"][1:])]) < 1e-5
            assert item["text"] == DOC_TEXTS[int(item["id"][1:])]
    # The data pipeline reads it back as training records.
    records = list(read_training_jsonl(out))
    assert [r.query for r in records] == QUERY_TEXTS
    assert [p.id for p in records[1].negatives] == [f"d{r}" for r in expected[1]]
    report = json.loads((beir / "out" / "train.report.json").read_text())
    assert report["queries"] == N_QUERIES
    assert report["removed_by_rule"]["perc"] == removed > 0
    assert report["removed_by_rule"]["positive"] == sum(map(len, POSITIVES.values()))
    found = sum(map(len, expected.values()))
    assert report["negatives"] == found == report["negative_scores"]["count"]
    assert sum(report["negative_scores"]["counts"]) == found
    short = [f"q{q}" for q, v in expected.items() if len(v) < 3]
    assert report["queries_short_of_negatives"] == len(short) and report["short_query_ids"] == short
    assert report["positive_scores"]["count"] == sum(map(len, POSITIVES.values()))


def test_training_jsonl_input_mines_like_beir(beir, capsys):
    (beir / "out").mkdir()
    rows = []
    for q, docs in POSITIVES.items():
        # Positives as {"id", "text"} objects (the id decides), or as bare texts (q4), which
        # are looked up in the corpus.
        pos = [{"id": f"d{d}", "text": "any"} for d in docs]
        if q == 4:
            pos = [DOC_TEXTS[d] for d in docs]
        rows.append({"query": QUERY_TEXTS[q], "positives": pos, "negatives": ["old"]})
    rows[2]["instruction"] = "own"
    train = write_jsonl(beir / "train_in.jsonl", rows)
    np.save(beir / "q_train.npy", QUERY_EMB)
    args = [
        "mine",
        "--corpus",
        str(beir / "corpus.jsonl"),
        "--train",
        str(train),
        "--query-embeddings",
        str(beir / "q_train.npy"),
        "--corpus-embeddings",
        str(beir / "c.npy"),
        "--num-negatives",
        "3",
        "--range-max",
        "8",
        "--instruction",
        "w9",
        "--output",
        str(beir / "out" / "t.jsonl"),
        "--quiet",
    ]
    assert main(args) == 0, capsys.readouterr().err
    expected, _ = expected_perc(unit(QUERY_EMB) @ unit(DOC_EMB).T, POSITIVES)
    lines = [json.loads(x) for x in (beir / "out" / "t.jsonl").read_text().splitlines()]
    assert [[n["id"] for n in x["negatives"]] for x in lines] == [
        [f"d{r}" for r in expected[q]] for q in range(N_QUERIES)
    ]
    assert lines[0]["query_id"] == "line1"
    assert [x["instruction"] for x in lines] == ["w9", "w9", "own"] + ["w9"] * (N_QUERIES - 3)


def _fails(args, capsys, tmp_path=None):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxembed mine: error: "), err
    return lines[0]


def test_bad_input_names_the_item(beir, capsys):
    out = beir / "out" / "train.jsonl"
    (beir / "out").mkdir()
    emb = embedding_args(beir)
    # A judged query without a positive.
    qrels = beir / "qrels.tsv"
    good_qrels = qrels.read_text()
    qrels.write_text(good_qrels + "unjudged\td3\t0\n")
    assert "query 'unjudged' has no positive" in _fails(beir_args(beir, *emb), capsys)
    # A positive id missing from the corpus.
    qrels.write_text(good_qrels + "q1\tnope\t1\n")
    err = _fails(beir_args(beir, *emb), capsys)
    assert f"{qrels}:{good_qrels.count(chr(10)) + 1}: unknown corpus id: 'nope'" in err
    qrels.write_text(good_qrels)
    train = write_jsonl(
        beir / "t.jsonl",
        [
            {"query": "w1", "positives": [{"id": "d1", "text": "x"}]},
            {"query": "w2", "positives": [{"id": "dx", "text": "y"}]},
        ],
    )
    args = [
        "mine",
        "--corpus",
        str(beir / "corpus.jsonl"),
        "--train",
        str(train),
        *emb,
        "--output",
        str(out),
        "--quiet",
    ]
    assert f"{train}:2: positive id 'dx' is not in" in _fails(args, capsys)
    # Embedding rows that do not match the files.
    np.save(beir / "q_bad.npy", QUERY_EMB)  # 10 rows; queries.jsonl has 11
    args = beir_args(
        beir,
        "--query-embeddings",
        str(beir / "q_bad.npy"),
        "--corpus-embeddings",
        str(beir / "c.npy"),
    )
    err = _fails(args, capsys)
    assert "q_bad.npy: 10 rows but" in err and "queries.jsonl has 11 records" in err
    np.save(beir / "c_bad.npy", DOC_EMB[:-1])
    args = beir_args(
        beir,
        "--query-embeddings",
        str(beir / "q.npy"),
        "--corpus-embeddings",
        str(beir / "c_bad.npy"),
    )
    assert "c_bad.npy: 59 rows but" in _fails(args, capsys)
    # Mismatched dimensions.
    np.save(beir / "c_dim.npy", DOC_EMB[:, :5])
    args = beir_args(
        beir,
        "--query-embeddings",
        str(beir / "q.npy"),
        "--corpus-embeddings",
        str(beir / "c_dim.npy"),
    )
    err = _fails(args, capsys)
    assert "q.npy has 12" in err and "c_dim.npy has 5" in err
    # Settings.
    assert "takes no margin" in _fails(
        beir_args(beir, *emb, "--method", "naive", "--margin", "1"), capsys
    )
    assert "--teacher" in _fails(beir_args(beir), capsys)
    assert not out.exists()
    # An empty corpus.
    (beir / "corpus.jsonl").write_text("")
    assert "empty corpus" in _fails(beir_args(beir, *emb), capsys)


def _torch_embeddings(model, tokenizer, texts):
    """Reference teacher: transformers forward, bidirectional, mean pooling, L2 norm."""
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    out = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        mask = torch.ones((1, 1, len(ids), len(ids)), dtype=torch.bool)
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), attention_mask=mask).last_hidden_state
        pooled = hidden[0].numpy().mean(0)
        out.append(pooled / np.linalg.norm(pooled))
    return np.stack(out)


def test_teacher_models_encode_with_the_instruction_and_average(beir, tmp_path_factory, capsys):
    from transformers import AutoTokenizer

    dirs = [tmp_path_factory.mktemp(f"teacher{s}") for s in (0, 1)]
    models = [make_hf_model("llama", d, seed=s) for s, d in enumerate(dirs)]
    tokenizer = AutoTokenizer.from_pretrained(str(dirs[0]))
    instruction = "w7 w8"
    formatted = [f"Instruct: {instruction}\nQuery: {t}" for t in QUERY_TEXTS]
    table = np.mean(
        [
            _torch_embeddings(m, tokenizer, formatted)
            @ _torch_embeddings(m, tokenizer, DOC_TEXTS).T
            for m in models
        ],
        axis=0,
    )
    (beir / "out").mkdir()
    args = beir_args(
        beir,
        "--teacher",
        str(dirs[0]),
        "--teacher",
        str(dirs[1]),
        "--instruction",
        instruction,
        "--num-negatives",
        "3",
        "--range-max",
        "8",
        "--batch-size",
        "32",
        "--max-length",
        "32",
    )
    assert main(args) == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in (beir / "out" / "train.jsonl").read_text().splitlines()]
    expected, _ = expected_perc(table, POSITIVES)
    for q, line in enumerate(lines):
        assert line["instruction"] == instruction
        for item in line["positives"] + line["negatives"]:
            assert abs(item["score"] - table[q, int(item["id"][1:])]) < 1e-4
        assert [n["id"] for n in line["negatives"]] == [f"d{r}" for r in expected[q]]
    assert not [p for p in (beir / "out").iterdir() if p.name.startswith(".mine-")]
