"""Public dataset shapes to training records: classification tables, STS/paraphrase pairs,
bitext pairs (`jaxembed data convert`).

llama-embed-nemotron's fine-tuning mix trains these as retrieval: a classification text's
positive is its label's name and its negatives are other label names of the task; an STS
sentence's positive is its paired sentence (negatives mined later from the dataset's own
sentences with `jaxembed mine`, or filled at random); a bitext source's positive is its
translation. Labels and sentences are bare text, so equal texts share a document id and the
loss masks them as false negatives (two records of one label in a batch).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxembed.data.errors import ErrorPolicy
from jaxembed.data.formats import json_lines
from jaxembed.errors import UserInputError

_NEGATIVE_TAG = 0xC1A55


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line of the input (the header of a CSV/TSV is line 1)
    fields: dict[str, Any]


def read_rows(path: str | Path) -> Iterator[Row]:
    """Rows of a JSONL, CSV or TSV table (by extension), with their line numbers."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    if path.suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            for row in reader:
                yield Row(reader.line_num, row)
        return
    for line, _, obj in json_lines(path, ErrorPolicy("raise", None)):
        yield Row(line, obj)


def field(row: Row, name: str, path: str | Path) -> Any:
    value = row.fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserInputError(f"{path}:{row.line}: missing or empty field {name!r}")
    return value


def _text(row: Row, name: str, path: str | Path) -> str:
    value = field(row, name, path)
    if not isinstance(value, str):
        raise UserInputError(f"{path}:{row.line}: field {name!r} is not text: {value!r}")
    return value


def _record(query: str, positive: str, negatives: Sequence[str], instruction: str) -> dict:
    record: dict[str, Any] = {"query": query, "positives": [positive]}
    if negatives:
        record["negatives"] = list(negatives)
    if instruction:
        record["instruction"] = instruction
    return record


def classification_records(
    path: str | Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    label_names: Sequence[str] = (),
    num_negatives: int = 4,
    instruction: str = "",
    seed: int = 0,
) -> Iterator[dict]:
    """One record a row: the text, its label's name as the positive, `num_negatives` other
    label names (drawn per row from (seed, line): the same every run) as negatives.

    Integer labels (HF datasets' ClassLabel) are names by index in `label_names`; with text
    labels the task's labels are those the table uses.
    """
    rows = list(read_rows(path))
    if not rows:
        raise UserInputError(f"{path}: no rows")
    labelled = [(row, _label(row, label_field, label_names, path)) for row in rows]
    labels = list(label_names) or sorted({label for _, label in labelled})
    if len(labels) < 2:
        raise UserInputError(f"{path}: one label only ({labels[0]!r}); a task needs two or more")
    if num_negatives > len(labels) - 1:
        raise UserInputError(
            f"--num-negatives {num_negatives}: the task has only {len(labels) - 1} other labels"
        )
    for row, label in labelled:
        others = [x for x in labels if x != label]
        rng = np.random.default_rng([seed, _NEGATIVE_TAG, row.line])
        picked = sorted(rng.choice(len(others), size=num_negatives, replace=False))
        text = _text(row, text_field, path)
        yield _record(text, label, [others[i] for i in picked], instruction)


def _label(row: Row, name: str, names: Sequence[str], path: str | Path) -> str:
    value = field(row, name, path)
    where = f"{path}:{row.line}: label {value!r}"
    if isinstance(value, str) and (not names or value in names):
        return value
    # An index: a JSON number, or a CSV cell's digits, into --label-names.
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise UserInputError(f"{where} is " + ("not in --label-names" if names else "not a name"))
    if not names:
        raise UserInputError(f"{where} is a number: give --label-names to name it")
    index = int(str(value).strip())
    if index >= len(names):
        raise UserInputError(f"{where} is outside --label-names (0..{len(names) - 1})")
    return names[index]


def pair_records(
    path: str | Path,
    *,
    first_field: str,
    second_field: str,
    score_field: str = "",
    min_score: float = 0.0,
    both_directions: bool = False,
    instruction: str = "",
) -> Iterator[dict]:
    """STS / paraphrase / bitext pairs: the first text's positive is the second. With a
    `score_field`, only pairs scoring at least `min_score` are kept (STS-B: 4 of 5 is a
    paraphrase); `both_directions` adds the second → first record too (symmetric tasks)."""
    for row in read_rows(path):
        first, second = _text(row, first_field, path), _text(row, second_field, path)
        if score_field:
            value = field(row, score_field, path)
            try:
                score = float(value)
            except (TypeError, ValueError):
                raise UserInputError(
                    f"{path}:{row.line}: score {value!r} in {score_field!r} is not a number"
                ) from None
            if score < min_score:
                continue
        yield _record(first, second, (), instruction)
        if both_directions:
            yield _record(second, first, (), instruction)
