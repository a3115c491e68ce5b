"""LoRA train states in checkpoints, without training: a step holds only what is trained
(adapters, a reranker's score head, their optimizer state), the frozen base is saved once and
put back on restore, and a LoRA reranker's adapters merge into its backbone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxembed import tasks
from jaxembed.checkpoint import Checkpointer, restore_frozen_params, save_frozen_params
from jaxembed.models.architectures import init_adapters
from jaxembed.models.llama import LlamaConfig
from jaxembed.models.lora import LoraConfig, merge_adapters
from jaxembed.models.reranker import init_reranker_params
from jaxembed.train.loop import merged_params
from jaxembed.train.state import (
    checkpointed,
    create_state,
    frozen_params,
    trained,
    with_frozen_params,
)

CONFIG = LlamaConfig(
    vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
    num_kv_heads=1, lora=LoraConfig(rank=2, alpha=4.0),
)  # fmt: skip


@pytest.fixture(scope="module")
def reranker_state():
    params = init_reranker_params(CONFIG, jax.random.PRNGKey(0))
    adapters = init_adapters(CONFIG, jax.random.PRNGKey(1))
    # Non-zero B, so that merging changes the kernels.
    adapters = jax.tree.map(lambda x: x + 0.1, adapters)
    layout = tasks.get("reranker").layout
    return create_state(params, optax.adam(1e-3), jax.random.key(2), adapters, layout)


def _host(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _assert_equal_trees(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(_host(x), _host(y))


def test_a_step_holds_what_is_trained_and_restores_whole(reranker_state, tmp_path):
    state = reranker_state
    stored = checkpointed(state)
    assert set(stored.params) == {"score"}
    assert jax.tree.structure(stored.opt_state) == jax.tree.structure(state.opt_state)
    _assert_equal_trees(trained(stored), trained(state))

    save_frozen_params(tmp_path, frozen_params(state))
    checkpointer = Checkpointer(tmp_path / "checkpoints", async_save=False)
    checkpointer.save(7, stored, None)
    checkpointer.close()
    fresh = state.replace(  # other values, same shapes and shardings
        params=jax.tree.map(jnp.zeros_like, state.params),
        adapters=jax.tree.map(jnp.zeros_like, state.adapters),
    )
    checkpointer = Checkpointer(tmp_path / "checkpoints", async_save=False)
    assert checkpointer.saved_param_keys(7) == {"score"}
    restored, _, _ = checkpointer.restore(7, checkpointed(fresh))
    checkpointer.close()
    whole = with_frozen_params(restored, restore_frozen_params(tmp_path, frozen_params(fresh)))
    _assert_equal_trees(whole, state)


def test_an_embedding_step_stores_no_params(reranker_state):
    params = reranker_state.params["backbone"]
    state = create_state(params, optax.adam(1e-3), jax.random.key(0), reranker_state.adapters)
    assert checkpointed(state).params is None
    _assert_equal_trees(frozen_params(state), params)


def test_a_lora_reranker_merges_its_adapters_into_the_backbone(reranker_state):
    state = reranker_state
    merged = merged_params(state, CONFIG)
    expected = merge_adapters(
        jax.device_get(state.params["backbone"]), jax.device_get(state.adapters), CONFIG.lora.scale
    )
    _assert_equal_trees(merged["score"], state.params["score"])
    for x, y in zip(jax.tree.leaves(merged["backbone"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(x), y, rtol=1e-6, atol=1e-6)
    q = merged["backbone"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert (
        np.abs(
            np.asarray(q)
            - np.asarray(state.params["backbone"]["layers"]["self_attn"]["q_proj"]["kernel"])
        ).max()
        > 0
    )
