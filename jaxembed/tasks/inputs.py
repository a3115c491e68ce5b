"""A batch's model inputs, one side at a time, padded or packed (`jaxembed.data.packing`):
what the train steps feed the backbone, and how packed rows' per-slot outputs go back to
the [B, ...] order every loss expects."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxembed.tasks.base import Batch

PACKED_INPUTS = ("segment_ids", "positions")


def is_packed(batch: Batch) -> bool:
    return any(k.endswith("_segment_ids") for k in batch)


def side_inputs(batch: Batch, prefix: str, use_pool_mask: bool) -> Batch:
    """The query, passage or pair inputs of a batch, rows flattened to [rows, L] (passages
    [B*(1+N), L]; packed rows as they are, with their segment ids and positions)."""
    out = {}
    names = ("input_ids", "attention_mask") + (("pool_mask",) if use_pool_mask else ())
    for name in names + PACKED_INPUTS:
        key = f"{prefix}_{name}"
        if key in batch:
            x = batch[key]
            out[name] = x.reshape(-1, x.shape[-1])
    return out


def unpack_slots(pooled: jax.Array, slots: jax.Array) -> jax.Array:
    """Packed rows' per-slot vectors [R, S, ...] -> the texts' [*slots.shape, ...]."""
    flat = pooled.reshape(-1, *pooled.shape[2:])
    return jnp.take(flat, slots.reshape(-1), axis=0).reshape(*slots.shape, *pooled.shape[2:])


def packed_shapes(
    prefix: str, rows: int, length: int, slots: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """A packed side's array shapes (keys as `jaxembed.data.pipeline` names them)."""
    names = ("input_ids", "attention_mask", "pool_mask") + PACKED_INPUTS
    return {f"{prefix}_{name}": (rows, length) for name in names} | {f"{prefix}_slots": slots}
