"""Optimizer pieces against hand computations: decay mask, schedules, accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxembed.errors import UserInputError
from jaxembed.models.architectures import init_params
from jaxembed.models.llama import LlamaConfig
from jaxembed.train.state import learning_rate_schedule, make_optimizer, weight_decay_mask


def test_weight_decay_only_on_matrices():
    config = LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
        num_kv_heads=1, attention_bias=True,
    )  # fmt: skip
    mask = weight_decay_mask(init_params(config, jax.random.PRNGKey(0)))
    flat = {
        "/".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(mask)
    }
    assert flat["embed_tokens/embedding"] and flat["layers/mlp/up_proj/kernel"]
    assert not flat["norm/scale"] and not flat["layers/input_layernorm/scale"]
    assert not flat["layers/self_attn/q_proj/bias"]


def test_warmup_then_linear_and_cosine_decay():
    linear = learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, decay="linear")
    assert float(linear(0)) == 0.0 and float(linear(5)) == pytest.approx(0.5)
    assert float(linear(10)) == pytest.approx(1.0) and float(linear(60)) == pytest.approx(0.5)
    assert float(linear(110)) == pytest.approx(0.0)
    cosine = learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, decay="cosine")
    assert float(cosine(60)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)))
    with pytest.raises(UserInputError, match="decay 'step'"):
        learning_rate_schedule(1.0, 10, 1, decay="step")


def test_adamw_step_matches_hand_computation_and_clipping():
    params = {"w": {"kernel": jnp.array([1.0, 2.0])}, "n": {"scale": jnp.array([3.0])}}
    grads = {"w": {"kernel": jnp.array([30.0, 40.0])}, "n": {"scale": jnp.array([0.0])}}
    lr, wd = 0.1, 0.5
    opt = make_optimizer(optax.constant_schedule(lr), weight_decay=wd, max_grad_norm=1.0)
    updates, _ = opt.update(grads, opt.init(params), params)
    # Clipped to norm 1: g = (0.6, 0.8); first Adam step is g / (|g| + eps) = sign(g).
    g = np.array([0.6, 0.8])
    expected = -lr * (g / (np.abs(g) + 1e-8) + wd * np.array([1.0, 2.0]))
    np.testing.assert_allclose(updates["w"]["kernel"], expected, rtol=1e-5)  # f32 Adam
    np.testing.assert_allclose(updates["n"]["scale"], [0.0], atol=1e-12)  # no decay on norms


def test_gradient_accumulation_applies_the_mean_every_k_steps():
    params = {"kernel": jnp.array([1.0])}
    opt = make_optimizer(optax.constant_schedule(0.1), weight_decay=0.0, max_grad_norm=None,
                         accumulation_steps=2)  # fmt: skip
    state = opt.init(params)
    first, state = opt.update({"kernel": jnp.array([1.0])}, state, params)
    assert float(first["kernel"][0]) == 0.0
    second, state = opt.update({"kernel": jnp.array([3.0])}, state, params)
    single = make_optimizer(optax.constant_schedule(0.1), weight_decay=0.0, max_grad_norm=None)
    ref, _ = single.update({"kernel": jnp.array([2.0])}, single.init(params), params)
    np.testing.assert_allclose(second["kernel"], ref["kernel"], rtol=1e-6)
