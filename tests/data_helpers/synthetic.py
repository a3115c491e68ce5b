"""Deterministic synthetic records and a tiny in-process HF fast tokenizer for data tests."""

from __future__ import annotations

import re

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from jaxembed.data.records import Passage, TrainingRecord

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
_WORDS = [f"w{i}" for i in range(300)]
_FIXED = ["Instruct", "Query", ":", "find", "documents", "answer", "the", "question", "é", "ü"]


def tiny_tokenizer(extra_texts: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """WordLevel over a fixed vocabulary (+ words of `extra_texts`), BOS/EOS around each text.

    The vocabulary is built from sorted words, so every process builds the same ids.
    """
    words = set(_WORDS) | set(_FIXED)
    for text in extra_texts:
        words |= set(re.findall(r"\w+|[^\w\s]+", text))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(words - set(SPECIALS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]",
        special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )


def _text(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS, size=int(rng.integers(low, high))))


def make_records(
    n: int,
    *,
    name: str = "synth",
    seed: int = 0,
    negatives: tuple[int, int] = (0, 5),
    instruction: str = "find the documents",
    query_words: tuple[int, int] = (2, 12),
    passage_words: tuple[int, int] = (3, 40),
) -> list[TrainingRecord]:
    """`n` records; negatives per record uniform in [negatives[0], negatives[1])."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        positives = (Passage(f"{name}-p{i}", _text(rng, *passage_words)),)
        k = int(rng.integers(*negatives)) if negatives[1] > negatives[0] else negatives[0]
        negs = tuple(Passage(f"{name}-n{i}-{j}", _text(rng, *passage_words)) for j in range(k))
        out.append(
            TrainingRecord(f"q{i} " + _text(rng, *query_words), positives, negs, instruction, name)
        )
    return out
