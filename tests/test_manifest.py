"""The fine-tuning mix (issue 21): a manifest of datasets with task types, instructions and
weights; document-side instructions; classification and pair converters; same-label false
negatives masked."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.cli import main
from jaxembed.data import BatchIterator, PipelineConfig
from jaxembed.data.manifest import read_manifest
from jaxembed.errors import UserInputError
from jaxembed.losses import contrastive_loss
from jaxembed.train.loop import load_datasets
from jaxembed.train.settings import DataSettings

from data_helpers.synthetic import tiny_tokenizer
from test_losses import reference_loss

RETRIEVAL_INSTRUCTION = "find the passage"
STS_INSTRUCTION = "match the sentence"
LABELS = ["joy", "anger", "fear", "sadness"]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _text(kind: str, i: int) -> str:
    return f"{kind} {WORDS[i % len(WORDS)]} {WORDS[(i * 7 + 3) % len(WORDS)]} {i}"


@pytest.fixture
def mix(tmp_path) -> Path:
    """Retrieval, STS and classification files (the last from `jaxembed data convert`)."""
    _write_jsonl(
        tmp_path / "ret.jsonl",
        [{"query": _text("question", i), "positives": [_text("doc", i)],
          "negatives": [_text("other", i)]} for i in range(30)],
    )  # fmt: skip
    _write_jsonl(
        tmp_path / "sts.jsonl",
        [{"query": _text("left", i), "positives": [_text("right", i)],
          "negatives": [_text("far", i)]} for i in range(20)],
    )  # fmt: skip
    table = _write_jsonl(
        tmp_path / "emotion_table.jsonl",
        [{"text": _text("tweet", i), "label": i % len(LABELS)} for i in range(24)],
    )
    assert main(["data", "convert", "classification", "--input", str(table), "--output",
                 str(tmp_path / "emotion.jsonl"), "--label-names", ",".join(LABELS),
                 "--num-negatives", "1"]) == 0  # fmt: skip
    manifest = {
        "datasets": [
            {"path": "ret.jsonl", "task": "retrieval", "weight": 3,
             "query_instruction": RETRIEVAL_INSTRUCTION},
            {"path": "sts.jsonl", "task": "sts", "weight": 2,
             "query_instruction": STS_INSTRUCTION},
            {"name": "emotion", "path": "emotion.jsonl", "task": "classification", "weight": 1,
             "query_instruction": "classify the emotion"},
        ]
    }  # fmt: skip
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(manifest))
    return path


def _tokenizer(mix: Path):
    texts = [line for p in mix.parent.glob("*.jsonl") for line in p.read_text().splitlines()]
    extra = " ".join(texts) + f" Instruct Query {RETRIEVAL_INSTRUCTION} {STS_INSTRUCTION}"
    return tiny_tokenizer((extra + " classify the emotion " + " ".join(LABELS),))


def _datasets(manifest: Path):
    settings = DataSettings(
        train_files=(), weights=(), manifest=str(manifest), format="jsonl", instruction="",
        eval_dir="", eval_split="test", tokenizer="", query_max_length=48,
        passage_max_length=48,
    )  # fmt: skip
    return load_datasets(settings)


def _iterator(mix: Path, **kw) -> BatchIterator:
    config = PipelineConfig(
        global_batch_size=6, num_negatives=1, query_max_length=48, passage_max_length=48,
        homogeneous=True, prefetch=0, seed=3, **kw,
    )  # fmt: skip
    return BatchIterator(_datasets(mix), _tokenizer(mix), config)


def _decode(tok, ids, mask) -> str:
    return tok.decode(ids[mask.astype(bool)], skip_special_tokens=True)


def test_converted_classification_records(tmp_path, mix):
    records = [json.loads(x) for x in (tmp_path / "emotion.jsonl").read_text().splitlines()]
    assert len(records) == 24
    for i, record in enumerate(records):
        assert record["query"] == _text("tweet", i)
        assert record["positives"] == [LABELS[i % len(LABELS)]]
        (negative,) = record["negatives"]
        assert negative in LABELS and negative != record["positives"][0]
    # Drawn per row: every other label turns up, and a rerun draws the same ones.
    assert {r["negatives"][0] for r in records} == set(LABELS)
    again = tmp_path / "again.jsonl"
    main(["data", "convert", "classification", "--input", str(tmp_path / "emotion_table.jsonl"),
          "--output", str(again), "--label-names", ",".join(LABELS),
          "--num-negatives", "1"])  # fmt: skip
    assert again.read_text() == (tmp_path / "emotion.jsonl").read_text()


def test_batches_follow_the_weights_and_never_mix(mix):
    with _iterator(mix) as it:
        picks = []
        for _ in range(300):
            index = np.asarray(next(it)["dataset_index"])
            assert len(set(index.tolist())) == 1  # homogeneous: one dataset a batch
            picks.append(int(index[0]))
    counts = Counter(picks)
    expected = np.array([3, 2, 1]) / 6 * 300
    chi2 = sum((counts[d] - e) ** 2 / e for d, e in enumerate(expected))
    assert chi2 < 13.8, (counts, chi2)  # chi-square, 2 degrees of freedom, p = 0.001


def test_instructions_are_where_the_manifest_puts_them(mix):
    tok = _tokenizer(mix)
    seen = set()
    with _iterator(mix) as it:
        for _ in range(40):
            batch = {k: np.asarray(v) for k, v in next(it).items()}
            d = int(batch["dataset_index"][0])
            seen.add(d)
            query = _decode(tok, batch["query_input_ids"][0], batch["query_attention_mask"][0])
            passages = [
                _decode(
                    tok, batch["passage_input_ids"][0, j], batch["passage_attention_mask"][0, j]
                )
                for j in range(2)
            ]
            pooled = _decode(
                tok, batch["passage_input_ids"][0, 0], batch["passage_pool_mask"][0, 0]
            )
            if d == 0:  # retrieval: the query only
                assert query.startswith(f"Instruct : {RETRIEVAL_INSTRUCTION} Query : question")
                assert all(p.startswith(("doc", "other")) for p in passages)
            elif d == 1:  # STS: both sides
                assert query.startswith(f"Instruct : {STS_INSTRUCTION} Query : left")
                assert all(p.startswith(f"Instruct : {STS_INSTRUCTION} Query :") for p in passages)
                assert pooled.startswith("right")  # the pool mask leaves the instruction out
            else:  # classification: both sides, the label name the positive
                assert query.startswith("Instruct : classify the emotion Query : tweet")
                label = passages[0].split("Query : ")[1]
                assert passages[0].startswith("Instruct : classify the emotion") and label in LABELS
    assert seen == {0, 1, 2}


def test_resume_mid_epoch_gives_the_same_batches(mix):
    with _iterator(mix) as it:
        for _ in range(7):
            next(it)
        state = it.state
        expected = [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(5)]
    config = PipelineConfig(
        global_batch_size=6, num_negatives=1, query_max_length=48, passage_max_length=48,
        homogeneous=True, prefetch=0, seed=3,
    )  # fmt: skip
    with BatchIterator(_datasets(mix), _tokenizer(mix), config, state=state) as resumed:
        got = [{k: np.asarray(v) for k, v in next(resumed).items()} for _ in range(5)]
    for a, b in zip(expected, got, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_same_label_records_mask_each_others_positive(mix):
    """Two tweets of one label in a batch: each one's positive is the other's in-batch
    candidate, the same text, so the loss drops it (equal to the numpy reference with the
    mask, and different from the loss without it)."""
    with _iterator(mix) as it:
        for _ in range(100):
            batch = {k: np.asarray(v) for k, v in next(it).items()}
            if batch["dataset_index"][0] == 2:
                break
    ids = batch["doc_ids"]
    assert len(set(ids[:, 0].tolist())) < len(ids)  # 6 tweets, 4 labels: a label repeats
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 8)).astype(np.float32)
    p = rng.normal(size=(6, 2, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    loss, _ = contrastive_loss(
        jnp.asarray(q), jnp.asarray(p), variant="in_batch", temperature=0.05,
        doc_ids=jnp.asarray(ids),
    )  # fmt: skip
    assert abs(float(loss) - reference_loss(q, p, "in_batch", 0.05, ids)) < 1e-5
    unmasked, _ = contrastive_loss(jnp.asarray(q), jnp.asarray(p), variant="in_batch",
                                   temperature=0.05)  # fmt: skip
    assert abs(float(loss) - float(unmasked)) > 1e-3


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"path": "ret.jsonl", "task": "ranking"}, "datasets[0].task: 'ranking' is not one of"),
        ({"path": "missing.jsonl"}, "datasets[0].path:"),
        ({"path": "ret.jsonl", "weight": -1}, "datasets[0].weight: -1 must be a number >= 0"),
        ({"path": "ret.jsonl", "weigth": 2}, "datasets[0]: unknown key 'weigth'"),
        ({"task": "sts"}, "datasets[0]: missing 'path'"),
    ],
)
def test_bad_manifests_name_the_entry_and_key(tmp_path, mix, entry, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"datasets": [entry]}))  # JSON is YAML
    with pytest.raises(UserInputError, match="bad.yaml: " + message.replace("[", r"\[")):
        read_manifest(bad)


def test_bad_manifest_stops_train_with_one_line(tmp_path, mix, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"path": "ret.jsonl", "task": "nli"}]))
    code = main(["train", "--workdir", str(tmp_path / "run"),
                 f"--config.data.manifest={bad}", "--config.model.init=random",
                 f"--config.data.tokenizer={tmp_path}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "bad.json: datasets[0].task: 'nli' is not one of" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_symmetric_tasks_default_to_the_query_instruction(mix):
    entries = {e.name: e for e in read_manifest(mix)}
    assert entries["ret"].document_instruction == ""
    assert entries["sts"].document_instruction is None  # each record's query instruction
    assert entries["emotion"].symmetric and not entries["ret"].symmetric


def test_synth_classification_records_keep_their_own_task_instruction(tmp_path):
    """`jaxembed synth --strategy classification` output (the task as each record's
    instruction, provenance beside it) as a classification dataset: both sides carry the
    record's task, not the manifest's."""
    task = "sort the alpha"
    rows = [
        {
            "query": _text("tweet", i),
            "positives": [LABELS[i % 4]],
            "negatives": [LABELS[(i + 1) % 4]],
            "instruction": task,
            "provenance": {"strategy": "classification", "model": "m"},
        }
        for i in range(12)
    ]
    _write_jsonl(tmp_path / "synth_cls.jsonl", rows)
    manifest = tmp_path / "mix.yaml"
    manifest.write_text(
        "datasets:\n  - {path: synth_cls.jsonl, task: classification,"
        " query_instruction: ignored default}\n"
    )
    tok = _tokenizer(manifest)
    config = PipelineConfig(
        global_batch_size=4, num_negatives=1, query_max_length=48, passage_max_length=48,
        prefetch=0,
    )  # fmt: skip
    with BatchIterator(_datasets(manifest), tok, config) as it:
        batch = {k: np.asarray(v) for k, v in next(it).items()}
    for i in range(4):
        query = _decode(tok, batch["query_input_ids"][i], batch["query_attention_mask"][i])
        label = _decode(
            tok, batch["passage_input_ids"][i, 0], batch["passage_attention_mask"][i, 0]
        )
        assert query.startswith(f"Instruct : {task} Query : tweet")
        assert label.startswith(f"Instruct : {task} Query :") and label.split()[-1] in LABELS


def test_pairs_keep_scores_above_the_threshold(tmp_path):
    table = tmp_path / "stsb.tsv"
    table.write_text(
        "sentence1\tsentence2\tscore\na cat sits\ta cat is sitting\t4.6\n"
        "a dog runs\tthe sky is blue\t0.4\nmen talk\ttwo men speak\t4.0\n"
    )
    out = tmp_path / "stsb.jsonl"
    assert main(["data", "convert", "pairs", "--input", str(table), "--output", str(out),
                 "--score-field", "score", "--both-directions"]) == 0  # fmt: skip
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["query"], r["positives"]) for r in records] == [
        ("a cat sits", ["a cat is sitting"]), ("a cat is sitting", ["a cat sits"]),
        ("men talk", ["two men speak"]), ("two men speak", ["men talk"]),
    ]  # fmt: skip


def test_bad_table_rows_are_one_line_and_write_nothing(tmp_path, capsys):
    table = _write_jsonl(tmp_path / "t.jsonl", [{"text": "fine", "label": 0},
                                                {"text": "bad", "label": 9}])  # fmt: skip
    out = tmp_path / "out.jsonl"
    code = main(["data", "convert", "classification", "--input", str(table), "--output",
                 str(out), "--label-names", "a,b", "--num-negatives", "1"])  # fmt: skip
    assert code == 2
    assert "t.jsonl:2: label 9 is outside --label-names (0..1)" in capsys.readouterr().err
    assert not out.exists()
