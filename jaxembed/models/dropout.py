"""Inverted dropout with per-row masks.

Each row's mask is drawn from `fold_in(key, row id)`, with `row_ids` the row's global number
in the step's batch: a row gets the same mask whichever GradCache chunk it is embedded in,
which keeps GradCache exact with dropout on (LoRA dropout and BERT's own dropout alike).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def row_keep_mask(
    key: jax.Array, shape: tuple[int, ...], rate: float, row_ids: jax.Array | None
) -> jax.Array:
    """Bool [rows, ...]: True where an element is kept, row r drawn from `fold_in(key, r)`."""
    if row_ids is None:
        row_ids = jnp.arange(shape[0])

    # 16 random bits an element against an integer threshold (the rate rounded to 1/65536):
    # a quarter of the threefry work of `bernoulli`'s float uniforms, which BERT's
    # attention-probability masks ([rows, heads, T, T]) make felt on a CPU.
    threshold = jnp.uint32(min(round(rate * 2**16), 2**16 - 1))
    *lead, last = shape[1:]
    words = (last + 1) // 2

    def row_mask(row_id: jax.Array) -> jax.Array:
        bits = jax.random.bits(jax.random.fold_in(key, row_id), (*lead, words), jnp.uint32)
        halves = jnp.stack([bits & 0xFFFF, bits >> 16], axis=-1).reshape(*lead, 2 * words)
        return halves[..., :last] >= threshold

    return jax.vmap(row_mask)(row_ids.astype(jnp.uint32))


def row_dropout(key: jax.Array, x: jax.Array, rate: float, row_ids: jax.Array | None) -> jax.Array:
    """`x` [rows, ...] with each element zeroed at `rate` and the rest scaled by 1/(1-rate)."""
    keep = row_keep_mask(key, x.shape, rate, row_ids)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def module_dropout(
    module: nn.Module, x: jax.Array, rate: float, row_ids: jax.Array | None
) -> jax.Array:
    """`row_dropout` with the module's next "dropout" key; the identity when `rate` is 0 or
    the call has no dropout rng (evaluation, encoding)."""
    if not rate or not module.has_rng("dropout"):
        return x
    return row_dropout(module.make_rng("dropout"), x, rate, row_ids)


class RowDropout(nn.Module):
    """`module_dropout` as a module of its own: its outputs show in Flax's
    `capture_intermediates`, which is how tests read the masks a step drew."""

    rate: float

    def __call__(self, x: jax.Array, row_ids: jax.Array | None = None) -> jax.Array:
        return module_dropout(self, x, self.rate, row_ids)
