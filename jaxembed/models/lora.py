"""LoRA adapters (Hu et al., 2021) on chosen projections of a backbone (Llama family, BERT).

A targeted projection computes `x W + (alpha / rank) * dropout(x) A B` with the base `W`
frozen, `A` [in, rank] drawn like PEFT's (Kaiming-uniform, bound 1/sqrt(fan_in)) and `B`
[rank, out] zero, so a fresh adapter leaves the model unchanged. Adapters live in their own
Flax collection, "lora", beside "params": the base params tree is exactly the full model's
(HF import, export and checkpoints read it as before), and the adapter of projection
`.../q_proj` is `lora/.../q_proj_lora_a` and `..._lora_b`, stacked over layers like the
kernel it adapts.

Targets are a regular expression searched in each projection's module path, e.g.
`layers/self_attn/q_proj` or `layers/mlp/down_proj`. Layers are stacked, so a target covers
every layer.

Dropout on the adapter input draws its masks per row (models/dropout.py), which keeps
GradCache exact with dropout on.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.models.dropout import module_dropout

ADAPTER_A = "_lora_a"
ADAPTER_B = "_lora_b"
COLLECTION = "lora"
# NV-Retriever-v1 and most embedding LoRA recipes adapt every linear layer of the backbone
# (the Llama family's names; each architecture has its own default, `lora_default_targets`).
ALL_PROJECTIONS = r"(q|k|v|o|gate|up|down)_proj$"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float
    dropout: float = 0.0
    targets: str = ALL_PROJECTIONS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        try:
            re.compile(self.targets)
        except re.error as e:
            message = f"LoRA targets {self.targets!r} is not a regular expression: {e}"
            raise ValueError(message) from e

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def targets_path(self, module_path: str) -> bool:
        return re.search(self.targets, module_path) is not None


def _a_init(fan_in: int) -> nn.initializers.Initializer:
    # PEFT: kaiming_uniform_(a=sqrt(5)) on A's [rank, in] weight = U(-1/sqrt(in), 1/sqrt(in)).
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


def lora_delta(
    module: nn.Module,
    name: str,
    x: jax.Array,
    in_axes: tuple[str, ...],
    out_shape: tuple[int, ...],
    out_axes: tuple[str, ...],
    lora: LoraConfig | None,
    row_ids: jax.Array | None,
) -> jax.Array | None:
    """The adapter term of projection `name` of `module` on `x` (its last `len(in_axes)`
    dims are contracted), or None when the projection is not a target."""
    if lora is None or not lora.targets_path("/".join((*module.scope.path, name))):
        return None
    in_shape = x.shape[x.ndim - len(in_axes) :]
    fan_in = math.prod(in_shape)
    a = module.variable(
        COLLECTION,
        name + ADAPTER_A,
        lambda: nn.with_logical_partitioning(_a_init(fan_in), (*in_axes, "lora_rank"))(
            module.make_rng("params"), (*in_shape, lora.rank)
        ),
    ).value
    b = module.variable(
        COLLECTION,
        name + ADAPTER_B,
        lambda: nn.with_logical_partitioning(nn.initializers.zeros, ("lora_rank", *out_axes))(
            module.make_rng("params"), (lora.rank, *out_shape)
        ),
    ).value
    x = module_dropout(module, x, lora.dropout, row_ids)
    batch_dims = x.ndim - len(in_axes)
    contract = tuple(range(batch_dims, x.ndim))
    low = jax.lax.dot_general(
        x, a.astype(x.dtype), ((contract, tuple(range(len(in_axes)))), ((), ()))
    )
    up = jax.lax.dot_general(low, b.astype(x.dtype), (((low.ndim - 1,), (0,)), ((), ())))
    return (lora.scale * up).astype(x.dtype)


# --- adapter trees: enumeration and merging ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdapterPair:
    """One adapted projection: its kernel's path in the params tree and the factors."""

    kernel_path: tuple[str, ...]
    a: Any  # [layers, *in, rank]
    b: Any  # [layers, rank, *out]


def adapter_pairs(adapters: Any, prefix: tuple[str, ...] = ()) -> Iterator[AdapterPair]:
    """Every (A, B) pair of an adapter tree, with the path of the kernel it adapts."""
    for key, value in adapters.items():
        if isinstance(value, dict):
            yield from adapter_pairs(value, (*prefix, key))
        elif key.endswith(ADAPTER_A):
            name = key.removesuffix(ADAPTER_A)
            b = adapters.get(name + ADAPTER_B)
            if b is None:
                raise ValueError(f"adapter {'/'.join((*prefix, key))} has no {name + ADAPTER_B}")
            yield AdapterPair((*prefix, name, "kernel"), value, b)


def low_rank_update(pair: AdapterPair, scale: float) -> Any:
    """`scale * A @ B` in the kernel's layout [layers, *in, *out], float32 (numpy for numpy
    factors, else JAX)."""
    xp = np if isinstance(pair.a, np.ndarray) else jnp
    a = xp.asarray(pair.a, xp.float32)
    b = xp.asarray(pair.b, xp.float32)
    layers, rank = a.shape[0], a.shape[-1]
    flat = xp.matmul(a.reshape(layers, -1, rank), b.reshape(layers, rank, -1))
    return scale * flat.reshape(a.shape[:-1] + b.shape[2:])


def merge_adapters(params: Any, adapters: Any, scale: float) -> Any:
    """A copy of `params` with every adapted kernel replaced by `W + scale * A @ B`
    (computed in float32, stored in the kernel's dtype). Numpy in, numpy out; under `jit`
    it works on JAX arrays."""
    merged = jax.tree.map(lambda x: x, params)
    for pair in adapter_pairs(adapters):
        node = merged
        for key in pair.kernel_path[:-1]:
            if key not in node:
                raise ValueError(f"adapter for {'/'.join(pair.kernel_path)} has no base kernel")
            node = node[key]
        kernel = node["kernel"]
        update = low_rank_update(pair, scale)
        if update.shape != kernel.shape:
            raise ValueError(
                f"adapter for {'/'.join(pair.kernel_path)} makes {update.shape}, "
                f"kernel is {kernel.shape}"
            )
        node["kernel"] = (kernel.astype(np.float32) + update).astype(kernel.dtype)
    return merged
