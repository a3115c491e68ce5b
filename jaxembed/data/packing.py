"""Sequence packing: the texts of one batch side laid end to end in rows of a fixed length.

A packed side replaces `[n, L]` padded rows with `[R, L]` rows holding several texts each,
marked by explicit `segment_ids` (1, 2, ... per row; 0 = padding) and `positions` that
restart at 0 in every segment. `slots` [n] says where text i went: flat index
`row * max_segments + segment - 1` into the model's `[R, max_segments, hidden]` per-segment
pooling, so the loss gathers its `[n, hidden]` embeddings in the original order.

Rows are filled first-fit decreasing (longest text first, into the first row with room
and a free segment slot), a deterministic function of the lengths; the row count is
rounded up to one of ROW_BUCKETS sizes (sixteenths of `n` rows, the unpacked count) so
a run compiles a handful of shapes (the row counts of a dataset's batches cluster).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ROW_BUCKETS = 16
PACKING_MODES = ("none", "rows")  # data.packing


@dataclass(frozen=True)
class PackedSide:
    """[rows, length] int32 arrays and the `slots` of the texts, in input order."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pool_mask: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    slots: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            name: getattr(self, name)
            for name in (
                "input_ids",
                "attention_mask",
                "pool_mask",
                "segment_ids",
                "positions",
                "slots",
            )
        }


def first_fit_rows(lengths: Sequence[int], length: int, max_segments: int) -> list[list[int]]:
    """Rows of text indices: longest first, each into the first row it fits (tokens and
    segment count); a text longer than `length` is an error, not a silent cut."""
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    sizes = np.asarray(lengths, dtype=np.int64)
    if len(sizes) and (sizes.max() > length or sizes.min() < 1):
        raise ValueError(f"text lengths must be in [1, {length}], got {sizes.min()}..{sizes.max()}")
    order = np.argsort(-sizes, kind="stable")
    free = np.empty(len(sizes), dtype=np.int64)
    count = np.zeros(len(sizes), dtype=np.int64)
    rows: list[list[int]] = []
    for i in order:
        open_rows = np.flatnonzero(
            (free[: len(rows)] >= sizes[i]) & (count[: len(rows)] < max_segments)
        )
        if len(open_rows):
            r = int(open_rows[0])
        else:
            r = len(rows)
            rows.append([])
            free[r] = length
        rows[r].append(int(i))
        free[r] -= sizes[i]
        count[r] += 1
    return rows


def row_bucket(needed: int, texts: int, align: int = 1) -> int:
    """The smallest of the sixteenths of `texts` (rounded up to multiples of `align`) that
    holds `needed` rows."""
    align = max(1, align)
    for k in range(1, ROW_BUCKETS + 1):
        size = math.ceil(math.ceil(texts * k / ROW_BUCKETS) / align) * align
        if size >= needed:
            return size
    return math.ceil(needed / align) * align


def pack(
    ids: Sequence[Sequence[int]],
    pool_starts: Sequence[int],
    rows: Sequence[Sequence[int]],
    *,
    num_rows: int,
    length: int,
    max_segments: int,
    pad_id: int,
    row_offset: int = 0,
) -> PackedSide:
    """Lay the texts out as `rows` (from `first_fit_rows`) says, in `num_rows` rows of
    `length` (extra rows are padding); `row_offset` shifts the slots (this process's first
    row in the global batch). Pool masks start at each text's `pool_starts`."""
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} packed rows do not fit in {num_rows}")
    shape = (num_rows, length)
    out = np.full(shape, pad_id, dtype=np.int32)
    mask = np.zeros(shape, dtype=np.int32)
    pool_mask = np.zeros(shape, dtype=np.int32)
    segments = np.zeros(shape, dtype=np.int32)
    positions = np.zeros(shape, dtype=np.int32)
    slots = np.full(len(ids), -1, dtype=np.int32)
    for r, members in enumerate(rows):
        at = 0
        for s, i in enumerate(members):
            n = len(ids[i])
            out[r, at : at + n] = ids[i]
            mask[r, at : at + n] = 1
            pool_mask[r, at + pool_starts[i] : at + n] = 1
            segments[r, at : at + n] = s + 1
            positions[r, at : at + n] = np.arange(n)
            slots[i] = (row_offset + r) * max_segments + s
            at += n
    if (slots < 0).any():
        raise ValueError("a text was not placed in any packed row")
    return PackedSide(out, mask, pool_mask, segments, positions, slots)


def padding_fraction(token_counts: Sequence[int], rows: int, length: int) -> float:
    """Share of the `rows x length` token positions that carry no text."""
    return 1.0 - float(sum(token_counts)) / float(rows * length)
