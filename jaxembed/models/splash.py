"""TPU splash attention (`model.attention_impl="splash"`): the Pallas block-sparse flash
kernel with segment ids, for bidirectional attention on padded or packed rows.

No [T, S] score tensor reaches HBM, and the blocks where query and key segments never meet
are skipped, so packed rows do not pay for cross-segment scores. The kernel sees one row at
a time (vmapped over the batch) through `shard_map` over the mesh the caller traces under
(`on_mesh`: rows on ('data', 'fsdp'), heads on 'tensor' when they divide), as Pallas
kernels are not partitioned by GSPMD. Grouped-query kv heads are repeated to the query
heads (HF's grouping: query head i reads kv head i // group). Padding is segment 0: it
attends only padding (those outputs are never pooled).

Off TPU the kernel runs in Pallas' interpreter (slow; what the CPU tests check it with)
unless `compile_target("tpu")` says the program is being compiled for a TPU (`jaxembed plan`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

BLOCK = 128  # the kernel's default tile; rows are padded up to a multiple of it
_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("target", default=None)
_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("mesh", default=None)


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value: object) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def compile_target(platform: str) -> contextlib.AbstractContextManager[None]:
    """Trace for `platform` ("tpu": the real kernel, even on a CPU host)."""
    return _setting(_TARGET, platform)


def on_mesh(mesh: Mesh | None) -> contextlib.AbstractContextManager[None]:
    """Trace with `mesh` as the one the kernel is shard-mapped over (`jax.set_mesh` is not
    allowed inside `jit`, where the train step sets this)."""
    return _setting(_MESH, mesh)


def _interpret() -> bool:
    return (_TARGET.get() or jax.default_backend()) != "tpu"


def _kernel(heads: int, length: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    # Built per trace, not cached: the kernel holds its block-mask arrays, and arrays made
    # while tracing must not outlive that trace.
    mask = sm.MultiHeadMask([sm.FullMask((length, length))] * heads)
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)

    def per_row(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array) -> jax.Array:
        return kernel(q, k, v, segment_ids=sk.SegmentIds(q=segments, kv=segments))

    return jax.vmap(per_row)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v within each segment: q [B, heads, T, d], k and v
    [B, kv_heads, T, d], `segments` [B, T] int (0 = padding). Returns [B, heads, T, d]."""
    b, heads, t, d = q.shape
    group = heads // k.shape[1]
    if group > 1:
        k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)
    q = q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)  # the kernel does not scale
    padded = -(-t // BLOCK) * BLOCK
    if padded != t:
        widths = ((0, 0), (0, 0), (0, padded - t), (0, 0))
        q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
        segments = jnp.pad(segments, ((0, 0), (0, padded - t)))
    segments = segments.astype(jnp.int32)
    interpret = _interpret()
    mesh = _MESH.get()
    if mesh is None or mesh.size == 1:
        out = _kernel(heads, padded, interpret)(q, k, v, segments)
    else:
        rows = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
        tensor = mesh.shape.get("tensor", 1)
        head_axis = "tensor" if tensor > 1 and heads % tensor == 0 else None
        local_heads = heads // tensor if head_axis else heads
        spec = P(rows, head_axis, None, None)
        out = jax.shard_map(
            _kernel(local_heads, padded, interpret),
            mesh=mesh,
            in_specs=(spec, spec, spec, P(rows, None)),
            out_specs=spec,
            check_vma=False,
        )(q, k, v, segments)
    return out[:, :, :t].astype(v.dtype)
