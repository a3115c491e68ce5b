"""The pure train step `(state, batch) -> (state, metrics)` and its jitted, explicitly
sharded form.

The task (`jaxembed.tasks`: the bi-encoder's contrastive loss, the cross-encoder's ranking
loss) computes the loss and gradients; the step applies them, skipping non-finite updates.
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

from jaxembed import tasks
from jaxembed.models.architectures import ModelConfig, adapter_shapes
from jaxembed.models.splash import on_mesh
from jaxembed.sharding import batch_sharding, param_shardings, replicated
from jaxembed.train.state import TrainState, trainable, trained, with_trainable

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
    pack_max_segments: int = 0  # packed batches' segment slots per row (data.packing)


def make_train_step(
    config: ModelConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    settings: StepSettings,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure step of `settings.task`: the task's loss and gradients, then one update."""
    gradients = tasks.get(settings.task).gradients(config, settings)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, metrics), grads = gradients(state, batch)
        return _apply_gradients(state, grads, optimizer, schedule, dict(metrics, loss=loss))

    return train_step


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
    values = trained(state)
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


def state_shardings(
    config: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    task: str = "embedding",
) -> TrainState:
    """Params, LoRA adapters (when `config.lora` is set) and the optimizer moments of what is
    trained share the FSDP/tensor layout of what they belong to."""
    spec = tasks.get(task)
    boxed = spec.param_shapes(config)
    params = param_shardings(boxed, mesh)
    boxed_adapters = adapter_shapes(config) if config.lora is not None else None
    adapters = None if boxed_adapters is None else param_shardings(boxed_adapters, mesh)
    abstract = trainable(nn.meta.unbox(boxed), nn.meta.unbox(boxed_adapters), spec.layout)
    abstract_opt = jax.eval_shape(optimizer.init, abstract)
    opt = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_opt,
        trainable(params, adapters, spec.layout),
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(
        step=replicated(mesh),
        params=params,
        opt_state=opt,
        rng=replicated(mesh),
        adapters=adapters,
        layout=spec.layout,
    )


def jit_train_step(
    train_step: Callable,
    shardings: TrainState,
    mesh: Mesh,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Jitted with explicit in/out shardings; the old state's buffers are donated. Traced
    on `mesh` for the kernels that shard-map over it (splash attention)."""

    def step_on_mesh(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        with on_mesh(mesh):
            return train_step(state, batch)

    return jax.jit(
        step_on_mesh,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
