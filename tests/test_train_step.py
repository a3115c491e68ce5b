"""The sharded train step: the same result on every mesh, and GradCache = direct gradients."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxembed.models.architectures import init_params
from jaxembed.models.llama import LlamaConfig
from jaxembed.sharding import make_mesh
from jaxembed.train.state import create_state, learning_rate_schedule, make_optimizer
from jaxembed.train.step import StepSettings, jit_train_step, make_train_step, state_shardings

CONFIG = LlamaConfig(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2
)


def _batch(seed: int = 0, batch: int = 8, negatives: int = 2, lq: int = 8, lp: int = 12):
    rng = np.random.default_rng(seed)

    def side(shape):
        ids = rng.integers(1, CONFIG.vocab_size, size=shape).astype(np.int32)
        lengths = rng.integers(2, shape[-1] + 1, size=shape[:-1])
        mask = (np.arange(shape[-1]) < lengths[..., None]).astype(np.int32)
        return ids * mask, mask

    q_ids, q_mask = side((batch, lq))
    p_ids, p_mask = side((batch, 1 + negatives, lp))
    doc_ids = rng.permutation(batch * (1 + negatives)).reshape(batch, 1 + negatives)
    return {
        "query_input_ids": q_ids,
        "query_attention_mask": q_mask,
        "passage_input_ids": p_ids,
        "passage_attention_mask": p_mask,
        "doc_ids": doc_ids.astype(np.int32),
    }


def _run(mesh_shape, settings: StepSettings, steps: int = 2):
    mesh = make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])
    schedule = learning_rate_schedule(1e-2, 10, 1)
    optimizer = make_optimizer(schedule, weight_decay=0.01)
    train_step = make_train_step(CONFIG, optimizer, schedule, settings)
    shardings = state_shardings(CONFIG, optimizer, mesh)
    state = jax.device_put(
        create_state(init_params(CONFIG, jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(1)),
        shardings,
    )
    step = jit_train_step(train_step, shardings, mesh)
    losses = []
    for i in range(steps):
        state, metrics = step(state, _batch(i))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state.params), losses, state


@pytest.fixture(scope="module")
def reference():
    return _run((1, 1, 1), StepSettings(loss_variant="in_batch"))


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)])
def test_same_result_on_every_mesh(reference, mesh_shape):
    ref_params, ref_losses, _ = reference
    params, losses, state = _run(mesh_shape, StepSettings(loss_variant="in_batch"))
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if mesh_shape[1] > 1:  # FSDP: params and Adam moments really are split
        kernel = state.params["layers"]["mlp"]["up_proj"]["kernel"]
        assert kernel.addressable_shards[0].data.size < kernel.size


def test_gradcache_step_equals_direct(reference):
    ref_params, ref_losses, _ = reference
    params, losses, _ = _run((2, 2, 2), StepSettings(loss_variant="in_batch", gradcache_chunk=4))
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_loss_falls_on_a_fixed_batch():
    _, losses, _ = _run((1, 1, 1), StepSettings(loss_variant="hn_only", temperature=0.05), steps=8)
    assert losses[-1] < losses[0]
