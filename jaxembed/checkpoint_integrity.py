"""What makes a checkpoint trustworthy to resume from: it matches the run's model, it reads
back bit for bit as it was saved, and it holds only finite numbers.

Orbax restores flipped bytes in uncompressed array data without complaint (the values are
simply wrong), so each save records a checksum per array: the sum of its bit patterns as
uint32 words, modulo 2**32. Integer addition is associative, so the sum does not depend on
how the array is sharded or in which order devices reduce it: a run resumed on another
mesh computes the same number from an intact checkpoint.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxembed.errors import UserInputError


class CheckpointMismatch(UserInputError):
    """The checkpoint holds a different model than the config builds (shape, dtype or a
    missing array): a config error, not corruption; older steps would not match either."""


class CorruptCheckpoint(Exception):
    """The checkpoint's arrays did not read back as they were saved (or are not finite)."""


def leaf_name(path: tuple[Any, ...]) -> str:
    """The dotted name Orbax gives an array, e.g. `opt_state.1.0.mu.norm.scale`."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def named_leaves(tree: Any) -> dict[str, Any]:
    return {leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_compatible(saved_metadata: Any, target: Any, step: int) -> None:
    """Raise CheckpointMismatch naming the first array whose shape or dtype differs, or that
    the checkpoint lacks, between the saved metadata tree and the restore target."""
    saved = {
        getattr(leaf, "name", name): leaf
        for name, leaf in named_leaves(saved_metadata).items()
        if hasattr(leaf, "shape")
    }
    for name, want in named_leaves(target).items():
        have = saved.get(name)
        if have is None:
            raise CheckpointMismatch(f"checkpoint step {step} has no array {name}")
        if jnp.issubdtype(want.dtype, jax.dtypes.prng_key):  # stored as its key data
            continue
        if tuple(have.shape) != tuple(want.shape):
            raise CheckpointMismatch(
                f"checkpoint step {step}: {name} has shape {tuple(have.shape)} there and "
                f"{tuple(want.shape)} in this config"
            )
        if jnp.dtype(have.dtype) != jnp.dtype(want.dtype):
            raise CheckpointMismatch(
                f"checkpoint step {step}: {name} is {jnp.dtype(have.dtype).name} there and "
                f"{jnp.dtype(want.dtype).name} in this config"
            )


def _word_sum(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys: sum their uint32 data
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_ or x.dtype.itemsize == 1:
        words = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 2:
        words = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:  # 4 bytes; 8-byte values become pairs of words
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.sum(words, dtype=jnp.uint32)


def _all_finite(tree: Any) -> jax.Array:
    flags = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _replicated(tree: Any) -> Any:
    leaf = next(
        (
            x
            for x in jax.tree.leaves(tree)
            if isinstance(getattr(x, "sharding", None), NamedSharding)
        ),
        None,
    )
    return None if leaf is None else NamedSharding(leaf.sharding.mesh, PartitionSpec())


@functools.lru_cache(maxsize=8)
def _fingerprint_fn(out_sharding: NamedSharding | None) -> Any:
    """One jitted function per output sharding, so each save reuses its compilation."""
    return jax.jit(
        lambda t: (jax.tree.map(_word_sum, t), _all_finite(t)), out_shardings=out_sharding
    )


def fingerprint(tree: Any) -> tuple[dict[str, int], bool]:
    """Per-array checksums (by Orbax name) and whether every float is finite: one jitted
    pass over the arrays, read back as a few integers."""
    sums, finite = jax.device_get(_fingerprint_fn(_replicated(tree))(tree))
    return {name: int(v) for name, v in named_leaves(sums).items()}, bool(finite)


def numpy_checksum(array: np.ndarray) -> int:
    """The checksum `fingerprint` computes, for a host array (as export reads them)."""
    array = np.ascontiguousarray(array)
    if array.dtype == np.bool_ or array.dtype.itemsize == 1:
        words = array.astype(np.uint32)
    elif array.dtype.itemsize == 2:
        words = array.view(np.uint16)
    else:
        words = array.view(np.uint32)
    return int(words.astype(np.uint64).sum() % 2**32)


def saved_checksums(step_dir: Path) -> dict[str, int] | None:
    """The checksums saved with a step (None for steps written before they were)."""
    try:
        meta = json.loads((Path(step_dir) / "meta" / "metadata").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("checksums")


def check_array(array: np.ndarray, checksums: dict[str, int] | None, name: str) -> None:
    """Raise CorruptCheckpoint if a host array read from a checkpoint differs from what was
    saved under `name`."""
    if checksums is None or name not in checksums:
        return
    if numpy_checksum(array) != checksums[name]:
        raise CorruptCheckpoint(f"{name} does not read back as saved")


def verify(tree: Any, saved_checksums: dict[str, int] | None, step: int) -> None:
    """Raise CorruptCheckpoint if the restored `tree` differs from what was saved (when the
    checkpoint recorded checksums) or holds a non-finite value (always checked: checkpoints
    written before this check existed may hold a diverged state)."""
    sums, finite = fingerprint(tree)
    if saved_checksums is not None:
        for name, value in sums.items():
            # An array the checkpoint holds no checksum for (a step rewritten by other
            # tools) cannot be checked, only the ones it does hold.
            if name in saved_checksums and saved_checksums[name] != value:
                raise CorruptCheckpoint(
                    f"{name} does not read back as saved (checksum {value} != "
                    f"{saved_checksums[name]})"
                )
    if not finite:
        raise CorruptCheckpoint("it holds non-finite values")
