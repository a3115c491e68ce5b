"""GradCache: exact contrastive gradients for a large global batch in bounded activation memory.

A contrastive loss couples every query with every candidate, so the batch cannot be split
into independent micro-batches. GradCache (Gao et al., 2021) splits the *encoder* work instead:

1. embed the queries and passages chunk by chunk under ``lax.scan``, keeping only the
   embeddings (``[rows, D]``), never the encoder activations;
2. evaluate ``loss_fn`` on the full global embeddings and take its gradient w.r.t. them;
3. re-embed chunk by chunk and pull each chunk's embedding gradient back to the parameters
   with ``jax.vjp``, summing the parameter gradients in the scan carry.

The result equals ``jax.value_and_grad`` of the unchunked computation (up to float summation
order) while peak activation memory is one chunk's worth; the cost is one extra forward pass.

Using it from a bi-encoder train step with a shared backbone::

    def embed(params, x):  # L2-normalized [rows, D]
        return model.apply({"params": params}, x["input_ids"], x["attention_mask"])

    def loss_fn(q, p):  # p arrives flat, [B*(1+N), D], row b*(1+N)+j = passage j of query b
        p = p.reshape(q.shape[0], -1, q.shape[-1])
        return contrastive_loss(q, p, variant=cfg.variant, temperature=cfg.temperature,
                                doc_ids=batch.get("doc_ids"))

    (loss, metrics), grads = gradcache_value_and_grad(
        embed, loss_fn, state.params, batch["query"], batch["passage"],
        chunk_size=cfg.query_chunk, passage_chunk_size=cfg.passage_chunk,
        grad_sharding=param_shardings)
    state = state.apply_gradients(grads=grads)

Notes for the train step:

* Shared backbone: one ``embed_fn`` serves both sides (the query instruction is part of the
  query tokens); the gradients of both sides are summed into the same ``params``. For two
  towers pass ``passage_embed_fn``; both functions receive the whole ``params`` pytree and pick
  their part (the other part simply gets zero gradient).
* Queries and passages are chunked separately, so they may have different sequence lengths
  (e.g. 192 and 512) and chunk sizes. Passages are given flat: ``B*(1+N)`` rows.
* Only ``params`` is differentiated. With LoRA pass the adapter params as ``params`` and close
  ``embed_fn`` over the frozen base weights; the accumulator then holds only adapter gradients.
* Dropout or any randomness must be identical in both passes: put a per-row PRNG key in the
  inputs pytree (it is chunked with the rows) instead of drawing one inside ``embed_fn``.
* ``chunk_size`` counts *global* rows. Under a mesh whose batch axis is sharded over
  ``('data', 'fsdp')`` over ``S`` devices, chunk ``c`` takes rows ``c, c + n_chunks, ...``
  (a strided split), so every chunk is spread evenly over the ``S`` shards and each device
  encodes ``chunk_size / S`` rows per step with no data movement; make ``chunk_size`` a multiple
  of ``S``. Parameters may be sharded any way (FSDP, tensor parallel); the gradient accumulator
  is float32, should follow the parameter sharding (pass ``grad_sharding`` to pin it), and is
  cast back to each parameter's dtype at the end.
* Randomness keyed per row must give the same bits whatever the chunk: threefry keys (JAX's
  default) under ``vmap`` do; ``rbg``/``unsafe_rbg`` keys under ``vmap`` do not (their bits
  depend on the batch shape), which silently breaks exactness.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
EmbedFn = Callable[[PyTree, PyTree], Array]
LossFn = Callable[[Array, Array], tuple[Array, dict[str, Array]]]


def gradcache_value_and_grad(
    embed_fn: EmbedFn,
    loss_fn: LossFn,
    params: PyTree,
    query_inputs: PyTree,
    passage_inputs: PyTree,
    *,
    chunk_size: int,
    passage_chunk_size: int | None = None,
    passage_embed_fn: EmbedFn | None = None,
    grad_sharding: PyTree | None = None,
) -> tuple[tuple[Array, dict[str, Array]], PyTree]:
    """``((loss, metrics), grads)`` of ``loss_fn(embed(queries), embed(passages))`` w.r.t. params.

    Args:
      embed_fn: ``(params, inputs) -> [rows, ...]`` embeddings; used for the queries, and for the
        passages too unless ``passage_embed_fn`` is given. Must be deterministic (see module doc).
      loss_fn: ``(query_emb [Bq, ...], passage_emb [Bp, ...]) -> (loss, metrics)`` on the full
        global batch, e.g. a closure over :func:`jaxembed.losses.contrastive_loss`.
      params: the pytree that is differentiated.
      query_inputs / passage_inputs: pytrees of arrays sharing a leading row dim (Bq, Bp).
      chunk_size: query rows embedded per step; must divide Bq.
      passage_chunk_size: passage rows per step (default ``chunk_size``); must divide Bp.
      passage_embed_fn: a separate passage tower; ``None`` means a shared backbone.
      grad_sharding: optional shardings (or PartitionSpecs under a mesh context) pinning the
        float32 gradient accumulator, normally the params' own. Without it the accumulator's
        layout is left to XLA's sharding propagation, which followed the params in our tests;
        pinning it rules out a replicated, model-sized accumulator on every device.

    Returns:
      ``((loss, metrics), grads)`` with ``grads`` shaped and typed like ``params``.
    """
    passage_embed_fn = embed_fn if passage_embed_fn is None else passage_embed_fn
    passage_chunk_size = chunk_size if passage_chunk_size is None else passage_chunk_size
    q_chunks = _num_chunks(query_inputs, chunk_size, "query_inputs", "chunk_size")
    p_chunks = _num_chunks(
        passage_inputs, passage_chunk_size, "passage_inputs", "passage_chunk_size"
    )

    q_emb = _embed_chunked(embed_fn, params, query_inputs, q_chunks)
    p_emb = _embed_chunked(passage_embed_fn, params, passage_inputs, p_chunks)
    loss_and_grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    (loss, metrics), (q_grad, p_grad) = loss_and_grads(q_emb, p_emb)

    if grad_sharding is None:
        constrain = lambda tree: tree
    else:
        constrain = lambda tree: jax.lax.with_sharding_constraint(tree, grad_sharding)
    grads = constrain(jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params))
    grads = _accumulate_grads(embed_fn, params, query_inputs, q_grad, q_chunks, grads, constrain)
    grads = _accumulate_grads(
        passage_embed_fn, params, passage_inputs, p_grad, p_chunks, grads, constrain
    )
    grads = jax.tree.map(lambda g, x: g.astype(x.dtype), grads, params)
    return (loss, metrics), grads


def _num_chunks(inputs: PyTree, chunk_size: int, name: str, chunk_name: str) -> int:
    leaves = jax.tree.leaves(inputs)
    if not leaves:
        raise ValueError(f"{name} has no arrays")
    rows = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if len(rows) != 1 or None in rows:
        raise ValueError(f"{name} leaves must share a leading batch dim, got leading dims {rows}")
    (n,) = rows
    if not _is_int(chunk_size) or chunk_size <= 0 or n % chunk_size:
        raise ValueError(
            f"{chunk_name}={chunk_size!r} must be a positive int dividing the {n} rows of {name}"
        )
    return n // operator.index(chunk_size)


def _is_int(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return not isinstance(value, bool)


def _split(tree: PyTree, num_chunks: int) -> PyTree:
    """``[n, ...] -> [num_chunks, n // num_chunks, ...]``, chunk c holding rows c, c+num_chunks, ...

    The strided split keeps each chunk's rows spread over all batch shards: with the row dim
    sharded contiguously, the reshape puts the sharding on the within-chunk dim.
    """

    def split(x: Array) -> Array:
        x = x.reshape(x.shape[0] // num_chunks, num_chunks, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, tree)


def _merge(x: Array) -> Array:
    """Inverse of :func:`_split` for one array."""
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _embed_chunked(embed_fn: EmbedFn, params: PyTree, inputs: PyTree, num_chunks: int) -> Array:
    # No gradient is taken through this scan, so no activation outlives its chunk.
    _, emb = jax.lax.scan(
        lambda _, x: (None, embed_fn(params, x)), None, _split(inputs, num_chunks)
    )
    return _merge(emb)


def _accumulate_grads(
    embed_fn: EmbedFn,
    params: PyTree,
    inputs: PyTree,
    emb_grad: Array,
    num_chunks: int,
    grads: PyTree,
    constrain: Callable[[PyTree], PyTree],
) -> PyTree:
    def step(acc: PyTree, chunk: tuple[PyTree, Array]) -> tuple[PyTree, None]:
        x, g = chunk
        _, pullback = jax.vjp(lambda prm: embed_fn(prm, x), params)
        (chunk_grads,) = pullback(g)
        acc = jax.tree.map(lambda a, c: a + c.astype(jnp.float32), acc, chunk_grads)
        return constrain(acc), None

    xs = (_split(inputs, num_chunks), _split(emb_grad, num_chunks))
    grads, _ = jax.lax.scan(step, grads, xs)
    return grads
