"""The heads-major attention core and its hand-written backward, against PyTorch's SDPA and
JAX's own `dot_product_attention` (autodiff)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.models.attention import attend, softmax_attention

torch = pytest.importorskip("torch")


def _inputs(dtype=jnp.float32, heads=6, kv_heads=2, t=7, d=8):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (3, heads, t, d), dtype)
    k = jax.random.normal(keys[1], (3, kv_heads, t, d), dtype)
    v = jax.random.normal(keys[2], (3, kv_heads, t, d), dtype)
    d_out = jax.random.normal(keys[3], (3, heads, t, d), dtype)
    lengths = np.array([7, 4, 1])  # right padding; row 3 keeps a single key
    mask = jnp.asarray(np.arange(t)[None, :] < lengths[:, None])[:, None, None, :]
    return q, k, v, d_out, mask


def _vjp(fn, q, k, v, d_out):
    out, pullback = jax.vjp(fn, q, k, v)
    return (out, *pullback(d_out))


def test_forward_and_gradients_match_torch_sdpa_with_gqa_and_padding():
    q, k, v, d_out, mask = _inputs()
    ours = _vjp(lambda q, k, v: softmax_attention(q, k, v, mask), q, k, v, d_out)

    tq, tk, tv = (torch.tensor(np.asarray(x), requires_grad=True) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        tq,
        tk.repeat_interleave(group, dim=1),  # HF's grouping: query head i reads kv head i // g
        tv.repeat_interleave(group, dim=1),
        attn_mask=torch.tensor(np.asarray(mask)),
    )
    out.backward(torch.tensor(np.asarray(d_out)))
    theirs = (out.detach(), tq.grad, tk.grad, tv.grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs, strict=True):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_matches_jax_dot_product_attention_autodiff(dtype, tol):
    q, k, v, d_out, mask = _inputs(dtype)

    def reference(q, k, v):
        t = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  (it wants [B, T, heads, d])
        return t(jax.nn.dot_product_attention(t(q), t(k), t(v), mask=mask, implementation="xla"))

    ours = _vjp(lambda q, k, v: softmax_attention(q, k, v, mask), q, k, v, d_out)
    theirs = _vjp(reference, q, k, v, d_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs, strict=True):
        assert a.dtype == dtype, name
        scale = float(jnp.max(jnp.abs(b.astype(jnp.float32))))
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol * scale, err_msg=name
        )


def test_rejects_heads_not_a_multiple_of_kv_heads():
    q, k, v, _, mask = _inputs(heads=5)
    with pytest.raises(ValueError, match="not a multiple"):
        softmax_attention(q, k, v, mask)


def test_named_implementation_path_equals_ours():
    """`attend` with a named dot_product_attention kernel ("xla" runs on CPU) swaps to the
    [B, T, heads, d] layout and back, GQA included."""
    q, k, v, _, mask = _inputs()
    np.testing.assert_allclose(
        attend(q, k, v, mask, "xla"), attend(q, k, v, mask, None), rtol=1e-5, atol=1e-6
    )
