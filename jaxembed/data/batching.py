"""Tokenization and bucketed padding: texts to int32 id/mask arrays of a few fixed lengths."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerFast


def default_buckets(max_length: int) -> tuple[int, ...]:
    """A quarter, a half and the full max length, rounded up to multiples of 8."""
    rounded = {8 * math.ceil(max_length * f / 8) for f in (0.25, 0.5)}
    return tuple(sorted({min(b, max_length) for b in rounded} | {max_length}))


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def check_buckets(buckets: Sequence[int], max_length: int, name: str) -> tuple[int, ...]:
    out = tuple(sorted(set(int(b) for b in buckets))) or default_buckets(max_length)
    if out[0] <= 0 or out[-1] < max_length:
        raise ValueError(f"{name} buckets {out} must be positive and reach max_length {max_length}")
    return out


def tokenize(
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    max_length: int,
    prefix_chars: Sequence[int] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Token ids (truncated to `max_length`) and, per text, the first token to pool from.

    A text's first `prefix_chars` characters are instruction prefix: pooling starts at the
    first non-special token at or after that offset, so the prefix (and a leading BOS) are
    excluded as in NV-Retriever. With no prefix, pooling starts at 0 (every token).
    """
    need_offsets = prefix_chars is not None and any(prefix_chars)
    enc = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
        return_offsets_mapping=need_offsets,
        return_special_tokens_mask=need_offsets,
    )
    ids = enc["input_ids"]
    starts = [0] * len(ids)
    if need_offsets:
        assert prefix_chars is not None
        for i, prefix in enumerate(prefix_chars):
            if prefix == 0:
                continue
            offsets, special = enc["offset_mapping"][i], enc["special_tokens_mask"][i]
            content = [
                k
                for k, ((s, _), sp) in enumerate(zip(offsets, special, strict=True))
                if not sp and s >= prefix
            ]
            # Truncation may have cut every query token; pooling over the whole text then
            # beats dividing by an empty mask.
            starts[i] = content[0] if content else 0
    return ids, starts


def pad(
    ids: Sequence[Sequence[int]], starts: Sequence[int], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n, length] int32 ids, attention mask and pool mask (attention minus the prefix)."""
    n = len(ids)
    out = np.full((n, length), pad_id, dtype=np.int32)
    mask = np.zeros((n, length), dtype=np.int32)
    pool = np.zeros((n, length), dtype=np.int32)
    for i, (seq, start) in enumerate(zip(ids, starts, strict=True)):
        out[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
        pool[i, start : len(seq)] = 1
    return out, mask, pool
