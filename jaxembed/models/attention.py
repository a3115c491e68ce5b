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
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# `model.attention_impl`: "" is jaxembed's softmax attention (hand-written backward, the
# fastest here on CPU); "xla" and "cudnn" are `jax.nn.dot_product_attention`'s own.
ATTENTION_IMPLS = ("", "xla", "cudnn")


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


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    implementation: str | None,
    drop_probabilities: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """`softmax_attention`, or with a named `jax.nn.dot_product_attention` implementation
    (e.g. "cudnn") that kernel, which wants [B, T, heads, d] and groups GQA heads itself.
    `drop_probabilities` (BERT's attention dropout, training only) is applied to the
    attention probabilities [B, kv_heads, group, T, S]; the kernels have no such hook."""
    if drop_probabilities is not None:
        if implementation is not None:
            raise ValueError(f"attention dropout needs jaxembed's attention, not {implementation}")
        return _dropped_softmax_attention(q, k, v, mask, drop_probabilities)
    if implementation is None:
        return softmax_attention(q, k, v, mask)
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, implementation=implementation
    )
    return jnp.swapaxes(out, 1, 2)


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d), masked) v on q [B, heads, T, d], k and v [B, kv_heads, S, d];
    `mask` [B, 1, T or 1, S] is True where a key may be attended. Scores and softmax in f32."""
    b, heads, t, d = q.shape
    kv_heads = k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
    grouped = q.reshape(b, kv_heads, heads // kv_heads, t, d)
    return _attention(grouped, k, v, mask[:, :, None]).reshape(b, heads, t, d)


def _dropped_softmax_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    drop: Callable[[jax.Array], jax.Array],
) -> jax.Array:
    """`softmax_attention` with dropout on the probabilities, as HF BERT trains. Plain
    autodiff: the written-out backward of `_attention` has no place for the mask."""
    b, heads, t, d = q.shape
    kv_heads = k.shape[1]
    grouped = q.reshape(b, kv_heads, heads // kv_heads, t, d)
    scale = 1.0 / math.sqrt(d)
    scores = jnp.einsum("bkgth,bksh->bkgts", grouped, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, :, None], scores * scale, jnp.finfo(jnp.float32).min)
    probabilities = drop(jax.nn.softmax(scores, axis=-1)).astype(v.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", probabilities, v, preferred_element_type=jnp.float32)
    return out.astype(v.dtype).reshape(b, heads, t, d)


def _forward(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)).astype(v.dtype)
    total = jnp.sum(weights, axis=-1, keepdims=True, dtype=jnp.float32)
    unnormalized = jnp.einsum("bkgts,bksh->bkgth", weights, v, preferred_element_type=jnp.float32)
    out = (unnormalized / total).astype(v.dtype)
    return out, (q, k, v, weights, total, out)


@jax.custom_vjp
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    return _forward(q, k, v, mask)[0]


def _backward(residuals: tuple[jax.Array, ...], d_out: jax.Array) -> tuple[Any, ...]:
    # With P = W / total (W the unnormalized weights): dV = P^T dO, dP = dO V^T and
    # dS = P * (dP - rowsum(dO * O)); dividing dO by total once gives P's factor for free.
    q, k, v, weights, total, out = residuals
    scale = 1.0 / math.sqrt(q.shape[-1])
    d_scaled = (d_out.astype(jnp.float32) / total).astype(v.dtype)
    d_v = jnp.einsum("bkgts,bkgth->bksh", weights, d_scaled)
    d_weights = jnp.einsum("bkgth,bksh->bkgts", d_scaled, v, preferred_element_type=jnp.float32)
    row_dot = jnp.sum(
        d_scaled.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True
    )
    d_scores = (weights.astype(jnp.float32) * (d_weights - row_dot) * scale).astype(q.dtype)
    d_q = jnp.einsum("bkgts,bksh->bkgth", d_scores, k)
    d_k = jnp.einsum("bkgts,bkgth->bksh", d_scores, q)
    return d_q, d_k, d_v.astype(v.dtype), None


_attention.defvjp(_forward, _backward)
