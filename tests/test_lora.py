"""LoRA: adapters are exact low-rank updates of the weights they adapt, a train step moves
only the adapters (and a reranker's head), GradCache stays exact with adapter dropout, and
every mesh gives the same step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_step import _batch

from jaxembed import tasks
from jaxembed.models import architectures, reranker
from jaxembed.models.encoder import make_embed_fn
from jaxembed.models.llama import LlamaConfig, LlamaModel
from jaxembed.models.lora import LoraConfig, merge_adapters
from jaxembed.sharding import make_mesh
from jaxembed.train.state import (
    create_state,
    learning_rate_schedule,
    make_optimizer,
    weight_decay_mask,
)
from jaxembed.train.step import StepSettings, jit_train_step, make_train_step, state_shardings

BASE = LlamaConfig(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2
)
LORA = dataclasses.replace(BASE, lora=LoraConfig(rank=4, alpha=8.0))
WITH_DROPOUT = dataclasses.replace(BASE, lora=LoraConfig(rank=4, alpha=8.0, dropout=0.25))


# Jitted: Flax's eager init runs op by op, seconds per call on this CPU.
init_params = jax.jit(architectures.init_params, static_argnums=0)
init_adapters = jax.jit(architectures.init_adapters, static_argnums=0)
init_reranker_params = jax.jit(reranker.init_reranker_params, static_argnums=0)


def _perturbed(adapters, seed: int = 7, scale: float = 0.1):
    """Adapters with a non-zero B (fresh ones are an exact no-op)."""
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, noisy)


def _ids(seed: int = 0, batch: int = 3, length: int = 9):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, BASE.vocab_size, size=(batch, length)).astype(np.int32)
    mask = (np.arange(length) < rng.integers(3, length + 1, size=(batch, 1))).astype(np.int32)
    return ids, mask


def _forward(config, variables, ids, mask):
    return jax.jit(LlamaModel(config).apply)(variables, ids, mask)


def test_fresh_adapters_leave_the_model_unchanged():
    params = init_params(LORA, jax.random.PRNGKey(0))
    adapters = init_adapters(LORA, jax.random.PRNGKey(1))
    ids, mask = _ids()
    base = _forward(BASE, {"params": params}, ids, mask)
    adapted = _forward(LORA, {"params": params, "lora": adapters}, ids, mask)
    np.testing.assert_array_equal(np.asarray(adapted), np.asarray(base))
    # Same base init with or without LoRA settings: a LoRA run starts from the same weights.
    _assert_trees_equal(params, init_params(BASE, jax.random.PRNGKey(0)))


def test_adapted_forward_equals_the_merged_weights():
    params = init_params(LORA, jax.random.PRNGKey(0))
    adapters = _perturbed(init_adapters(LORA, jax.random.PRNGKey(1)))
    ids, mask = _ids()
    adapted = _forward(LORA, {"params": params, "lora": adapters}, ids, mask)
    host_params, host_adapters = jax.device_get((params, adapters))
    merged = merge_adapters(host_params, host_adapters, LORA.lora.scale)
    plain = _forward(BASE, {"params": merged}, ids, mask)
    np.testing.assert_allclose(np.asarray(adapted), np.asarray(plain), atol=2e-5)
    # The merge itself, written out for q_proj ([layers, hidden, heads, head_dim]) and o_proj.
    factors, base = host_adapters["layers"]["self_attn"], host_params["layers"]["self_attn"]
    scale = 8.0 / 4  # alpha / rank
    q = base["q_proj"]["kernel"] + scale * np.einsum(
        "lhr,lrnd->lhnd", factors["q_proj_lora_a"], factors["q_proj_lora_b"]
    )
    o = base["o_proj"]["kernel"] + scale * np.einsum(
        "lndr,lrh->lndh", factors["o_proj_lora_a"], factors["o_proj_lora_b"]
    )
    np.testing.assert_allclose(merged["layers"]["self_attn"]["q_proj"]["kernel"], q, atol=1e-6)
    np.testing.assert_allclose(merged["layers"]["self_attn"]["o_proj"]["kernel"], o, atol=1e-6)


def test_targets_choose_the_projections():
    config = dataclasses.replace(BASE, lora=LoraConfig(4, 8.0, targets=r"self_attn/(q|v)_proj"))
    adapters = init_adapters(config, jax.random.PRNGKey(0))
    assert sorted(adapters["layers"]) == ["self_attn"]
    assert sorted(adapters["layers"]["self_attn"]) == [
        "q_proj_lora_a",
        "q_proj_lora_b",
        "v_proj_lora_a",
        "v_proj_lora_b",
    ]
    assert adapters["layers"]["self_attn"]["q_proj_lora_a"].shape == (2, 32, 4)
    assert adapters["layers"]["self_attn"]["v_proj_lora_b"].shape == (2, 4, 2, 8)
    # AdamW decays the factors like any weight matrix (as PEFT under HF's Trainer does).
    assert all(jax.tree.leaves(weight_decay_mask(adapters)))


def test_dropout_masks_belong_to_rows_not_batches():
    params = init_params(WITH_DROPOUT, jax.random.PRNGKey(0))
    adapters = _perturbed(init_adapters(WITH_DROPOUT, jax.random.PRNGKey(1)))
    embed = jax.jit(make_embed_fn(WITH_DROPOUT, "mean"))
    ids, mask = _ids(batch=6)
    key = jax.random.PRNGKey(3)
    full = {"input_ids": ids, "attention_mask": mask, "row_ids": np.arange(10, 16)}
    whole = np.asarray(embed(params, full, adapters, key))
    part = {k: v[2:5] for k, v in full.items()}
    np.testing.assert_allclose(
        np.asarray(embed(params, part, adapters, key)), whole[2:5], atol=1e-6
    )
    without = np.asarray(embed(params, full, adapters))
    assert np.abs(without - whole).max() > 1e-3  # dropout really is on


def _run(config, mesh_shape, settings, steps=3, task="embedding"):
    mesh = make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])
    schedule = learning_rate_schedule(1e-2, 10, 1)
    optimizer = make_optimizer(schedule, weight_decay=0.01)
    shardings = state_shardings(config, optimizer, mesh, task)
    if task == "reranker":
        params = init_reranker_params(config, jax.random.PRNGKey(0))
    else:
        params = init_params(config, jax.random.PRNGKey(0))
    adapters = init_adapters(config, jax.random.PRNGKey(2)) if config.lora else None
    layout = tasks.get(task).layout  # a reranker's head trains beside the adapters
    state = create_state(params, optimizer, jax.random.PRNGKey(1), adapters, layout)
    state = jax.device_put(state, shardings)
    step = jit_train_step(make_train_step(config, optimizer, schedule, settings), shardings, mesh)
    first = jax.device_get(state)
    losses = []
    for i in range(steps):
        batch = _batch(i)
        if task == "reranker":
            batch = {
                "pair_input_ids": batch["passage_input_ids"],
                "pair_attention_mask": batch["passage_attention_mask"],
            }
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return first, jax.device_get(state), losses


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _assert_trees_differ_everywhere(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.abs(np.asarray(x) - np.asarray(y)).max() > 0


@pytest.fixture(scope="module")
def lora_reference():
    return _run(LORA, (1, 1, 1), StepSettings())


def test_only_adapters_change_in_a_step(lora_reference):
    first, last, losses = lora_reference
    _assert_trees_equal(first.params, last.params)
    _assert_trees_differ_everywhere(first.adapters, last.adapters)
    assert losses[-1] < losses[0]
    # The optimizer state holds two moments per adapter value and nothing for the base.
    adapter_size = sum(x.size for x in jax.tree.leaves(last.adapters))
    moments = sum(x.size for x in jax.tree.leaves(last.opt_state) if x.ndim > 0)
    assert moments == 2 * adapter_size


def test_reranker_trains_adapters_and_head_only():
    first, last, _ = _run(LORA, (1, 1, 1), StepSettings(task="reranker"), task="reranker")
    _assert_trees_equal(first.params["backbone"], last.params["backbone"])
    _assert_trees_differ_everywhere(first.params["score"], last.params["score"])
    _assert_trees_differ_everywhere(first.adapters, last.adapters)


def test_adapter_gradients_equal_autodiff_through_the_merged_weights():
    """The in-model low-rank path against differentiating `W + s A B` itself."""
    params = init_params(LORA, jax.random.PRNGKey(0))
    adapters = _perturbed(init_adapters(LORA, jax.random.PRNGKey(1)))
    ids, mask = _ids(batch=4)
    inputs = {"input_ids": ids, "attention_mask": mask}
    target = jax.random.normal(jax.random.PRNGKey(5), (4, BASE.hidden_size))
    adapted, plain = make_embed_fn(LORA, "mean"), make_embed_fn(BASE, "mean")

    def via_adapters(a):
        return jnp.sum(adapted(params, inputs, a) * target)

    def via_merge(a):
        return jnp.sum(plain(merge_adapters(params, a, LORA.lora.scale), inputs) * target)

    got = jax.jit(jax.grad(via_adapters))(adapters)
    want = jax.jit(jax.grad(via_merge))(adapters)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-4)
        assert np.abs(np.asarray(y)).max() > 1e-4


@pytest.fixture(scope="module")
def dropout_reference():
    return _run(WITH_DROPOUT, (1, 1, 1), StepSettings())


@pytest.mark.parametrize("mesh_shape,chunk", [((2, 2, 2), 0), ((1, 4, 2), 4)])
def test_step_with_dropout_is_the_same_on_every_mesh_and_with_gradcache(
    dropout_reference, mesh_shape, chunk
):
    _, ref, ref_losses = dropout_reference
    settings = StepSettings(gradcache_chunk=chunk, gradcache_passage_chunk=chunk * 3)
    _, got, losses = _run(WITH_DROPOUT, mesh_shape, settings)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    for x, y in zip(jax.tree.leaves(got.adapters), jax.tree.leaves(ref.adapters), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    _assert_trees_equal(got.params, ref.params)


def test_dropout_changes_the_step(dropout_reference, lora_reference):
    _, with_dropout, _ = dropout_reference
    _, without, _ = lora_reference
    diffs = [
        np.abs(x - y).max()
        for x, y in zip(
            jax.tree.leaves(with_dropout.adapters), jax.tree.leaves(without.adapters), strict=True
        )
    ]
    assert max(diffs) > 1e-4
