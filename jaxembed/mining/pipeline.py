"""Files in, files out: mine a task and write training JSONL plus the JSON report.

Each output line is one query in the data pipeline's training format, with ids, texts and
teacher scores (extra keys the reader ignores):

    {"query_id": ..., "query": ..., "instruction": ...,
     "positives": [{"id", "title", "text", "score"}],
     "negatives": [{"id", "title", "text", "score"[, "random_fill": true]}]}
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxembed.errors import UserInputError
from jaxembed.io_utils import atomic_file
from jaxembed.mining.inputs import MiningTask
from jaxembed.mining.methods import MiningConfig
from jaxembed.mining.miner import MinedBlock, mine_embeddings
from jaxembed.mining.report import MiningReport
from jaxembed.mining.search import IndexConfig
from jaxembed.mining.teacher import precomputed_sources, teacher_sources


def _passage(task: MiningTask, row: int, score: float) -> dict[str, Any]:
    p = task.corpus[row]
    out: dict[str, Any] = {"id": p.id}
    if p.title:
        out["title"] = p.title
    out["text"] = p.text
    out["score"] = round(float(score), 6)
    return out


def records(task: MiningTask, blocks: Iterable[MinedBlock]) -> Iterable[dict[str, Any]]:
    for block in blocks:
        for b, q in enumerate(block.queries.tolist()):
            record: dict[str, Any] = {"query_id": task.query_ids[q], "query": task.query_texts[q]}
            if task.instructions[q]:
                record["instruction"] = task.instructions[q]
            record["positives"] = [
                _passage(task, r, s)
                for r, s in zip(task.positives[q], block.positive_scores[b].tolist(), strict=True)
            ]
            negatives = []
            for r, s, fill in zip(
                block.negatives[b].tolist(),
                block.scores[b].tolist(),
                block.filled[b].tolist(),
                strict=True,
            ):
                if r < 0:
                    continue
                negatives.append(_passage(task, r, s))
                if fill:
                    negatives[-1]["random_fill"] = True
            record["negatives"] = negatives
            yield record


def default_report_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".report.json")


def run_mining(
    task: MiningTask,
    config: MiningConfig,
    output: str | Path,
    *,
    index: IndexConfig | None = None,
    report_path: str | Path | None = None,
    query_embeddings: Sequence[str | Path] = (),
    corpus_embeddings: Sequence[str | Path] = (),
    teachers: Sequence[str | Path] = (),
    teacher_options: dict[str, Any] | None = None,
    query_block: int = 16384,
    show_progress: bool = False,
) -> MiningReport:
    """Mine with precomputed embeddings (one .npy pair per teacher) or teacher model
    directories (several: the mean of their scores); write `output` and the report."""
    if bool(teachers) == bool(query_embeddings or corpus_embeddings):
        raise UserInputError("give either teacher models or query/corpus embedding files")
    if query_block < 1:
        raise UserInputError(f"query_block must be >= 1, got {query_block}")
    index = index or IndexConfig()
    output = Path(output)
    report_path = Path(report_path) if report_path else default_report_path(output)
    settings = dataclasses.asdict(config) | {"window": config.window}
    settings |= {"index": dataclasses.asdict(index), "max_positives": task.max_positives}
    settings |= {"teachers": [str(t) for t in teachers] or None}
    report = MiningReport(settings)
    report.removed["duplicate_corpus_text"] = int((~task.keep).sum())
    if not output.parent.is_dir():
        raise UserInputError(f"{output}: output directory {output.parent} does not exist")
    # Teacher embeddings are written beside the output (same disk), and removed after.
    scratch_dir = tempfile.TemporaryDirectory(prefix=".mine-", dir=output.parent)
    with scratch_dir as scratch:
        if teachers:
            queries, corpus = teacher_sources(
                task, teachers, scratch, show_progress=show_progress, **(teacher_options or {})
            )
            query_rows = np.arange(len(task.query_texts))
        else:
            queries, corpus = precomputed_sources(task, query_embeddings, corpus_embeddings)
            query_rows = task.query_rows
        blocks = mine_embeddings(
            queries,
            corpus,
            query_rows,
            task.positives,
            config,
            index,
            group=task.group,
            group_positives=task.group_positives,
            keep=task.keep,
            query_block=query_block,
            report=report,
            query_ids=task.query_ids,
            show_progress=show_progress,
        )
        with atomic_file(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for record in records(task, blocks):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with atomic_file(report_path) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return report
