"""The in-memory training record every reader produces and the pipeline consumes."""

from __future__ import annotations

import dataclasses
import hashlib


@dataclasses.dataclass(frozen=True)
class Passage:
    """A document. `id` is the corpus id, or a hash of the text when the source gave none."""

    id: str
    text: str
    title: str = ""

    def full_text(self) -> str:
        # MTEB's convention: title, a space, the body, stripped (just the body without a title).
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclasses.dataclass(frozen=True)
class TrainingRecord:
    """One query with its positives and (possibly mined) hard negatives."""

    query: str
    positives: tuple[Passage, ...]
    negatives: tuple[Passage, ...] = ()
    instruction: str = ""
    dataset: str = ""


def text_id(text: str) -> str:
    """Id for a passage given as bare text: equal texts share it, so duplicates can be masked."""
    return "text:" + hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def doc_hash(passage_id: str, dataset: str = "") -> int:
    """Stable non-negative int32 for a passage id, for masking duplicate false negatives.

    Explicit ids are only unique within their dataset ("123" in two BEIR sets are different
    documents), so they are namespaced by it; text-derived ids are global by construction.
    """
    key = passage_id if passage_id.startswith("text:") else f"{dataset}\x1f{passage_id}"
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF
