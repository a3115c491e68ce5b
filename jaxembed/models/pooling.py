"""Pooling of token states into one vector per sequence, and L2 normalization.

Masks are [B, T] with 1 for tokens to use. `mean` takes an optional separate pool mask so
NV-Retriever can attend to the instruction but leave it out of the average.
`pool_segments` pools packed rows: one vector per segment slot, [B, S, hidden].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOLING_MODES = ("mean", "last", "first")


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Average over the masked tokens, in f32; an all-zero mask row gives zeros, not NaN."""
    weights = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return total / count


def last_token_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """State of the last real token, correct under left and right padding."""
    t = mask.shape[1]
    last = t - 1 - jnp.argmax(jnp.flip(mask.astype(bool), axis=1), axis=1)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def first_token_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """State of the first real token (CLS-style), correct under left padding too."""
    first = jnp.argmax(mask.astype(bool), axis=1)
    return jnp.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def pool(
    hidden: jax.Array, mask: jax.Array, mode: str, pool_mask: jax.Array | None = None
) -> jax.Array:
    """Dispatch on `mode`; `pool_mask` (mean only) narrows the averaged tokens."""
    if mode == "mean":
        return mean_pool(hidden, mask if pool_mask is None else mask * pool_mask)
    if mode == "last":
        return last_token_pool(hidden, mask)
    if mode == "first":
        return first_token_pool(hidden, mask)
    raise ValueError(f"pooling mode {mode!r} is not one of {POOLING_MODES}")


def _segment_one_hot(segment_ids: jax.Array, max_segments: int) -> jax.Array:
    """[B, T, S] bool: token t belongs to segment s + 1."""
    return segment_ids[..., None] == jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)


def pool_segments(
    hidden: jax.Array,
    segment_ids: jax.Array,
    mode: str,
    max_segments: int,
    pool_mask: jax.Array | None = None,
) -> jax.Array:
    """[B, S, hidden] f32: slot s of row b pools segment s + 1 of packed row b as `pool`
    pools a row of its own (`pool_mask`, mean only, narrows the averaged tokens); a slot
    with no segment is zeros (mean) or an arbitrary token's state (last, first)."""
    member = _segment_one_hot(segment_ids, max_segments)
    if mode == "mean":
        weights = member if pool_mask is None else member & pool_mask.astype(bool)[..., None]
        weights = weights.astype(jnp.float32)
        # HIGHEST: a TPU's default f32 matmul rounds through bf16; a row's mean must not.
        total = jnp.einsum(
            "bts,bth->bsh",
            weights,
            hidden.astype(jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )
        count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)[..., None]
        return total / count
    if mode in ("last", "first"):
        # Segments are contiguous: the edge is where the next (previous) token leaves it.
        shifted = jnp.pad(
            member, ((0, 0), (0, 1), (0, 0)) if mode == "last" else ((0, 0), (1, 0), (0, 0))
        )
        neighbour = shifted[:, 1:] if mode == "last" else shifted[:, :-1]
        edge = member & ~neighbour
        index = jnp.argmax(edge, axis=1)  # [B, S]
        return jnp.take_along_axis(hidden, index[..., None], axis=1).astype(jnp.float32)
    raise ValueError(f"pooling mode {mode!r} is not one of {POOLING_MODES}")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))
