"""What a synth run asks the LLM, and how an answer becomes a training record.

Three strategies (the recipes behind llama-embed-nemotron's synthetic half):

- `seed_corpus` (Qwen3 / Gemini-embedding style): a query for a sampled document; the
  document is the positive (hard negatives come afterwards from `jaxembed mine`).
- `from_scratch` (E5-mistral style): step 1 brainstorms retrieval tasks, step 2 writes a
  (query, positive, hard negative) for a task with sampled attributes.
- `classification`: step 1 lists classification tasks, step 2 writes a text with its
  label and misleading labels; the task is the instruction, the correct label the positive,
  the misleading ones the negatives.

Every item's id, prompt values and endpoint come from `random.Random(f"{seed}:{item id}")`,
so the same seed asks for the same items whatever ran before (the answers may differ).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from jaxembed.data.records import Passage
from jaxembed.synth.answers import BadAnswer, text_field, text_list

QUERY_TYPES = ("question", "keyword query", "claim to verify", "short request")
QUERY_LENGTHS = (
    "short (under 6 words)",
    "of medium length (6 to 12 words)",
    "long (12 to 25 words)",
)
DIFFICULTIES = (
    "easy (it may share words with the document)",
    "hard (paraphrased, few shared words)",
)
CLARITY = ("clear", "somewhat ambiguous", "clear but informal")
PASSAGE_WORDS = (50, 100, 200)
TEXT_WORDS = (20, 50, 100)


@dataclass(frozen=True)
class Item:
    id: str
    step: str  # the template it is asked with
    values: dict[str, Any]  # the template's placeholder values
    context: dict[str, Any] = field(default_factory=dict)  # what the record needs besides


def item_rng(seed: int, item_id: str) -> random.Random:
    return random.Random(f"{seed}:{item_id}")


def digest(values: list[str]) -> str:
    """A short fingerprint of a list of strings, for a run's key."""
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


class Strategy(Protocol):
    name: str
    task_step: str | None  # step 1's template (None: no step 1)
    item_step: str
    placeholders: dict[str, frozenset[str]]  # per template

    def task_requests(self, count: int, seed: int) -> list[Item]: ...

    def items(self, tasks: list[str], count: int, seed: int) -> list[Item]: ...

    def record(self, item: Item, answer: dict[str, Any]) -> dict[str, Any]: ...

    def settings(self) -> dict[str, Any]:
        """What decides the items and records besides the seed: a resumed run must match."""
        ...


MAX_LABEL_WORDS = 8
TASK_KEYS = ("task", "description", "text", "name", "title", "type", "category")


def parse_tasks(answer: dict[str, Any]) -> list[str]:
    """Step 1's tasks: strings, or objects whose task, description, text or name is one
    (the shape models often give a list of tasks, asked for strings or not)."""
    tasks = answer.get("tasks")
    if isinstance(tasks, list):
        answer = {"tasks": [_task_text(t) for t in tasks]}
    return text_list(answer, "tasks")


def _task_text(task: Any) -> Any:
    """A task object's text; its "labels" list, if any, appended (small models answer
    `{"type": "SentimentAnalysis", "labels": [...]}` for "Classify ... : a, b or c")."""
    if not isinstance(task, dict):
        return task
    text = next((task[k] for k in TASK_KEYS if isinstance(task.get(k), str)), None)
    labels = task.get("labels")
    if text is None or not isinstance(labels, list):
        return text
    labels = [x for x in labels if isinstance(x, str) and x.strip()]
    # CamelCase names read as words: "SentimentAnalysis" -> "Sentiment Analysis".
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text.strip())
    return f"{text}: {', '.join(labels)}" if labels else text


class _TwoStep:
    """Step 1 asks `tasks_per_request` tasks a request; step 2 spreads `count` items over
    the tasks in turn, each with the attributes `item_values` samples."""

    task_step: str
    item_step: str
    tasks_per_request: int

    def task_requests(self, count: int, seed: int) -> list[Item]:
        step, per_request = self.task_step, self.tasks_per_request
        return [
            Item(f"{step}#{i}", step, {"count": per_request})
            for i in range(-(-count // per_request))
        ]

    def items(self, tasks: list[str], count: int, seed: int) -> list[Item]:
        items = []
        for k in range(count):
            task_index = k % len(tasks)
            item_id = f"task{task_index}#{k // len(tasks)}"
            task = tasks[task_index]
            values = {"task": task, **self.item_values(item_rng(seed, item_id))}
            items.append(Item(item_id, self.item_step, values, {"task": task}))
        return items

    def item_values(self, rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {"tasks_per_request": self.tasks_per_request}


class SeedCorpus:
    name = "seed_corpus"
    task_step = None
    item_step = "seed_corpus"
    placeholders = {"seed_corpus": frozenset({"document", "query_type", "length", "difficulty"})}

    def __init__(
        self,
        corpus: dict[str, Passage],
        instruction: str = "",
        queries_per_doc: int = 1,
        max_document_words: int = 400,
    ):
        self.corpus = corpus
        self.instruction = instruction
        self.queries_per_doc = queries_per_doc
        self.max_document_words = max_document_words

    def task_requests(self, count: int, seed: int) -> list[Item]:
        return []

    def settings(self) -> dict[str, Any]:
        return {
            "corpus": digest(sorted(self.corpus)),  # the ids decide which documents are drawn
            "instruction": self.instruction,
            "queries_per_doc": self.queries_per_doc,
            "max_document_words": self.max_document_words,
        }

    def items(self, tasks: list[str], count: int, seed: int) -> list[Item]:
        ids = sorted(self.corpus)
        random.Random(seed).shuffle(ids)  # a prefix per count: a larger count extends a run
        docs = ids[: -(-count // self.queries_per_doc)]
        items = []
        for doc_id in docs:
            doc = self.corpus[doc_id]
            text = f"{doc.title}\n{doc.text}".strip() if doc.title else doc.text
            # Long documents cost prompt tokens and a small model's attention alike.
            text = " ".join(text.split(" ")[: self.max_document_words])
            for k in range(self.queries_per_doc):
                item_id = f"doc:{doc_id}#{k}"
                rng = item_rng(seed, item_id)
                values = {
                    "document": text,
                    "query_type": rng.choice(QUERY_TYPES),
                    "length": rng.choice(QUERY_LENGTHS),
                    "difficulty": rng.choice(DIFFICULTIES),
                }
                items.append(Item(item_id, self.item_step, values, {"doc_id": doc_id}))
        return items[:count]

    def record(self, item: Item, answer: dict[str, Any]) -> dict[str, Any]:
        doc = self.corpus[item.context["doc_id"]]
        out = {
            "query": text_field(answer, "query"),
            "positives": [{"id": doc.id, "title": doc.title, "text": doc.text}],
            "negatives": [],
        }
        if self.instruction:
            out["instruction"] = self.instruction
        return out


class FromScratch(_TwoStep):
    name = "from_scratch"
    task_step = "from_scratch_tasks"
    item_step = "from_scratch"
    placeholders = {
        "from_scratch_tasks": frozenset({"count"}),
        "from_scratch": frozenset(
            {"task", "query_type", "query_length", "clarity", "difficulty", "language",
             "passage_words"}
        ),
    }  # fmt: skip

    def __init__(self, tasks_per_request: int = 10, language: str = "English"):
        self.tasks_per_request = tasks_per_request
        self.language = language

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "language": self.language}

    def item_values(self, rng: random.Random) -> dict[str, Any]:
        return {
            "query_type": rng.choice(QUERY_TYPES),
            "query_length": rng.choice(QUERY_LENGTHS),
            "clarity": rng.choice(CLARITY),
            "difficulty": rng.choice(DIFFICULTIES).split(" (")[0],
            "language": self.language,
            "passage_words": rng.choice(PASSAGE_WORDS),
        }

    def record(self, item: Item, answer: dict[str, Any]) -> dict[str, Any]:
        query, positive = text_field(answer, "query"), text_field(answer, "positive")
        negative = text_field(answer, "hard_negative")
        if negative == positive:
            raise BadAnswer("hard_negative equals positive")
        return {
            "query": query,
            "positives": [positive],
            "negatives": [negative],
            "instruction": item.context["task"],
        }


class Classification(_TwoStep):
    name = "classification"
    task_step = "classification_tasks"
    item_step = "classification"
    placeholders = {
        "classification_tasks": frozenset({"count"}),
        "classification": frozenset({"task", "text_words", "clarity", "num_misleading"}),
    }

    def __init__(self, tasks_per_request: int = 10, num_misleading: int = 2):
        self.tasks_per_request = tasks_per_request
        self.num_misleading = num_misleading

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "num_misleading": self.num_misleading}

    def item_values(self, rng: random.Random) -> dict[str, Any]:
        return {
            "text_words": rng.choice(TEXT_WORDS),
            "clarity": rng.choice(CLARITY),
            "num_misleading": self.num_misleading,
        }

    def record(self, item: Item, answer: dict[str, Any]) -> dict[str, Any]:
        text, label = text_field(answer, "text"), text_field(answer, "label")
        # A label names a class: a sentence there (small models echo the text) is no label.
        for name in (label, *text_list(answer, "misleading_labels")):
            if len(name.split()) > MAX_LABEL_WORDS:
                raise BadAnswer(f"a label of {len(name.split())} words (a label is a name)")
        wrong, seen = [], {label.strip().lower()}
        for name in text_list(answer, "misleading_labels"):
            if name.strip().lower() not in seen:  # each wrong label once, never the right one
                seen.add(name.strip().lower())
                wrong.append(name)
        if not wrong:
            raise BadAnswer("no misleading label differs from the label")
        wrong = wrong[: self.num_misleading]
        return {
            "query": text,
            "positives": [label],
            "negatives": wrong,
            "instruction": item.context["task"],
        }
