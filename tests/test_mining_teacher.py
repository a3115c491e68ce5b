"""A jaxembed training workdir as the mining teacher: its latest checkpoint is exported and
mines exactly what `jaxembed export`'s directory of it mines."""

from __future__ import annotations

import json
from pathlib import Path

from jaxembed.cli import main
from jaxembed.demo import train_tokenizer
from jaxembed.synthetic import make_task, write_task


def test_training_workdir_teacher_is_its_exported_model(tmp_path, capsys):
    """A workdir teacher mines exactly what its `jaxembed export` directory mines."""
    task = make_task(0, train_docs=24, eval_docs=30, eval_queries=6)
    write_task(task, tmp_path / "task")
    texts = [r["query"] for r in task.train_records]
    texts += [p["text"] for r in task.train_records for p in r["positives"]]
    train_tokenizer(texts, vocab_size=300).save_pretrained(str(tmp_path / "tokenizer"))
    flags = [
        "--config",
        str(Path(__file__).parents[1] / "configs" / "tiny.py"),
        f"--config.data.train_files={tmp_path / 'task' / 'train.jsonl'}",
        f"--config.data.tokenizer={tmp_path / 'tokenizer'}",
        "--config.data.global_batch_size=8",
        "--config.data.query_max_length=16",
        "--config.data.passage_max_length=32",
        "--config.data.prefetch=0",
        "--config.train.steps=1",
        "--config.train.checkpoint_every=1",
    ]
    workdir = tmp_path / "workdir"
    assert main(["train", "--workdir", str(workdir), *flags]) == 0
    assert (workdir / "config.json").is_file()  # the run config, which export reads
    exported = tmp_path / "exported"
    assert main(["export", "--workdir", str(workdir), "--output", str(exported)]) == 0
    eval_dir = tmp_path / "task" / "eval"
    outputs = []
    for teacher in (workdir, exported):
        out = tmp_path / f"mined_{teacher.name}.jsonl"
        args = [
            "mine",
            "--corpus",
            str(eval_dir / "corpus.jsonl"),
            "--queries",
            str(eval_dir / "queries.jsonl"),
            "--qrels",
            str(eval_dir / "qrels" / "test.tsv"),
            "--teacher",
            str(teacher),
            "--method",
            "naive",
            "--num-negatives",
            "3",
            "--max-length",
            "32",
            "--output",
            str(out),
            "--quiet",
        ]
        assert main(args) == 0, capsys.readouterr().err
        outputs.append([json.loads(x) for x in out.read_text().splitlines()])
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 6 and all(len(r["negatives"]) == 3 for r in outputs[0])
