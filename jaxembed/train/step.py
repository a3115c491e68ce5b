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
from jaxembed.models.architectures import ModelConfig, adapter_shapes, param_shapes
from jaxembed.models.encoder import make_embed_fn
from jaxembed.models.reranker import make_score_fn, reranker_param_shapes
from jaxembed.sharding import batch_sharding, param_shardings, replicated
from jaxembed.train.state import TrainState, trainable, with_trainable

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
    config: ModelConfig,
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
        dropout_rng = _dropout_rng(config, state)
        if dropout_rng is not None:
            # Global row numbers key the dropout masks, so GradCache chunks see the same ones.
            num_passages = passages["input_ids"].shape[0]
            queries["row_ids"] = jnp.arange(batch_size, dtype=jnp.int32)
            passages["row_ids"] = batch_size + jnp.arange(num_passages, dtype=jnp.int32)

        def loss_fn(q: jax.Array, p: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
            return contrastive_loss(
                q,
                p.reshape(batch_size, -1, p.shape[-1]),
                variant=settings.loss_variant,
                temperature=settings.temperature,
                doc_ids=doc_ids,
                false_negative_margin=settings.false_negative_margin,
            )

        def embed_trainable(values: Any, inputs: Batch) -> jax.Array:
            model = with_trainable(state, values)
            return embed(model.params, inputs, model.adapters, dropout_rng)

        values = trainable(state.params, state.adapters)
        if settings.gradcache_chunk:
            (loss, metrics), grads = gradcache_value_and_grad(
                embed_trainable,
                loss_fn,
                values,
                queries,
                passages,
                chunk_size=settings.gradcache_chunk,
                passage_chunk_size=settings.gradcache_passage_chunk or None,
            )
        else:

            def direct(values: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
                return loss_fn(embed_trainable(values, queries), embed_trainable(values, passages))

            (loss, metrics), grads = jax.value_and_grad(direct, has_aux=True)(values)
        tokens = jnp.sum(queries["attention_mask"]) + jnp.sum(passages["attention_mask"])
        metrics = dict(metrics, loss=loss, tokens=tokens)
        return _apply_gradients(state, grads, optimizer, schedule, metrics)

    return train_step


def _dropout_rng(config: ModelConfig, state: TrainState) -> jax.Array | None:
    """This step's LoRA dropout key (None when there is no dropout to draw)."""
    if state.adapters is None or config.lora is None or not config.lora.dropout:
        return None
    return jax.random.fold_in(state.rng, state.step)


def _apply_gradients(
    state: TrainState,
    grads: Any,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    metrics: dict[str, jax.Array],
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update, applied only when it is finite.

    A step whose loss, gradient norm or update norm is not finite leaves params and optimizer
    state as they were (as `optax.apply_if_finite` does) and reports `nonfinite=1`; the step
    counter still advances, since its batch was consumed. Whether such a step skips or halts
    the run is the loop's policy (`train.nonfinite`), decided from that flag."""
    values = trainable(state.params, state.adapters)
    updates, opt_state = optimizer.update(grads, state.opt_state, values)
    grad_norm, update_norm = optax.tree.norm(grads), optax.tree.norm(updates)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    new_values = optax.apply_updates(values, updates)
    kept = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (new_values, opt_state),
        (values, state.opt_state),
    )
    metrics = dict(metrics)
    metrics.update(
        grad_norm=grad_norm,
        update_norm=update_norm,
        nonfinite=jnp.logical_not(finite).astype(jnp.int32),
        learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
    )
    new_state = with_trainable(state, kept[0]).replace(step=state.step + 1, opt_state=kept[1])
    return new_state, metrics


def _make_reranker_step(
    config: ModelConfig,
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
        dropout_rng = _dropout_rng(config, state)
        if dropout_rng is not None:
            pairs["row_ids"] = jnp.arange(batch_size * group, dtype=jnp.int32)

        def loss_fn(values: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            model = with_trainable(state, values)
            scores = score(model.params, pairs, model.adapters, dropout_rng)
            return ranking_loss(
                scores.reshape(batch_size, group),
                kind=settings.ranking,
                temperature=settings.ranking_temperature,
            )

        values = trainable(state.params, state.adapters)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(values)
        metrics = dict(metrics, loss=loss, tokens=jnp.sum(mask))
        return _apply_gradients(state, grads, optimizer, schedule, metrics)

    return train_step


def state_shardings(
    config: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    task: str = "embedding",
) -> TrainState:
    """Params, LoRA adapters (when `config.lora` is set) and the optimizer moments of what is
    trained share the FSDP/tensor layout of what they belong to."""
    boxed = reranker_param_shapes(config) if task == "reranker" else param_shapes(config)
    params = param_shardings(boxed, mesh)
    boxed_adapters = adapter_shapes(config) if config.lora is not None else None
    adapters = None if boxed_adapters is None else param_shardings(boxed_adapters, mesh)
    abstract = trainable(nn.meta.unbox(boxed), nn.meta.unbox(boxed_adapters))
    abstract_opt = jax.eval_shape(optimizer.init, abstract)
    opt = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_opt,
        trainable(params, adapters),
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(
        step=replicated(mesh),
        params=params,
        opt_state=opt,
        rng=replicated(mesh),
        adapters=adapters,
    )


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
