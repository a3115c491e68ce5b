"""The training mix as a file: per dataset its records, task type, instructions and weight.

`data.manifest` names a JSON or YAML file holding a list of datasets (or a mapping with a
`datasets` list):

    datasets:
      - {name: scifact, path: scifact.jsonl, task: retrieval, weight: 2,
         query_instruction: "Given a scientific claim, retrieve documents that support it"}
      - {path: stsb.jsonl, task: sts, query_instruction: "Retrieve semantically similar text"}
      - {path: emotion.jsonl, task: classification,
         query_instruction: "Classify the emotion expressed in the given Twitter message"}

Retrieval and pairs are asymmetric (the bi-encoder of llama-embed-nemotron and NV-Retriever:
the instruction on the query only); STS, classification and bitext are symmetric (its
"uni-encoder": documents carry the instruction too, so a label name or a paired sentence is
encoded the way the text it is compared with is). A record's own `instruction` (what
`jaxembed synth` writes) wins over the dataset's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from jaxembed.data.formats import TrainingFormat
from jaxembed.errors import UserInputError

TASKS = ("retrieval", "pairs", "sts", "classification", "bitext")
SYMMETRIC_TASKS = ("sts", "classification", "bitext")
_KEYS = ("name", "path", "format", "task", "weight", "query_instruction", "document_instruction")


@dataclass(frozen=True)
class ManifestEntry:
    """One dataset of the mix. `document_instruction` None: the record's query instruction
    (symmetric tasks' default); "" : none (asymmetric tasks' default)."""

    name: str
    path: str
    format: TrainingFormat = "jsonl"
    task: str = "retrieval"
    weight: float = 1.0
    query_instruction: str = ""
    document_instruction: str | None = ""

    @property
    def symmetric(self) -> bool:
        return self.task in SYMMETRIC_TASKS


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """The manifest's datasets, each checked (an error names the file, the entry, the key);
    relative paths are taken from the manifest's directory."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"data.manifest {path}: file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserInputError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if isinstance(loaded, dict):
        unknown = sorted(set(loaded) - {"datasets"})
        if unknown:
            raise UserInputError(f"{path}: unknown top-level key {unknown[0]!r} (only 'datasets')")
        loaded = loaded.get("datasets")
    if not isinstance(loaded, list) or not loaded:
        raise UserInputError(f"{path}: expected a non-empty list of datasets")
    entries = [_entry(item, f"{path}: datasets[{i}]", path.parent) for i, item in enumerate(loaded)]
    names = [e.name for e in entries]
    for name in names:
        if names.count(name) > 1:
            raise UserInputError(f"{path}: two datasets are named {name!r} (give each a name)")
    if not any(e.weight > 0 for e in entries):
        raise UserInputError(f"{path}: every weight is 0")
    return entries


def _entry(item: Any, where: str, base: Path) -> ManifestEntry:
    if not isinstance(item, dict):
        raise UserInputError(f"{where}: expected a mapping, got {type(item).__name__}")
    unknown = sorted(set(item) - set(_KEYS))
    if unknown:
        raise UserInputError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    for key in ("path", "name", "format", "task", "query_instruction", "document_instruction"):
        if key in item and not isinstance(item[key], str):
            raise UserInputError(f"{where}.{key}: expected a string, got {item[key]!r}")
    if not item.get("path"):
        raise UserInputError(f"{where}: missing 'path'")
    data_path = Path(item["path"]).expanduser()
    data_path = data_path if data_path.is_absolute() else base / data_path
    if not data_path.is_file():
        raise UserInputError(f"{where}.path: {data_path}: file not found")
    task = item.get("task", "retrieval")
    if task not in TASKS:
        raise UserInputError(f"{where}.task: {task!r} is not one of {', '.join(TASKS)}")
    fmt = item.get("format", "jsonl")
    if fmt not in get_args(TrainingFormat):
        formats = ", ".join(get_args(TrainingFormat))
        raise UserInputError(f"{where}.format: {fmt!r} is not one of {formats}")
    weight = item.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise UserInputError(f"{where}.weight: {weight!r} must be a number >= 0")
    default_document = None if task in SYMMETRIC_TASKS else ""
    return ManifestEntry(
        name=item.get("name") or data_path.stem,
        path=str(data_path),
        format=fmt,
        task=task,
        weight=float(weight),
        query_instruction=item.get("query_instruction", ""),
        document_instruction=item.get("document_instruction", default_document),
    )
