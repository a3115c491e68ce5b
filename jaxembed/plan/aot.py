"""Ahead-of-time compilation of the real train step for a device set, with abstract inputs.

Nothing is allocated and no weights are read: the state and the batch are ShapeDtypeStructs
carrying the shardings training uses, and `jit(train_step).lower(...).compile()` runs the
target's own compiler (XLA:TPU for compile-only TPU devices).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxembed import tasks
from jaxembed.models.architectures import ModelConfig, adapter_shapes
from jaxembed.models.build import model_config, pruned_config
from jaxembed.models.splash import compile_target
from jaxembed.sharding import batch_sharding, make_mesh
from jaxembed.train.settings import optimizer_settings, step_settings
from jaxembed.train.state import create_state
from jaxembed.train.step import jit_train_step, make_train_step, state_shardings
from jaxembed.train.validate import check_layout


@dataclass
class CompiledStep:
    compiled: Any  # jax.stages.Compiled
    state: Any  # abstract TrainState (ShapeDtypeStructs with shardings)
    batch: dict[str, jax.ShapeDtypeStruct]
    mesh_shape: tuple[int, ...]
    model: ModelConfig


def planning_model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The architecture to plan for: the HF directory's config.json when one is given (no
    weights read), else the dimensions in `config.model` (recipes carry their model's).
    Always with scanned layers: the cost model's loop correction (cost.py) counts the layer
    scan's body, and a pod compiles scanned layers anyway."""
    if config.model.init == "hf" and config.model.hf_path:
        return dataclasses.replace(model_config(config), scan_layers=True)
    as_random = copy.deepcopy(config)
    as_random.model.init = "random"
    model = dataclasses.replace(model_config(as_random), scan_layers=True)
    # Pruning happens at import; without the checkpoint, the config's depth is the unpruned one.
    return pruned_config(model, config.model.prune_layers)


def abstract_batch(config: ml_collections.ConfigDict, mesh: Any) -> dict[str, Any]:
    """The pipeline's batch at its longest bucket (keys as in jaxembed.data.pipeline)."""
    sharding = batch_sharding(mesh)
    shapes = tasks.get(config.model.task).batch_shapes(config)
    return {k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=sharding) for k, s in shapes.items()}


def abstract_state(
    model: ModelConfig,
    optimizer: optax.GradientTransformation,
    shardings: Any,
    task: str = "embedding",
) -> Any:
    """The TrainState as ShapeDtypeStructs carrying the training shardings."""
    spec = tasks.get(task)
    params = nn.meta.unbox(spec.param_shapes(model))
    adapters = nn.meta.unbox(adapter_shapes(model)) if model.lora is not None else None
    shapes = jax.eval_shape(
        lambda p, a: create_state(p, optimizer, jax.random.PRNGKey(0), a, spec.layout),
        params,
        adapters,
    )
    return jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes,
        shardings,
    )


def compile_train_step(
    config: ml_collections.ConfigDict, devices: Sequence[Any], model: ModelConfig | None = None
) -> CompiledStep:
    """Lower and compile `jit_train_step` exactly as training builds it, for `devices`."""
    mesh_shape = check_layout(config, len(devices))
    mesh = make_mesh(mesh_shape, devices)
    model = planning_model_config(config) if model is None else model
    optimizer, schedule = optimizer_settings(config).build(config.train.steps)
    task = config.model.task
    shardings = state_shardings(model, optimizer, mesh, task)
    state = abstract_state(model, optimizer, shardings, task)
    batch = abstract_batch(config, mesh)
    step = jit_train_step(
        make_train_step(model, optimizer, schedule, step_settings(config)), shardings, mesh
    )
    # Kernels that pick their lowering by platform (splash attention) trace for the target.
    with compile_target(devices[0].platform):
        compiled = step.lower(state, batch).compile()
    return CompiledStep(compiled, state, batch, mesh_shape, model)


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        size = 1
        for dim in shard:
            size *= dim
        total += size * jnp.dtype(leaf.dtype).itemsize
    return total
