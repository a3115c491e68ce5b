"""Validated readers: training JSONL (three column conventions) and the BEIR layout.

Every bad record becomes a `DataFormatError` naming file, line and reason; the `on_error`
policy decides whether it stops the read or goes to the rejects file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from jaxembed.data.errors import DataFormatError, ErrorPolicy, OnError, Rejects
from jaxembed.data.records import Passage, TrainingRecord, text_id
from jaxembed.errors import UserInputError

TrainingFormat = Literal["jsonl", "nemo", "sentence_transformers"]


@dataclasses.dataclass(frozen=True)
class _Columns:
    query: str
    positives: str
    negatives: str


_COLUMNS: dict[str, _Columns] = {
    "jsonl": _Columns("query", "positives", "negatives"),
    "nemo": _Columns("question", "pos_doc", "neg_doc"),
    "sentence_transformers": _Columns("anchor", "positive", "negative"),
}


class _BadRecord(Exception):
    """Internal: a reason, turned into a located DataFormatError by the line loop."""


def _lines(
    path: Path, policy: ErrorPolicy, skip_blank: bool = True
) -> Iterator[tuple[int, bytes, str]]:
    """(line number, raw bytes, decoded text) of each line; CRLF tolerated. Blank lines are
    skipped, or errors where rows must stay aligned with lines (`skip_blank=False`)."""
    if Path(path).is_dir():
        raise UserInputError(f"{path}: is a directory, not a file")
    if not Path(path).is_file():
        raise UserInputError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                policy.handle(DataFormatError(path, lineno, f"invalid UTF-8: {e.reason}"), raw)
                continue
            if text.strip():
                yield lineno, raw, text
            elif not skip_blank:
                policy.handle(DataFormatError(path, lineno, "empty line"), raw)


def json_lines(
    path: Path, policy: ErrorPolicy, skip_blank: bool = True
) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    for lineno, raw, text in _lines(path, policy, skip_blank):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            policy.handle(DataFormatError(path, lineno, f"invalid JSON: {e.msg}"), raw)
            continue
        if not isinstance(obj, dict):
            reason = f"invalid record: expected a JSON object, got {type(obj).__name__}"
            policy.handle(DataFormatError(path, lineno, reason), raw)
            continue
        yield lineno, raw, obj


def _string(value: Any, where: str, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise _BadRecord(f"non-string text: {where} is {type(value).__name__}")
    if required and not value.strip():
        raise _BadRecord(f"empty text: {where}")
    return value


def _passage(value: Any, where: str) -> Passage:
    if isinstance(value, dict):
        if "text" not in value:
            raise _BadRecord(f"missing text: {where} has no 'text' field")
        text = _string(value["text"], f"{where}.text")
        title = _string(value.get("title", ""), f"{where}.title", required=False)
        pid = value.get("id", value.get("_id"))
        if pid is None:
            return Passage(text_id(text), text, title)
        if not isinstance(pid, str | int) or isinstance(pid, bool):
            raise _BadRecord(f"non-string id: {where}.id is {type(pid).__name__}")
        return Passage(str(pid), text, title)
    text = _string(value, where)
    return Passage(text_id(text), text)


def _passages(value: Any, name: str) -> tuple[Passage, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(_passage(v, f"{name}[{i}]") for i, v in enumerate(items))


def _st_negatives(obj: dict[str, Any], column: str) -> list[Any]:
    """sentence-transformers hard-negative sets spread negatives over negative_1..negative_n."""
    found = [] if obj.get(column) is None else [obj[column]]
    numbered = sorted(
        (int(k.rsplit("_", 1)[1]), k)
        for k in obj
        if k.startswith(column + "_") and k.rsplit("_", 1)[1].isdigit()
    )
    return found + [obj[k] for _, k in numbered]


def parse_training_record(
    obj: dict[str, Any], format: TrainingFormat, *, instruction: str = "", dataset: str = ""
) -> TrainingRecord:
    """Validate one decoded record; raises `_BadRecord` with the reason."""
    cols = _COLUMNS[format]
    if cols.query not in obj:
        raise _BadRecord(f"missing query: no '{cols.query}' field")
    query = obj[cols.query]
    if not isinstance(query, str):
        raise _BadRecord(f"non-string text: '{cols.query}' is {type(query).__name__}")
    if not query.strip():
        raise _BadRecord("empty query")
    positives = _passages(obj.get(cols.positives), cols.positives)
    if not positives:
        raise _BadRecord(f"no positive: '{cols.positives}' is missing or empty")
    if format == "sentence_transformers":
        raw_negatives: Any = _st_negatives(obj, cols.negatives)
        if len(raw_negatives) == 1 and isinstance(raw_negatives[0], list):
            raw_negatives = raw_negatives[0]
    else:
        raw_negatives = obj.get(cols.negatives)
    negatives = _passages(raw_negatives, cols.negatives)
    instr = _string(obj.get("instruction", instruction), "instruction", required=False)
    name = _string(obj.get("dataset", dataset), "dataset", required=False)
    return TrainingRecord(query, positives, negatives, instr, name)


def read_text_column(path: str | Path, key: str = "text") -> list[str]:
    """The `key` string of every line of a JSONL file; row i is line i + 1, so a blank line
    is an error rather than skipped."""
    path = Path(path)
    texts = []
    for lineno, _, obj in json_lines(path, ErrorPolicy("raise", None), skip_blank=False):
        value = obj.get(key)
        if not isinstance(value, str):
            problem = "missing" if value is None else f"not a string ({type(value).__name__})"
            raise DataFormatError(path, lineno, f"{key!r} is {problem}")
        texts.append(value)
    if not texts:
        raise UserInputError(f"{path}: no input lines")
    return texts


def read_training_jsonl(
    path: str | Path,
    *,
    format: TrainingFormat = "jsonl",
    instruction: str = "",
    dataset: str | None = None,
    on_error: OnError = "raise",
    rejects: Rejects | None = None,
) -> Iterator[TrainingRecord]:
    """Yield validated records from a training JSONL file.

    `format` picks the column convention: "jsonl" (query/positives/negatives),
    "nemo" (question/pos_doc/neg_doc) or "sentence_transformers" (anchor/positive/negative
    and negative_1..n). `instruction` and `dataset` are per-file defaults a record may
    override; `dataset` defaults to the file stem.
    """
    if format not in _COLUMNS:
        raise ValueError(f"format must be one of {sorted(_COLUMNS)}, got {format!r}")
    path = Path(path)
    policy = ErrorPolicy(on_error, rejects)
    name = path.stem if dataset is None else dataset
    for lineno, raw, obj in json_lines(path, policy):
        try:
            yield parse_training_record(obj, format, instruction=instruction, dataset=name)
        except _BadRecord as e:
            policy.handle(DataFormatError(path, lineno, str(e)), raw)


@dataclasses.dataclass
class BeirData:
    """A BEIR split: corpus by id, query text by id, qrels[query_id][doc_id] = relevance."""

    corpus: dict[str, Passage]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _beir_id(obj: dict[str, Any]) -> str:
    if "_id" not in obj:
        raise _BadRecord("missing id: no '_id' field")
    value = obj["_id"]
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise _BadRecord(f"non-string id: '_id' is {type(value).__name__}")
    return str(value)


def read_beir_corpus(
    path: str | Path, *, on_error: OnError = "raise", rejects: Rejects | None = None
) -> dict[str, Passage]:
    """corpus.jsonl: {"_id", "title", "text"}; a document needs a non-empty title or text."""
    path = Path(path)
    policy = ErrorPolicy(on_error, rejects)
    corpus: dict[str, Passage] = {}
    for lineno, raw, obj in json_lines(path, policy):
        try:
            doc_id = _beir_id(obj)
            text = _string(obj.get("text", ""), "'text'", required=False)
            title = _string(obj.get("title", ""), "'title'", required=False)
            if not (text.strip() or title.strip()):
                raise _BadRecord("empty text: document has neither title nor text")
            if doc_id in corpus:
                raise _BadRecord(f"duplicate id: {doc_id!r}")
            corpus[doc_id] = Passage(doc_id, text, title)
        except _BadRecord as e:
            policy.handle(DataFormatError(path, lineno, str(e)), raw)
    return corpus


def read_beir_queries(
    path: str | Path, *, on_error: OnError = "raise", rejects: Rejects | None = None
) -> dict[str, str]:
    """queries.jsonl: {"_id", "text"}."""
    path = Path(path)
    policy = ErrorPolicy(on_error, rejects)
    queries: dict[str, str] = {}
    for lineno, raw, obj in json_lines(path, policy):
        try:
            query_id = _beir_id(obj)
            if "text" not in obj:
                raise _BadRecord("missing query: no 'text' field")
            text = obj["text"]
            if not isinstance(text, str):
                raise _BadRecord(f"non-string text: 'text' is {type(text).__name__}")
            if not text.strip():
                raise _BadRecord("empty query")
            if query_id in queries:
                raise _BadRecord(f"duplicate id: {query_id!r}")
            queries[query_id] = text
        except _BadRecord as e:
            policy.handle(DataFormatError(path, lineno, str(e)), raw)
    return queries


def read_beir_qrels(
    path: str | Path,
    *,
    query_ids: set[str] | dict[str, Any] | None = None,
    corpus_ids: set[str] | dict[str, Any] | None = None,
    on_error: OnError = "raise",
    rejects: Rejects | None = None,
) -> dict[str, dict[str, int]]:
    """qrels/{split}.tsv: query-id, corpus-id, score; an optional header row is skipped.

    Ids are checked against `query_ids` / `corpus_ids` when given.
    """
    path = Path(path)
    policy = ErrorPolicy(on_error, rejects)
    qrels: dict[str, dict[str, int]] = {}
    for lineno, raw, text in _lines(path, policy):
        try:
            cols = text.split("\t")
            if len(cols) != 3:
                raise _BadRecord(f"bad qrels row: want 3 tab-separated columns, got {len(cols)}")
            query_id, doc_id, score_text = (c.strip() for c in cols)
            try:
                score = int(score_text)
            except ValueError:
                if lineno == 1:  # the header row ("query-id corpus-id score")
                    continue
                raise _BadRecord(f"bad qrels score: {score_text!r} is not an integer") from None
            if query_ids is not None and query_id not in query_ids:
                raise _BadRecord(f"unknown query id: {query_id!r}")
            if corpus_ids is not None and doc_id not in corpus_ids:
                raise _BadRecord(f"unknown corpus id: {doc_id!r}")
            qrels.setdefault(query_id, {})[doc_id] = score
        except _BadRecord as e:
            policy.handle(DataFormatError(path, lineno, str(e)), raw)
    return qrels


def load_beir(
    root: str | Path,
    split: str = "test",
    *,
    on_error: OnError = "raise",
    rejects: Rejects | None = None,
) -> BeirData:
    """Read a BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/{split}.tsv)."""
    root = Path(root)
    corpus = read_beir_corpus(root / "corpus.jsonl", on_error=on_error, rejects=rejects)
    queries = read_beir_queries(root / "queries.jsonl", on_error=on_error, rejects=rejects)
    qrels = read_beir_qrels(
        root / "qrels" / f"{split}.tsv",
        query_ids=queries,
        corpus_ids=corpus,
        on_error=on_error,
        rejects=rejects,
    )
    return BeirData(corpus, queries, qrels)


def beir_training_records(
    beir: BeirData, *, instruction: str = "", dataset: str = ""
) -> list[TrainingRecord]:
    """One record per judged query with its relevant (score > 0) documents as positives.

    BEIR has no negatives; the pipeline fills them from the corpus, or mining adds them.
    """
    records = []
    for query_id, judged in beir.qrels.items():
        positives = tuple(beir.corpus[d] for d, score in judged.items() if score > 0)
        if positives:
            records.append(
                TrainingRecord(beir.queries[query_id], positives, (), instruction, dataset)
            )
    return records
