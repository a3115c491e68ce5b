"""Heads-major softmax attention, shared by the Llama and BERT backbones.

Tensors stay [B, heads, T, head_dim] from the projections on, so the attention matmuls are
plain batched GEMMs: with [B, T, heads, d] XLA:CPU transposes q, k, v and the output around
them (measured ~25% of attention). Grouped-query attention views the query heads as
[B, kv_heads, group, T, d], which is HF's grouping (query head i reads kv head i // group).

The backward pass is written out (`jax.custom_vjp`): the softmax gradient
`dS = P * (dP - rowsum(dO * O))` is one fused pass over the [T, S] scores, where autodiff
through max/exp/sum/divide takes several; on the benchmark's model it made the attention
block's forward+backward ~1.15x faster (benchmarks/RESULTS.md). The probabilities are
normalized after the value matmul ([.., d] wide instead of [.., S]): the same sums, one
division per output row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# `model.attention_impl`: "" is jaxembed's softmax attention (hand-written backward, the
# fastest here on CPU); "xla" and "cudnn" are `jax.nn.dot_product_attention`'s own;
# "splash" is the TPU Pallas kernel with segment ids (models/splash.py).
ATTENTION_IMPLS = ("", "xla", "cudnn", "splash")


def partitioned_init(axes: tuple[str | None, ...], base: Any = None) -> nn.initializers.Initializer:
    """`base` (default normal(0.02), as HF initializes) with logical axis names attached."""
    return nn.with_logical_partitioning(base or nn.initializers.normal(0.02), axes)


class HeadsProjection(nn.Module):
    """x [B, T, in] -> [B, heads, T, head_dim], kernel [in, heads, head_dim] (the layout of
    `nn.DenseGeneral((heads, head_dim))`, so checkpoints are the same)."""

    heads: int
    head_dim: int
    use_bias: bool
    dtype: Any
    param_dtype: Any
    head_axis: str = "heads"  # logical axis name of the heads dim ("kv_heads" for k and v)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1], self.heads, self.head_dim)
        kernel = self.param(
            "kernel",
            partitioned_init(("embed", self.head_axis, "head_dim")),
            shape,
            self.param_dtype,
        )
        out = jnp.einsum("btd,dnh->bnth", x.astype(self.dtype), jnp.asarray(kernel, self.dtype))
        if not self.use_bias:
            return out
        bias = self.param(
            "bias",
            partitioned_init((self.head_axis, "head_dim"), nn.initializers.zeros),
            shape[1:],
            self.param_dtype,
        )
        return out + jnp.asarray(bias, self.dtype)[None, :, None, :]


class HeadsMerge(nn.Module):
    """[B, heads, T, head_dim] -> [B, T, features], kernel [heads, head_dim, features]."""

    features: int
    use_bias: bool
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[1], x.shape[3], self.features)
        kernel = self.param(
            "kernel", partitioned_init(("heads", "head_dim", "embed")), shape, self.param_dtype
        )
        out = jnp.einsum("bnth,nhd->btd", x.astype(self.dtype), jnp.asarray(kernel, self.dtype))
        if not self.use_bias:
            return out
        bias = self.param(
            "bias",
            partitioned_init(("embed",), nn.initializers.zeros),
            (self.features,),
            self.param_dtype,
        )
        return out + jnp.asarray(bias, self.dtype)


@dataclass(frozen=True)
class ProbabilityDropout:
    """BERT's attention dropout: `keep(shape)` draws the keep mask (per batch row) of the
    probabilities [B, kv_heads, group, T, S] at `rate`."""

    rate: float
    keep: Callable[[tuple[int, ...]], jax.Array]


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    implementation: str | None,
    dropout: ProbabilityDropout | None = None,
) -> jax.Array:
    """`softmax_attention`, or with a named `jax.nn.dot_product_attention` implementation
    (e.g. "cudnn") that kernel, which wants [B, T, heads, d] and groups GQA heads itself;
    "splash" takes the segment ids [B, T] as `mask` (see `llama.attention_inputs`).
    `dropout` (training only) drops attention probabilities; the kernels have no such hook."""
    if dropout is not None:
        if implementation is not None:
            raise ValueError(f"attention dropout needs jaxembed's attention, not {implementation}")
        return softmax_attention(q, k, v, mask, dropout)
    if implementation is None:
        return softmax_attention(q, k, v, mask)
    if implementation == "splash":
        from jaxembed.models.splash import splash_attention

        return splash_attention(q, k, v, mask)
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, implementation=implementation
    )
    return jnp.swapaxes(out, 1, 2)


def softmax_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    dropout: ProbabilityDropout | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(d), masked) v on q [B, heads, T, d], k and v [B, kv_heads, S, d];
    `mask` [B, 1, T or 1, S] is True where a key may be attended. Scores and softmax in f32.
    With `dropout`, the probabilities are dropped (and the rest scaled) as HF BERT trains."""
    b, heads, t, d = q.shape
    kv_heads = k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
    grouped = q.reshape(b, kv_heads, heads // kv_heads, t, d)
    if dropout is None:
        out = _attention(grouped, k, v, mask[:, :, None])
    else:
        keep = dropout.keep((b, kv_heads, heads // kv_heads, t, k.shape[2]))
        out = _dropped_attention(grouped, k, v, mask[:, :, None], keep, dropout.rate)
    return out.reshape(b, heads, t, d)


def _forward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    keep: jax.Array | None = None,
    rate: float = 0.0,
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """With `keep`, the kept probabilities are scaled by 1/(1 - rate): folded into the one
    division by the row total."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)).astype(v.dtype)
    total = jnp.sum(weights, axis=-1, keepdims=True, dtype=jnp.float32) * (1.0 - rate)
    kept = weights if keep is None else jnp.where(keep, weights, 0)
    unnormalized = jnp.einsum("bkgts,bksh->bkgth", kept, v, preferred_element_type=jnp.float32)
    out = (unnormalized / total).astype(v.dtype)
    return out, (q, k, v, weights, keep, total, out)


@jax.custom_vjp
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    return _forward(q, k, v, mask)[0]


def _backward(
    residuals: tuple[Any, ...], d_out: jax.Array, rate: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    # With P = W / total (W the unnormalized weights), the dropped P' = P * keep / (1 - r):
    # dV = P'^T dO, dP' = dO V^T, dP = dP' * keep / (1 - r), and dS = P * (dP - rowsum(P dP))
    # where rowsum(P dP) = rowsum(dO * O). Dividing dO by total (1 - r) once gives P''s
    # factor for free: dS = W * (keep (dO' V^T) - (1 - r) rowsum(dO' * O)).
    q, k, v, weights, keep, total, out = residuals
    scale = 1.0 / math.sqrt(q.shape[-1])
    d_scaled = (d_out.astype(jnp.float32) / total).astype(v.dtype)
    kept = weights if keep is None else jnp.where(keep, weights, 0)
    d_v = jnp.einsum("bkgts,bkgth->bksh", kept, d_scaled)
    d_weights = jnp.einsum("bkgth,bksh->bkgts", d_scaled, v, preferred_element_type=jnp.float32)
    if keep is not None:
        d_weights = jnp.where(keep, d_weights, 0.0)
    row_dot = (1.0 - rate) * jnp.sum(
        d_scaled.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True
    )
    d_scores = (weights.astype(jnp.float32) * (d_weights - row_dot) * scale).astype(q.dtype)
    d_q = jnp.einsum("bkgts,bksh->bkgth", d_scores, k)
    d_k = jnp.einsum("bkgts,bkgth->bksh", d_scores, q)
    return d_q, d_k, d_v.astype(v.dtype)


def _plain_backward(residuals: tuple[Any, ...], d_out: jax.Array) -> tuple[Any, ...]:
    return (*_backward(residuals, d_out), None)


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _dropped_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, keep: jax.Array, rate: float
) -> jax.Array:
    return _forward(q, k, v, mask, keep, rate)[0]


def _dropped_backward(rate: float, residuals: tuple[Any, ...], d_out: jax.Array) -> tuple:
    return (*_backward(residuals, d_out, rate), None, None)


_dropped_attention.defvjp(_forward, _dropped_backward)
_attention.defvjp(_forward, _plain_backward)
