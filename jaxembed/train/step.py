"""The pure bi-encoder train step `(state, batch) -> (state, metrics)` and its jitted,
explicitly sharded form.

Queries and passages go through the same bidirectional backbone (shared weights, the
recipes' choice), are pooled and L2-normalized, and meet in the configured contrastive loss
over the whole global batch. With GradCache on, the same gradients come from chunked
embedding passes in bounded activation memory.

With `task="reranker"` the same step trains a cross-encoder: each joined (query, passage)
pair of `pair_input_ids` [B, 1+N, L] gets one score, and the ranking loss (listwise InfoNCE
over [positive, N negatives] or pointwise BCE) is taken per query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding

from jaxembed.gradcache import gradcache_value_and_grad
from jaxembed.losses import contrastive_loss, ranking_loss
from jaxembed.models.encoder import make_embed_fn
from jaxembed.models.llama import LlamaConfig, param_shapes
from jaxembed.models.reranker import make_score_fn, reranker_param_shapes
from jaxembed.sharding import batch_sharding, param_shardings, replicated
from jaxembed.train.state import TrainState

Batch = dict[str, jax.Array]


@dataclass(frozen=True)
class StepSettings:
    pooling: str = "mean"
    exclude_instruction: bool = False  # pool over the query text only (NV-Retriever)
    loss_variant: str = "in_batch"
    temperature: float = 0.02
    false_negative_margin: float | None = None
    mask_duplicates: bool = True
    gradcache_chunk: int = 0  # 0 = direct gradients
    gradcache_passage_chunk: int = 0  # 0 = same as gradcache_chunk
    task: str = "embedding"  # or "reranker"
    ranking: str = "listwise"  # reranker loss: "listwise" or "bce"
    ranking_temperature: float = 1.0


def _side(batch: Batch, prefix: str, use_pool_mask: bool) -> Batch:
    """The query or passage inputs of a batch, passages flattened to [B*(1+N), L]."""
    out = {}
    names = ("input_ids", "attention_mask") + (("pool_mask",) if use_pool_mask else ())
    for name in names:
        key = f"{prefix}_{name}"
        if key in batch:
            x = batch[key]
            out[name] = x.reshape(-1, x.shape[-1])
    return out


def make_train_step(
    config: LlamaConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    settings: StepSettings,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    if settings.task == "reranker":
        return _make_reranker_step(config, optimizer, schedule, settings)
    embed = make_embed_fn(config, settings.pooling)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        queries = _side(batch, "query", settings.exclude_instruction)
        passages = _side(batch, "passage", settings.exclude_instruction)
        batch_size = batch["query_input_ids"].shape[0]
        doc_ids = batch.get("doc_ids") if settings.mask_duplicates else None

        def loss_fn(q: jax.Array, p: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
            return contrastive_loss(
                q,
                p.reshape(batch_size, -1, p.shape[-1]),
                variant=settings.loss_variant,
                temperature=settings.temperature,
                doc_ids=doc_ids,
                false_negative_margin=settings.false_negative_margin,
            )

        if settings.gradcache_chunk:
            (loss, metrics), grads = gradcache_value_and_grad(
                embed,
                loss_fn,
                state.params,
                queries,
                passages,
                chunk_size=settings.gradcache_chunk,
                passage_chunk_size=settings.gradcache_passage_chunk or None,
            )
        else:

            def direct(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
                return loss_fn(embed(params, queries), embed(params, passages))

            (loss, metrics), grads = jax.value_and_grad(direct, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics.update(
            loss=loss,
            grad_norm=optax.tree.norm(grads),
            learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
            tokens=jnp.sum(queries["attention_mask"]) + jnp.sum(passages["attention_mask"]),
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def _apply_gradients(
    state: TrainState,
    grads: Any,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    metrics: dict[str, jax.Array],
) -> tuple[TrainState, dict[str, jax.Array]]:
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics.update(
        grad_norm=optax.tree.norm(grads),
        learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
    )
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def _make_reranker_step(
    config: LlamaConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    settings: StepSettings,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    score = make_score_fn(config, settings.pooling)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        ids, mask = batch["pair_input_ids"], batch["pair_attention_mask"]
        batch_size, group = ids.shape[:2]
        pairs = {
            "input_ids": ids.reshape(-1, ids.shape[-1]),
            "attention_mask": mask.reshape(-1, mask.shape[-1]),
        }

        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            scores = score(params, pairs).reshape(batch_size, group)
            return ranking_loss(
                scores, kind=settings.ranking, temperature=settings.ranking_temperature
            )

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = dict(metrics, loss=loss, tokens=jnp.sum(mask))
        return _apply_gradients(state, grads, optimizer, schedule, metrics)

    return train_step


def state_shardings(
    config: LlamaConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    task: str = "embedding",
) -> TrainState:
    """Params and their optimizer moments share the params' FSDP/tensor layout."""
    boxed = reranker_param_shapes(config) if task == "reranker" else param_shapes(config)
    params = param_shardings(boxed, mesh)
    abstract_opt = jax.eval_shape(optimizer.init, nn.meta.unbox(boxed))
    opt = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_opt,
        params,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(step=replicated(mesh), params=params, opt_state=opt, rng=replicated(mesh))


def jit_train_step(
    train_step: Callable,
    shardings: TrainState,
    mesh: Mesh,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Jitted with explicit in/out shardings; the old state's buffers are donated."""
    return jax.jit(
        train_step,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
