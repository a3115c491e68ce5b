"""Checkpoint checksums against numpy's word sums, on any sharding; mismatch and corruption
are told apart."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxembed.checkpoint_integrity import (
    CheckpointMismatch,
    CorruptCheckpoint,
    check_compatible,
    fingerprint,
    numpy_checksum,
    verify,
)


def _tree(rng: np.random.Generator) -> dict:
    return {
        "params": {
            "kernel": rng.standard_normal((16, 24)).astype(np.float32),
            "scale": rng.standard_normal((24,)).astype(jnp.bfloat16),
        },
        "opt_state": [{"count": np.array(7, np.int32)}],
    }


def _numpy_sum(array: np.ndarray) -> int:
    words = array.view(np.uint16 if array.dtype.itemsize == 2 else np.uint32)
    return int(words.astype(np.uint64).sum() % 2**32)


def test_checksums_equal_numpy_word_sums_on_every_sharding():
    host = _tree(np.random.default_rng(0))
    expected = {
        "params.kernel": _numpy_sum(host["params"]["kernel"]),
        "params.scale": _numpy_sum(host["params"]["scale"]),
        "opt_state.0.count": _numpy_sum(host["opt_state"][0]["count"]),
    }
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))
    sharded = {
        "params": {
            "kernel": jax.device_put(
                host["params"]["kernel"], NamedSharding(mesh, PartitionSpec("a", "b"))
            ),
            "scale": jax.device_put(
                host["params"]["scale"], NamedSharding(mesh, PartitionSpec("a"))
            ),
        },
        "opt_state": [{"count": jax.device_put(host["opt_state"][0]["count"])}],
    }
    assert numpy_checksum(host["params"]["kernel"]) == expected["params.kernel"]
    assert numpy_checksum(host["params"]["scale"]) == expected["params.scale"]
    for tree in (jax.tree.map(jnp.asarray, host), sharded):
        sums, finite = fingerprint(tree)
        assert sums == expected and finite


def test_verify_tells_corrupt_and_non_finite_data():
    tree = jax.tree.map(jnp.asarray, _tree(np.random.default_rng(1)))
    sums, _ = fingerprint(tree)
    verify(tree, sums, 5)  # intact
    flipped = jax.tree.map(lambda x: x, tree)
    flipped["params"]["kernel"] = tree["params"]["kernel"].at[3, 4].multiply(1.5)
    with pytest.raises(CorruptCheckpoint, match="params.kernel does not read back as saved"):
        verify(flipped, sums, 5)
    poisoned = jax.tree.map(lambda x: x, tree)
    poisoned["params"]["scale"] = tree["params"]["scale"].at[0].set(jnp.nan)
    with pytest.raises(CorruptCheckpoint, match="non-finite"):
        verify(poisoned, None, 5)  # a checkpoint saved without checksums


def test_a_different_model_is_a_mismatch_naming_the_array():
    class Saved:  # what Orbax's metadata tree holds per array
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, shape, dtype

    saved = {"params": {"kernel": Saved("params.kernel", (16, 24), np.float32)}}
    same = {"params": {"kernel": jax.ShapeDtypeStruct((16, 24), jnp.float32)}}
    check_compatible(saved, same, 3)
    wider = {"params": {"kernel": jax.ShapeDtypeStruct((16, 32), jnp.float32)}}
    with pytest.raises(CheckpointMismatch, match=r"params.kernel has shape \(16, 24\) there"):
        check_compatible(saved, wider, 3)
    half = {"params": {"kernel": jax.ShapeDtypeStruct((16, 24), jnp.bfloat16)}}
    with pytest.raises(CheckpointMismatch, match="float32 there and bfloat16"):
        check_compatible(saved, half, 3)
    extra = {"params": {"kernel": same["params"]["kernel"], "bias": wider["params"]["kernel"]}}
    with pytest.raises(CheckpointMismatch, match="has no array params.bias"):
        check_compatible(saved, extra, 3)
