"""Backbone properties beyond HF parity: remat, dtypes, logical axes, sharding rules."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.errors import UserInputError
from jaxembed.models.architectures import init_params, param_shapes
from jaxembed.models.llama import LlamaConfig, LlamaModel
from jaxembed.sharding import logical_to_spec, make_mesh, resolve_mesh_shape

CONFIG = LlamaConfig(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=2
)


def _loss(config, params, ids, mask):
    hidden = LlamaModel(config).apply({"params": params}, ids, mask)
    return jnp.mean(hidden**2)


def test_remat_policies_give_identical_gradients():
    params = init_params(CONFIG, jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, 64)
    mask = jnp.ones((2, 9), jnp.int32)
    ref = jax.grad(lambda p: _loss(CONFIG, p, ids, mask))(params)
    for policy in ("full", "dots", "minimal"):
        config = LlamaConfig(**{**CONFIG.__dict__, "remat_policy": policy})
        got = jax.grad(lambda p, c=config: _loss(c, p, ids, mask))(params)
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compute_tracks_f32():
    params = init_params(CONFIG, jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, 64)
    f32 = LlamaModel(CONFIG).apply({"params": params}, ids)
    bf16_config = LlamaConfig(**{**CONFIG.__dict__, "dtype": "bfloat16"})
    bf16 = LlamaModel(bf16_config).apply({"params": params}, ids)
    assert bf16.dtype == jnp.bfloat16
    rel = jnp.linalg.norm(bf16.astype(jnp.float32) - f32) / jnp.linalg.norm(f32)
    assert rel < 0.03


def test_every_param_has_logical_axes_and_layers_are_stacked():
    boxed = param_shapes(CONFIG)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == len(leaf.value.shape)
    q = boxed["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.names == ("layers", "embed", "heads", "head_dim") and q.value.shape == (3, 32, 4, 8)
    assert sum(int(np.prod(x.value.shape)) for x in leaves) == CONFIG.num_params()


def test_logical_rules_drop_axes_that_do_not_divide():
    mesh = make_mesh((1, 2, 4))
    # 4 heads over tensor=4 split; 2 kv heads cannot be, so they are replicated.
    assert logical_to_spec(("embed", "heads", "head_dim"), (32, 4, 8), mesh) == (
        jax.sharding.PartitionSpec("fsdp", "tensor", None)
    )
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 2, 8), mesh) == (
        jax.sharding.PartitionSpec("fsdp", None, None)
    )


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, -1, 1), "does not fit 8 devices"),
        ((-1, -1, 1), "at most one axis"),
        ((2, 2), "3 sizes"),
    ],
)
def test_bad_mesh_shapes(shape, message):
    with pytest.raises(UserInputError, match=message):
        resolve_mesh_shape(shape, 8)
    assert resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)


def test_config_rejects_bad_heads():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        LlamaConfig(**{**CONFIG.__dict__, "num_kv_heads": 3})


def test_dense_matmul_gradients_equal_autodiff():
    from jaxembed.models.matmul import dense_matmul

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
    k = jax.random.normal(jax.random.PRNGKey(1), (8, 12))
    r = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 12))

    def ours(x, k):
        return jnp.sum(jnp.tanh(dense_matmul(x, k)) * r)

    def plain(x, k):
        return jnp.sum(jnp.tanh(x @ k) * r)

    for a, b in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(plain, (0, 1))(x, k), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_layer_loop_equals_scan(remat_policy):
    """scan_layers=False runs the same stacked weights in a Python loop: same outputs and
    gradients, with and without remat, and LoRA adapters found under the same paths."""
    from jaxembed.models.architectures import init_adapters
    from jaxembed.models.lora import LoraConfig

    scanned = LlamaConfig(
        **{**CONFIG.__dict__, "remat_policy": remat_policy, "lora": LoraConfig(2, 4.0)}
    )
    looped = LlamaConfig(**{**scanned.__dict__, "scan_layers": False})
    params = init_params(scanned, jax.random.PRNGKey(0))
    adapters = init_adapters(scanned, jax.random.PRNGKey(1))
    # Non-zero B factors, so the adapters change the output.
    adapters = jax.tree.map(
        lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size)).reshape(a.shape), adapters
    )
    ids = jax.random.randint(jax.random.PRNGKey(2), (2, 9), 0, 64)
    mask = jnp.asarray([[1] * 9, [1] * 5 + [0] * 4])

    def loss(config, params, adapters):
        hidden = LlamaModel(config).apply({"params": params, "lora": adapters}, ids, mask)
        return jnp.mean(hidden**2)

    assert jax.tree.structure(init_params(looped, jax.random.PRNGKey(0))) == jax.tree.structure(
        params
    )
    ref = jax.value_and_grad(loss, (1, 2))(scanned, params, adapters)
    got = jax.value_and_grad(loss, (1, 2))(looped, params, adapters)
    base = jax.value_and_grad(loss, (1, 2))(
        looped, params, init_adapters(scanned, jax.random.PRNGKey(1))
    )
    assert abs(float(base[0]) - float(ref[0])) > 1e-6  # the adapters matter
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
