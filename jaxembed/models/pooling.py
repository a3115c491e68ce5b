"""Pooling of token states into one vector per sequence, and L2 normalization.

Masks are [B, T] with 1 for tokens to use. `mean` takes an optional separate pool mask so
NV-Retriever can attend to the instruction but leave it out of the average.
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


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))
