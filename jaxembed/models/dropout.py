"""Inverted dropout with per-row masks.

Each row's mask is drawn from `fold_in(key, row id)`, with `row_ids` the row's global number
in the step's batch: a row gets the same mask whichever GradCache chunk it is embedded in,
which keeps GradCache exact with dropout on (LoRA dropout and BERT's own dropout alike).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _mix(x: jax.Array) -> jax.Array:
    """lowbias32 (C. Wellons' integer hash): a bijection of uint32 in which every input bit
    flips each output bit with probability close to 1/2."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def row_keep_mask(
    key: jax.Array, shape: tuple[int, ...], rate: float, row_ids: jax.Array | None
) -> jax.Array:
    """Bool [rows, ...]: True where an element is kept, row r's drawn from `fold_in(key, r)`."""
    if row_ids is None:
        row_ids = jnp.arange(shape[0])

    # threefry gives each row two seed words; the elements are a counter hashed under them.
    # Threefry for every element (bernoulli's float uniforms, or even 16 bits an element) made
    # BERT's attention-probability masks ([rows, heads, T, T] a layer) the slowest part of a
    # CPU step; the hash is a few integer ops a 32-bit word, and a row's mask still depends
    # only on the key and its row id.
    seeds = jax.vmap(lambda r: jax.random.bits(jax.random.fold_in(key, r), (2,), jnp.uint32))(
        row_ids.astype(jnp.uint32)
    )
    *lead, last = shape[1:]
    words = (last + 1) // 2  # 16 bits an element
    counter = jnp.arange(math.prod(lead) * words, dtype=jnp.uint32).reshape(1, *lead, words)
    seed0, seed1 = (seeds[:, i].reshape(-1, *([1] * (len(lead) + 1))) for i in (0, 1))
    bits = _mix(_mix(counter ^ seed0) + seed1)
    halves = jnp.stack([bits & 0xFFFF, bits >> 16], axis=-1).reshape(-1, *lead, 2 * words)
    # The rate rounded to 1/65536.
    threshold = jnp.uint32(min(round(rate * 2**16), 2**16 - 1))
    return halves[..., :last] >= threshold


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

    def keep_mask(self, shape: tuple[int, ...], row_ids: jax.Array | None = None) -> jax.Array:
        """The mask alone, for a caller that applies it itself (attention's written-out
        backward)."""
        return row_keep_mask(self.make_rng("dropout"), shape, self.rate, row_ids)
