"""Device mesh ('data', 'fsdp', 'tensor') and the logical-axis rules that place params on it.

Model code names its axes logically ('embed', 'heads', 'mlp', ...); this module is the one
place that decides which mesh axis each logical name is split over. A dimension that the
mesh axes do not divide is replicated instead (e.g. 2 kv heads on tensor=4), so any model
runs on any mesh; the cost is memory, never correctness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxembed.errors import UserInputError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or tuple of axes, or None = replicated)
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


def _named(shape: Sequence[int]) -> dict[str, int]:
    return dict(zip(MESH_AXES, shape, strict=True))


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replace a single -1 by what is left of the devices; check the product."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise UserInputError(f"mesh shape {shape} must have {len(MESH_AXES)} sizes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise UserInputError(f"mesh shape {shape}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if any(s == 0 or s < -1 for s in shape) or num_devices % known:
        raise UserInputError(f"mesh shape {_named(shape)} does not fit {num_devices} devices")
    resolved = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(resolved) != num_devices:
        raise UserInputError(
            f"mesh {_named(resolved)} uses {math.prod(resolved)} devices "
            f"but {num_devices} are available"
        )
    return resolved


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh; `-1` takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    resolved = resolve_mesh_shape(shape, len(devices))
    try:
        device_grid = mesh_utils.create_device_mesh(resolved, devices)
    except (ValueError, NotImplementedError, AssertionError):
        device_grid = np.asarray(devices).reshape(resolved)
    return Mesh(device_grid, MESH_AXES)


def _mesh_axes_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
) -> PartitionSpec:
    """PartitionSpec for one array; mesh axes that do not divide a dim (or repeat) are dropped."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape, strict=True):
        axes = table.get(name) if name is not None else None
        if isinstance(axes, str):
            axes = (axes,)
        if axes:
            axes = tuple(a for a in axes if a not in used and mesh.shape.get(a, 1) > 1)
        if not axes or dim % _mesh_axes_size(mesh, axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def param_shardings(
    boxed_params: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> Any:
    """NamedShardings for a params tree whose leaves are `nn.Partitioned` boxes (or shapes)."""

    def one(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nn.Partitioned):
            spec = logical_to_spec(leaf.names, leaf.value.shape, mesh, rules)
        else:
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map(
        one, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dim split over ('data', 'fsdp'); the rest replicated (any rank)."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return _mesh_axes_size(mesh, BATCH_AXES)
