"""The layer stack both backbones share: layers stacked under `nn.scan` (one set of
variables with a leading layers axis), applied either by the scan or, on a CPU, layer by
layer in a Python loop over the same stacked variables.

The loop is the CPU speed path (`model.scan_layers=False`): XLA:CPU runs an unrolled stack
faster than a while loop (it fuses across layer boundaries and skips the scan's dynamic
slices), while compile time grows with depth, which pods do not want. Both paths read and
write the same params tree, so checkpoints, imports and LoRA targets do not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.models.lora import COLLECTION as LORA_COLLECTION

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def scanned_layers(layer: type[nn.Module], config: Any, num_broadcast: int) -> nn.Module:
    """`layer(config)` stacked `config.num_layers` times under `nn.scan` (with remat per
    `config.remat_policy`); its call takes the carry and `num_broadcast` shared inputs."""
    if config.remat_policy != "none":
        layer = nn.remat(layer, policy=REMAT_POLICIES[config.remat_policy], prevent_cse=False)
    return nn.scan(
        layer,
        variable_axes={"params": 0, LORA_COLLECTION: 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * num_broadcast,
        length=config.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(config)


@jax.custom_vjp
def unstack(stacked: jax.Array) -> list[jax.Array]:
    """`list(stacked)` along the leading (layers) axis, with the gradient assembled by one
    `stack`: autodiff of L slices would add L zero-padded copies of the whole stack."""
    return list(stacked)


def _unstack_forward(stacked: jax.Array) -> tuple[list[jax.Array], None]:
    return list(stacked), None


def _unstack_backward(_: None, grads: list[jax.Array]) -> tuple[jax.Array]:
    return (jnp.stack(grads),)


unstack.defvjp(_unstack_forward, _unstack_backward)


def _is_list(x: Any) -> bool:
    return isinstance(x, list)


class _NamedLayer(nn.Module):
    """One layer under the scope name "layers", so module paths (and LoRA targets matched
    against them) read the same as under `nn.scan`."""

    layer: Callable[..., nn.Module]
    config: Any

    @nn.compact
    def __call__(self, x: jax.Array, *args: Any) -> jax.Array:
        return self.layer(self.config, name="layers")(x, *args)[0]


def loop_layers(
    module: nn.Module, layer: Callable[..., nn.Module], x: jax.Array, *args: Any
) -> jax.Array:
    """`module`'s scanned layers' stacked variables, applied layer by layer in a Python
    loop (the scan's result, without the scan)."""
    cfg = module.config
    stacked = {name: tree["layers"] for name, tree in module.variables.items() if "layers" in tree}
    dropout = module.make_rng("dropout") if module.has_rng("dropout") else None

    def apply(variables: Any, x: jax.Array, rngs: dict[str, jax.Array]) -> jax.Array:
        return _NamedLayer(layer, cfg, parent=None).apply(variables, x, *args, rngs=rngs)

    if cfg.remat_policy != "none":
        apply = jax.checkpoint(apply, policy=REMAT_POLICIES[cfg.remat_policy])
    per_layer = jax.tree.map(unstack, stacked)
    for i in range(cfg.num_layers):
        variables = {
            name: {"layers": jax.tree.map(lambda a, i=i: a[i], tree, is_leaf=_is_list)}
            for name, tree in per_layer.items()
        }
        # One key per layer, as nn.scan splits them (the masks themselves differ).
        rngs = {} if dropout is None else {"dropout": jax.random.fold_in(dropout, i)}
        x = apply(variables, x, rngs)
    return x
