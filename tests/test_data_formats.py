"""Readers: every bad-record kind is located by file and line; skip mode keeps rejects."""

import json
from pathlib import Path

import pytest

from jaxembed.data import (
    DataFormatError,
    Rejects,
    beir_training_records,
    load_beir,
    read_training_jsonl,
)
from jaxembed.data.records import text_id

GOOD = {"query": "what is w1", "positives": ["w1 is a word"], "negatives": ["w2"]}

# (raw line, expected reason prefix): one per bad-record kind.
BAD_LINES = [
    (b'{"query": "q", "positives": ["p"]', "invalid JSON"),
    (b'{"query": "caf\xe9", "positives": ["p"]}', "invalid UTF-8"),
    (b'["query", "positives"]', "invalid record"),
    (b'{"positives": ["p"]}', "missing query"),
    (b'{"query": "  ", "positives": ["p"]}', "empty query"),
    (b'{"query": 7, "positives": ["p"]}', "non-string text: 'query' is int"),
    (b'{"query": "q", "positives": []}', "no positive"),
    (b'{"query": "q", "negatives": ["n"]}', "no positive"),
    (b'{"query": "q", "positives": [3]}', "non-string text: positives[0] is int"),
    (b'{"query": "q", "positives": [{"id": "a", "text": null}]}', "non-string text"),
    (
        b'{"query": "q", "positives": ["p"], "negatives": ["n", {"id": "x", "text": 1.5}]}',
        "non-string text: negatives[1].text is float",
    ),
    (b'{"query": "q", "positives": [{"id": "a"}]}', "missing text"),
    (b'{"query": "q", "positives": ["p"], "instruction": 3}', "non-string text: instruction"),
]


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("bad,reason", BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_each_bad_record_kind_raises_with_file_and_line(tmp_path, bad, reason):
    good = json.dumps(GOOD).encode()
    path = _write(tmp_path / "train.jsonl", [good, b"", good, bad, good])
    with pytest.raises(DataFormatError) as info:
        list(read_training_jsonl(path))
    err = info.value
    assert (err.path, err.line) == (str(path), 4)
    assert err.reason.startswith(reason), err.reason
    assert str(err).startswith(f"{path}:4: {reason}")


def test_skip_mode_counts_and_writes_every_reject(tmp_path):
    good = json.dumps(GOOD).encode()
    lines = [good]
    for bad, _ in BAD_LINES:
        lines += [bad, good]
    path = _write(tmp_path / "train.jsonl", lines)
    with Rejects(tmp_path / "rejects.jsonl") as rejects:
        records = list(read_training_jsonl(path, on_error="skip", rejects=rejects))
    assert len(records) == len(BAD_LINES) + 1
    assert rejects.count == len(BAD_LINES)
    logged = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [e["line"] for e in logged] == [2 + 2 * i for i in range(len(BAD_LINES))]
    assert all(e["file"] == str(path) for e in logged)
    for entry, (bad, reason) in zip(logged, BAD_LINES, strict=True):
        assert entry["reason"].startswith(reason)
        assert entry["raw"] == bad.decode("utf-8", errors="replace")
    assert rejects.by_reason["no positive"] == 2


def test_skip_mode_refuses_to_drop_silently(tmp_path):
    path = _write(tmp_path / "t.jsonl", [json.dumps(GOOD).encode()])
    with pytest.raises(ValueError, match="Rejects"):
        list(read_training_jsonl(path, on_error="skip"))


def test_record_fields_ids_and_defaults(tmp_path):
    rows = [
        {"query": "q1", "positives": [{"id": "d1", "text": "t1", "title": "T"}], "negatives": []},
        {
            "query": "q2",
            "positives": ["same"],
            "negatives": ["same", "other"],
            "instruction": "own",
            "dataset": "mine",
        },
    ]
    path = _write(tmp_path / "msmarco.jsonl", [json.dumps(r).encode() for r in rows])
    r1, r2 = read_training_jsonl(path, instruction="default instr")
    assert (r1.instruction, r1.dataset) == ("default instr", "msmarco")
    assert r1.positives[0].id == "d1" and r1.positives[0].full_text() == "T t1"
    assert (r2.instruction, r2.dataset) == ("own", "mine")
    # Equal bare texts share one id, so the loss can mask the duplicate.
    assert r2.positives[0].id == r2.negatives[0].id == text_id("same")
    assert r2.negatives[1].id != r2.negatives[0].id


def test_nemo_and_sentence_transformers_columns(tmp_path):
    nemo = _write(
        tmp_path / "nemo.jsonl",
        [json.dumps({"question": "q", "pos_doc": ["p"], "neg_doc": ["n1", "n2"]}).encode()],
    )
    (rec,) = read_training_jsonl(nemo, format="nemo")
    assert rec.query == "q" and [p.text for p in rec.negatives] == ["n1", "n2"]
    st = _write(
        tmp_path / "st.jsonl",
        [
            json.dumps({"anchor": "a", "positive": "p", "negative": "n"}).encode(),
            json.dumps(
                {"anchor": "b", "positive": "p", "negative_2": "n2", "negative_1": "n1"}
            ).encode(),
        ],
    )
    a, b = read_training_jsonl(st, format="sentence_transformers")
    assert [p.text for p in a.positives] == ["p"] and [p.text for p in a.negatives] == ["n"]
    assert [p.text for p in b.negatives] == ["n1", "n2"]
    # The column convention is explicit: the wrong one is an error, not a guess.
    with pytest.raises(DataFormatError, match="missing query: no 'query' field"):
        list(read_training_jsonl(nemo))
    with pytest.raises(ValueError, match="format must be one of"):
        list(read_training_jsonl(nemo, format="csv"))


def _beir(tmp_path: Path, qrels: bytes) -> Path:
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(
        b'{"_id": "d1", "title": "T1", "text": "doc one"}\r\n'
        b'{"_id": "d2", "title": "", "text": "doc two"}\r\n'
        b'{"_id": 3, "text": "doc three"}\r\n'
    )
    (root / "queries.jsonl").write_bytes(
        b'{"_id": "q1", "text": "first"}\r\n{"_id": "q2", "text": "second"}\r\n'
    )
    (root / "qrels" / "test.tsv").write_bytes(qrels)
    return root


def test_beir_crlf_and_header(tmp_path):
    root = _beir(tmp_path, b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\t3\t0\r\nq2\td2\t2\r\n")
    beir = load_beir(root, "test")
    assert set(beir.corpus) == {"d1", "d2", "3"}
    assert beir.queries == {"q1": "first", "q2": "second"}
    assert beir.qrels == {"q1": {"d1": 1, "3": 0}, "q2": {"d2": 2}}
    records = beir_training_records(beir, instruction="i", dataset="toy")
    assert [(r.query, [p.id for p in r.positives]) for r in records] == [
        ("first", ["d1"]),
        ("second", ["d2"]),
    ]
    # Without a header row the first line is data.
    root2 = _beir(tmp_path / "b", b"q1\td1\t1\n")
    assert load_beir(root2).qrels == {"q1": {"d1": 1}}


@pytest.mark.parametrize(
    "qrels,line,reason",
    [
        (b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq9\td1\t1\r\n", 3, "unknown query id: 'q9'"),
        (b"q1\td1\t1\nq2\tnope\t1\n", 2, "unknown corpus id: 'nope'"),
        (b"q1\td1\t1\nq2\td2\n", 2, "bad qrels row"),
        (b"q1\td1\t1\nq2\td2\thigh\n", 2, "bad qrels score"),
    ],
)
def test_beir_qrels_errors(tmp_path, qrels, line, reason):
    root = _beir(tmp_path, qrels)
    with pytest.raises(DataFormatError) as info:
        load_beir(root)
    assert info.value.path == str(root / "qrels" / "test.tsv")
    assert info.value.line == line and info.value.reason.startswith(reason)


def test_beir_skip_unknown_ids(tmp_path):
    root = _beir(tmp_path, b"q1\td1\t1\nq9\td1\t1\nq2\tnope\t1\n")
    with Rejects(tmp_path / "rej.jsonl") as rejects:
        beir = load_beir(root, on_error="skip", rejects=rejects)
    assert beir.qrels == {"q1": {"d1": 1}}
    assert rejects.count == 2
    lines = [json.loads(x)["line"] for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert lines == [2, 3]


def test_beir_bad_corpus_line(tmp_path):
    root = _beir(tmp_path, b"q1\td1\t1\n")
    with open(root / "corpus.jsonl", "ab") as f:
        f.write(b'{"_id": "d4", "text": ["not", "text"]}\r\n')
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:4: non-string text: 'text' is list"):
        load_beir(root)


def test_beir_scifact_real(shared_data):
    root = shared_data / "scifact"
    test = load_beir(root, "test")
    assert len(test.corpus) == 5183 and len(test.queries) == 1109
    assert len(test.qrels) == 300 and sum(map(len, test.qrels.values())) == 339
    train = load_beir(root, "train")
    assert len(train.qrels) == 809
    records = beir_training_records(train, dataset="scifact")
    assert len(records) == 809
    assert all(r.query.strip() and r.positives for r in records)
