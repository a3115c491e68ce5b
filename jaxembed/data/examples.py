"""One training record to one fixed-shape example: query text and exactly 1 + N passages."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from jaxembed.data.records import Passage, TrainingRecord, doc_hash
from jaxembed.prompts import format_query

MoreRule = Literal["first", "sample"]
FewerRule = Literal["fill", "drop"]

_SAMPLE_TAG = 0x5A3
_FILL_TAG = 0xF111
# Random fill avoids the record's own positives; after this many clashing draws per slot the
# corpus is too small to avoid them, and the loss's duplicate mask (doc_ids) takes over.
_FILL_TRIES = 16


@dataclasses.dataclass(frozen=True)
class Example:
    query: str
    # Characters of `query` that are instruction prefix, excluded from pooling.
    prefix_chars: int
    passages: tuple[Passage, ...]
    doc_ids: tuple[int, ...]
    # The passages as the bi-encoder reads them (with a document instruction, if any), and
    # how many characters of each are that instruction.
    passage_texts: tuple[str, ...] = ()
    passage_prefix_chars: tuple[int, ...] = ()


def _pick(items: Sequence[Passage], k: int, rule: MoreRule, rng: np.random.Generator):
    if len(items) <= k or rule == "first":
        return list(items[:k])
    # Sorted, so sampled negatives keep their mining rank order.
    return [items[i] for i in sorted(rng.choice(len(items), size=k, replace=False))]


def make_example(
    record: TrainingRecord,
    *,
    num_negatives: int,
    template: str,
    more_rule: MoreRule,
    positive_rule: MoreRule,
    random_passage: Callable[[np.random.Generator], Passage],
    rng_key: Sequence[int],
    dataset: str,
    document_instruction: str | None = "",
) -> Example:
    """Select 1 positive + `num_negatives` negatives; randomness is keyed by `rng_key` only,
    so every process (and every replay) builds the same example for the same record.

    Short records are filled with `random_passage` draws (records are dropped before this
    point under the "drop" rule). Passages are formatted with `document_instruction` by the
    query template; None means the record's own instruction (a symmetric task).
    """
    rng = np.random.default_rng([*rng_key, _SAMPLE_TAG])
    positive = _pick(record.positives, 1, positive_rule, rng)
    negatives = _pick(record.negatives, num_negatives, more_rule, rng)
    if len(negatives) < num_negatives:
        fill_rng = np.random.default_rng([*rng_key, _FILL_TAG])
        taken = {p.id for p in record.positives} | {p.id for p in negatives}
        while len(negatives) < num_negatives:
            for _ in range(_FILL_TRIES):
                candidate = random_passage(fill_rng)
                if candidate.id not in taken:
                    break
            negatives.append(candidate)
            taken.add(candidate.id)
    passages = tuple(positive + negatives)
    query, prefix_chars = format_query(record.query, record.instruction, template)
    doc_ids = tuple(doc_hash(p.id, dataset) for p in passages)
    instruction = record.instruction if document_instruction is None else document_instruction
    formatted = [format_query(p.full_text(), instruction, template) for p in passages]
    return Example(
        query,
        prefix_chars,
        passages,
        doc_ids,
        tuple(text for text, _ in formatted),
        tuple(chars for _, chars in formatted),
    )
