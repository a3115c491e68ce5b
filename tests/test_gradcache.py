"""GradCache equals direct value_and_grad: chunk sizes, towers, dropout, 8-device meshes, memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxembed.gradcache import gradcache_value_and_grad
from jaxembed.losses import contrastive_loss

# LLVM -O0: these programs are tiny, and compiling them dominates the run time on 2 cores.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB, LENGTH, HIDDEN, DIM = 40, 6, 16, 8


def init_params(seed: int = 0) -> dict:
    # numpy, not jax.random: eager jax ops would each cost a compilation.
    rng = np.random.default_rng(seed)
    shapes = dict(embed=(VOCAB, HIDDEN), w1=(HIDDEN, HIDDEN), b1=(HIDDEN,), w2=(HIDDEN, DIM))
    draw = lambda s: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32)
    return {k: draw(s) for k, s in shapes.items()}


def embed(params: dict, x: dict) -> jax.Array:
    """Masked mean of token embeddings -> tanh MLP -> L2 norm; optional per-row dropout keys."""
    mask = x["attention_mask"][..., None].astype(jnp.float32)
    h = (params["embed"][x["input_ids"]] * mask).sum(1) / mask.sum(1)
    h = jnp.tanh(h @ params["w1"] + params["b1"])
    if "dropout_seed" in x:
        h = jnp.where(keep_mask(x["dropout_seed"], h.shape[1]), h / 0.8, 0.0)
    e = h @ params["w2"]
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def keep_mask(seed: jax.Array, width: int) -> jax.Array:
    """Dropout keep-mask (p=0.8) from a per-row seed by an integer hash.

    Stands in for per-row threefry keys (``vmap(jax.random.bernoulli)``), whose compilation
    would dominate this file's run time; like them it depends only on the row's own seed.
    """
    column = jnp.arange(width, dtype=jnp.uint32)
    x = seed[:, None] * jnp.uint32(0x9E3779B1) + column * jnp.uint32(0x85EBCA77)
    x = (x ^ (x >> 15)) * jnp.uint32(0x2C1B3C6D)
    x = x ^ (x >> 12)
    return (x & 0xFFFF) < int(0.8 * 0x10000)


def make_inputs(seed: int, rows: int, dropout: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, LENGTH + 1, size=rows)
    x = {
        "input_ids": jnp.asarray(rng.integers(0, VOCAB, size=(rows, LENGTH)), jnp.int32),
        "attention_mask": jnp.asarray(np.arange(LENGTH)[None] < lengths[:, None], jnp.int32),
    }
    if dropout:
        x["dropout_seed"] = jnp.asarray(rng.integers(0, 2**32, size=rows), jnp.uint32)
    return x


def make_loss_fn(variant: str = "in_batch", doc_ids=None):
    def loss_fn(q, p):
        p = p.reshape(q.shape[0], -1, q.shape[-1])
        return contrastive_loss(q, p, variant=variant, temperature=0.05, doc_ids=doc_ids)

    return loss_fn


def direct_value_and_grad(embed_fn, loss_fn, params, qx, px, passage_embed_fn=None):
    passage_embed_fn = passage_embed_fn or embed_fn
    total = lambda prm: loss_fn(embed_fn(prm, qx), passage_embed_fn(prm, px))
    return jax.value_and_grad(total, has_aux=True)(params)


def assert_close(result, reference, rtol=1e-5):
    (loss, metrics), grads = result
    (ref_loss, ref_metrics), ref_grads = reference
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    for key in ref_metrics:
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=rtol, atol=1e-6)
    for name in ref_grads:
        g, r = np.asarray(grads[name], np.float64), np.asarray(ref_grads[name], np.float64)
        assert g.shape == r.shape and grads[name].dtype == ref_grads[name].dtype
        scale = np.abs(r).max()
        assert scale > 0, name
        np.testing.assert_allclose(g, r, atol=rtol * scale, rtol=0, err_msg=name)


B, GROUP = 8, 3  # 8 queries, 24 passage rows


@functools.cache
def direct_reference(variant: str) -> tuple:
    doc_ids = jnp.asarray(np.arange(B * GROUP).reshape(B, GROUP) % 20)  # some duplicates
    loss_fn = make_loss_fn(variant, doc_ids)
    qx, px = make_inputs(1, B), make_inputs(2, B * GROUP)
    ref = fast_jit(direct_value_and_grad, static_argnums=(0, 1))(
        embed, loss_fn, init_params(), qx, px
    )
    return loss_fn, qx, px, ref


@pytest.mark.parametrize(
    "variant, chunk, passage_chunk",
    [
        ("in_batch", 2, None),
        ("in_batch", 8, 24),  # one chunk each
        ("qwen3", 1, 6),
        ("hn_only", 4, 12),
    ],
)
def test_matches_direct_gradients(variant, chunk, passage_chunk):
    loss_fn, qx, px, ref = direct_reference(variant)
    step = fast_jit(
        functools.partial(
            gradcache_value_and_grad,
            embed,
            loss_fn,
            chunk_size=chunk,
            passage_chunk_size=passage_chunk,
        )
    )
    assert_close(step(init_params(), qx, px), ref)


def test_separate_towers_dropout_and_bf16_params():
    params = {"query": init_params(3), "passage": init_params(4)}
    params["passage"] = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params["passage"])
    q_embed = lambda prm, x: embed(prm["query"], x)
    p_embed = lambda prm, x: embed(jax.tree.map(lambda w: w.astype(jnp.float32), prm["passage"]), x)
    qx, px = make_inputs(5, B, dropout=True), make_inputs(6, B * 2, dropout=True)
    loss_fn = make_loss_fn("gecko")
    ref = fast_jit(direct_value_and_grad, static_argnums=(0, 1, 5))(
        q_embed, loss_fn, params, qx, px, p_embed
    )
    out = fast_jit(
        functools.partial(
            gradcache_value_and_grad,
            q_embed,
            loss_fn,
            chunk_size=2,
            passage_chunk_size=4,
            passage_embed_fn=p_embed,
        )
    )(params, qx, px)
    assert_close((out[0], out[1]["query"]), (ref[0], ref[1]["query"]))
    # bf16 gradients: GradCache sums chunk gradients in f32, direct sums them in bf16.
    assert_close((out[0], out[1]["passage"]), (ref[0], ref[1]["passage"]), rtol=2e-2)
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(out[1]["passage"]))


def param_specs() -> dict:
    return {
        "embed": P(None, "fsdp"),
        "w1": P("fsdp", "tensor"),
        "b1": P("tensor"),
        "w2": P("tensor", None),
    }


@functools.cache
def sharded_case_reference() -> tuple:
    b = 16
    doc_ids = jnp.asarray(np.arange(b * 2).reshape(b, 2) % 29)
    loss_fn = make_loss_fn("qwen3", doc_ids)
    params, qx, px = init_params(7), make_inputs(8, b), make_inputs(9, b * 2)
    ref = fast_jit(direct_value_and_grad, static_argnums=(0, 1))(embed, loss_fn, params, qx, px)
    return loss_fn, params, qx, px, ref


@pytest.mark.parametrize(
    "shape, chunk, pin",
    [
        ((2, 4, 1), 8, True),  # one row per device per step
        ((1, 4, 2), 8, True),  # tensor-parallel params, 4 batch shards
        ((8, 1, 1), 4, False),  # chunk smaller than the number of shards: still exact
    ],
)
def test_sharded_matches_single_device_direct(shape, chunk, pin):
    loss_fn, params, qx, px, ref = sharded_case_reference()
    mesh = Mesh(np.array(jax.devices()).reshape(shape), ("data", "fsdp", "tensor"))
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    param_sharding = {k: NamedSharding(mesh, s) for k, s in param_specs().items()}
    step = fast_jit(
        functools.partial(
            gradcache_value_and_grad,
            embed,
            loss_fn,
            chunk_size=chunk,
            grad_sharding=param_sharding if pin else None,
        ),
        in_shardings=(param_sharding, batch, batch),
        out_shardings=(NamedSharding(mesh, P()), param_sharding),
    )
    params_s = jax.device_put(params, param_sharding)
    qx_s, px_s = jax.device_put(qx, batch), jax.device_put(px, batch)
    out = step(params_s, qx_s, px_s)
    assert out[1]["w1"].sharding == param_sharding["w1"]
    assert_close(out, ref)


def test_bounded_activation_memory():
    """Compiled temp memory: GradCache at 8x the chunk stays far below direct gradients."""
    hidden, wide = 64, 512

    def heavy_embed(params, x):  # a per-token MLP: activations [rows, LENGTH, wide] dominate
        h = params["embed"][x["input_ids"]]
        h = jnp.tanh(jnp.tanh(h @ params["up"]) @ params["down"]).mean(1)
        return h / jnp.linalg.norm(h, axis=-1, keepdims=True)

    shapes = {"embed": (VOCAB, hidden), "up": (hidden, wide), "down": (wide, hidden)}
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    loss_fn = make_loss_fn("in_batch")
    qx, px = make_inputs(0, 64), make_inputs(1, 128)

    def temp_bytes(fn) -> int:
        return fast_jit(fn).lower(params, qx, px).compile().memory_analysis().temp_size_in_bytes

    direct = temp_bytes(functools.partial(direct_value_and_grad, heavy_embed, loss_fn))
    cached = temp_bytes(
        functools.partial(gradcache_value_and_grad, heavy_embed, loss_fn, chunk_size=8)
    )
    assert cached < 0.25 * direct, (cached, direct)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(chunk_size=3), "chunk_size=3 must be a positive int dividing the 8 rows"),
        (dict(chunk_size=0), "chunk_size=0"),
        (dict(chunk_size=2.0), "chunk_size=2.0"),
        (dict(chunk_size=4, passage_chunk_size=5), "passage_chunk_size=5 .* 24 rows"),
    ],
)
def test_bad_chunking_raises(kwargs, match):
    qx, px = make_inputs(0, B), make_inputs(1, B * GROUP)
    with pytest.raises(ValueError, match=match):
        gradcache_value_and_grad(embed, make_loss_fn(), init_params(), qx, px, **kwargs)


def test_ragged_inputs_raise():
    qx = make_inputs(0, B)
    qx["attention_mask"] = qx["attention_mask"][:4]
    with pytest.raises(ValueError, match="query_inputs leaves must share a leading batch dim"):
        gradcache_value_and_grad(
            embed, make_loss_fn(), init_params(), qx, make_inputs(1, B), chunk_size=2
        )
