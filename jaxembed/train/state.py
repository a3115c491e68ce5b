"""Train state (step, params, optimizer state, rng) and the optax optimizer from config."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxembed.errors import UserInputError
from jaxembed.models.lora import ADAPTER_A, ADAPTER_B

DECAYED_LEAVES = ("kernel", "embedding")
DECAYED_SUFFIXES = (ADAPTER_A, ADAPTER_B)


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """How a task's params are laid out for LoRA: the subtree the adapters belong to, and
    the top-level subtrees trained even under LoRA (a head that starts untrained). The
    default is a bi-encoder's: the params are the backbone, with no head."""

    backbone: str | None = None  # None: the params are the backbone itself
    head: tuple[str, ...] = ()


@flax.struct.dataclass
class TrainState:
    """`params` is the whole model. With LoRA, `adapters` holds the adapters and the
    optimizer state covers only what is trained (see `trainable`); `params` stays frozen
    except the task's head (`layout`, static: it is part of the tree's structure)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    adapters: Any = None
    layout: ParamLayout = flax.struct.field(pytree_node=False, default=ParamLayout())


def trainable(params: Any, adapters: Any, layout: ParamLayout) -> Any:
    """What the optimizer updates: all params, or with LoRA the adapters plus the task's
    head (which starts untrained and so must learn)."""
    if adapters is None:
        return params
    return {"adapters": adapters, **{key: params[key] for key in layout.head}}


def trained(state: TrainState) -> Any:
    """`trainable` of a state."""
    return trainable(state.params, state.adapters, state.layout)


def with_trainable(state: TrainState, values: Any) -> TrainState:
    """`state` with its trainable part (as `trainable` lays it out) replaced by `values`."""
    if state.adapters is None:
        return state.replace(params=values)
    params = {**state.params, **{key: values[key] for key in state.layout.head}}
    return state.replace(params=params, adapters=values["adapters"])


def checkpointed(state: TrainState) -> TrainState:
    """What a step checkpoint stores. With LoRA the frozen base is left out (it is saved once
    per run, see `jaxembed.checkpoint.save_frozen_params`): only the task's head, if any,
    stays in `params`."""
    if state.adapters is None:
        return state
    head = {key: state.params[key] for key in state.layout.head}
    return state.replace(params=head or None)


def frozen_params(state: TrainState) -> Any:
    """The part of a LoRA run's params that never changes (all but the task's head)."""
    return {k: v for k, v in state.params.items() if k not in state.layout.head}


def with_frozen_params(state: TrainState, frozen: Any) -> TrainState:
    """A state restored from `checkpointed` form, made whole again with the frozen base."""
    return state.replace(params={**frozen, **(state.params or {})})


def backbone_params(state: TrainState) -> Any:
    """The params the LoRA adapters belong to."""
    key = state.layout.backbone
    return state.params if key is None else state.params[key]


def with_backbone_params(state: TrainState, backbone: Any) -> Any:
    """`state.params` with the backbone (as `backbone_params` finds it) replaced."""
    key = state.layout.backbone
    return backbone if key is None else {**state.params, key: backbone}


def learning_rate_schedule(
    peak: float, total_steps: int, warmup_steps: int, decay: str = "linear", end_factor: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to `peak`, then linear or cosine decay to `peak * end_factor`."""
    if total_steps < 1 or warmup_steps < 0:
        raise UserInputError(
            f"total_steps={total_steps} and warmup_steps={warmup_steps} are invalid"
        )
    warmup_steps = min(warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup_steps, 1)
    end = peak * end_factor
    if decay == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=end_factor)
    elif decay == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise UserInputError(f"schedule decay {decay!r} is not one of linear, cosine, constant")
    if warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def weight_decay_mask(params: Any) -> Any:
    """True for matrices (kernels, embeddings, LoRA factors); norms and biases are never
    decayed."""

    def decayed(path: tuple[Any, ...], _: Any) -> bool:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", str(last)))
        return name in DECAYED_LEAVES or str(name).endswith(DECAYED_SUFFIXES)

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(
    schedule: optax.Schedule,
    *,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_grad_norm: float | None = 1.0,
    accumulation_steps: int = 1,
) -> optax.GradientTransformation:
    """AdamW with decoupled weight decay on matrices only, global-norm clipping first."""
    parts = []
    if max_grad_norm:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(
        optax.adamw(
            schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask
        )
    )
    optimizer = optax.chain(*parts)
    if accumulation_steps > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=accumulation_steps)
    return optimizer


def create_state(
    params: Any,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    adapters: Any = None,
    layout: ParamLayout = ParamLayout(),
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(trainable(params, adapters, layout)),
        rng=rng,
        adapters=adapters,
        layout=layout,
    )
