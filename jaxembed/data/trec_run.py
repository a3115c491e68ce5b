"""TREC run files: `query_id Q0 doc_id rank score run_name`, one retrieved document a line.

What `jaxembed eval` writes and what evaluation and reranking read back. Reading validates
every line and names the file and line of the first bad one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from jaxembed.data.errors import DataFormatError
from jaxembed.errors import UserInputError
from jaxembed.io_utils import atomic_file
from jaxembed.metrics import Run, ranked


def write_trec_run(path: str | Path, run: Run, name: str = "jaxembed") -> None:
    """Write atomically, each query's documents best first (trec_eval's tie order)."""
    if any(c.isspace() for c in name):
        raise UserInputError(f"run name {name!r} must not contain whitespace")
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for qid, scores in run.items():
            for rank, doc in enumerate(ranked(scores), start=1):
                f.write(f"{qid} Q0 {doc} {rank} {scores[doc]!r} {name}\n")


def read_trec_run(path: str | Path) -> dict[str, dict[str, float]]:
    """{query_id: {doc_id: score}}; ranks in the file are ignored, as trec_eval does."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                _add_line(run, line, path, lineno)
        except UnicodeDecodeError as e:
            raise UserInputError(f"{path}: invalid UTF-8 ({e.reason})") from e
    if not run:
        raise UserInputError(f"{path}: the run is empty")
    return run


def _add_line(run: dict[str, dict[str, float]], line: str, path: Path, lineno: int) -> None:
    if not line.strip():
        return
    cols = line.split()
    if len(cols) != 6:
        raise DataFormatError(
            path, lineno, f"want 6 columns (qid Q0 docid rank score name), got {len(cols)}"
        )
    qid, _, doc, _, score_text, _ = cols
    try:
        score = float(score_text)
    except ValueError:
        raise DataFormatError(path, lineno, f"score {score_text!r} is not a number") from None
    if not math.isfinite(score):
        raise DataFormatError(path, lineno, f"score {score_text!r} is not finite")
    docs = run.setdefault(qid, {})
    if doc in docs:
        raise DataFormatError(path, lineno, f"document {doc!r} listed twice for query {qid!r}")
    docs[doc] = score


def check_run_ids(
    run: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    query_ids: Mapping[str, object] | set[str] | None = None,
    doc_ids: Mapping[str, object] | set[str] | None = None,
) -> None:
    """Every query and document of a run must exist in the dataset it is used with."""
    for qid, docs in run.items():
        if query_ids is not None and qid not in query_ids:
            raise UserInputError(f"{path}: unknown query id {qid!r}")
        if doc_ids is not None:
            unknown = next((d for d in docs if d not in doc_ids), None)
            if unknown is not None:
                raise UserInputError(f"{path}: query {qid!r} names unknown document {unknown!r}")
