"""TFDS ArrayRecord builder: build from validated records, read back every record intact."""

import json
import sys

from jaxembed.data import Passage, TrainingRecord, read_training_jsonl
from jaxembed.data.tfds_builder import build_tfds_dataset, open_tfds_records

from data_helpers.synthetic import make_records


def test_build_and_read_back_round_trips_every_record(tmp_path):
    records = make_records(40, seed=3, negatives=(0, 4))
    records.append(
        TrainingRecord(
            "ünïcode query\nwith newline",
            (Passage("d1", "body é", "Title"), Passage("text:ab", "second")),
            (),
            "",
            "other",
        )
    )
    source_file = tmp_path / "train.jsonl"
    with open(source_file, "w", encoding="utf-8") as f:
        for r in records:
            row = {
                "query": r.query,
                "positives": [{"id": p.id, "text": p.text, "title": p.title} for p in r.positives],
                "negatives": [{"id": p.id, "text": p.text} for p in r.negatives],
                "instruction": r.instruction,
                "dataset": r.dataset,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    out = build_tfds_dataset(read_training_jsonl(source_file), tmp_path / "tfds")
    assert any(p.name.endswith(".array_record-00000-of-00001") for p in out.iterdir())

    source = open_tfds_records(tmp_path / "tfds")
    assert len(source) == len(records)
    assert [source[i] for i in range(len(source))] == records
    assert source.get_many([5, 0, 40]) == [records[5], records[0], records[40]]
    # Random access and the builder work without TensorFlow.
    assert "tensorflow" not in sys.modules


def test_pipeline_reads_the_tfds_source_like_the_in_memory_records(tmp_path):
    from jaxembed.data import BatchIterator, DatasetSpec, PipelineConfig

    from data_helpers.synthetic import tiny_tokenizer

    records = make_records(24, seed=4, negatives=(0, 3))
    build_tfds_dataset(records, tmp_path / "tfds")
    cfg = PipelineConfig(
        global_batch_size=8,
        num_negatives=2,
        query_max_length=32,
        passage_max_length=48,
        more_negatives="sample",
    )
    tok = tiny_tokenizer()
    outs = []
    for source in (records, open_tfds_records(tmp_path / "tfds")):
        with BatchIterator([DatasetSpec("s", source)], tok, cfg) as it:
            outs.append([next(it) for _ in range(4)])
    for a, b in zip(*outs, strict=True):
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
