"""GradCache vs direct gradients: compiled temp memory and step time against batch size.

A tiny transformer encoder (2 layers, width 64, 4 heads; queries 16 tokens, passages 64
tokens, 1 hard negative) trained with the ``in_batch`` loss. For each global batch we compile
``jax.value_and_grad`` of the unchunked step ("direct") and ``gradcache_value_and_grad`` with
32-row chunks, read ``compiled.memory_analysis().temp_size_in_bytes`` and time the step
(median of at least ``--repeats`` runs and 2 s, after a warm-up; GradCache and direct run
alternately and the time ratio is the median of the per-round ratios). Direct is skipped above
``--direct-max-batch`` (the stand-in for "no longer fits"). Ratios are against numbers
measured in the same run: GradCache temp memory against its own batch-32 figure, and
GradCache time against direct.

    python benchmarks/gradcache.py            # ~3-5 minutes on 2 CPU cores
    python benchmarks/gradcache.py --batches 32 64 --repeats 2   # smoke run
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.gradcache import gradcache_value_and_grad
from jaxembed.losses import contrastive_loss

VOCAB, WIDTH, HEADS, LAYERS = 1000, 64, 4, 2
QUERY_LEN, PASSAGE_LEN, GROUP = 16, 64, 2  # GROUP = positive + 1 hard negative


def init_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def dense(*shape: int) -> jax.Array:
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)

    layer = lambda: {
        "qkv": dense(WIDTH, 3 * WIDTH),
        "out": dense(WIDTH, WIDTH),
        "up": dense(WIDTH, 4 * WIDTH),
        "down": dense(4 * WIDTH, WIDTH),
        "ln1": jnp.ones(WIDTH),
        "ln2": jnp.ones(WIDTH),
    }
    return {"embed": dense(VOCAB, WIDTH), "layers": [layer() for _ in range(LAYERS)]}


def _norm(x: jax.Array, scale: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def encode(params: dict, x: dict) -> jax.Array:
    """Pre-norm bidirectional encoder, masked mean pooling, L2-normalized ``[rows, WIDTH]``."""
    mask = x["attention_mask"].astype(jnp.float32)
    h = params["embed"][x["input_ids"]]
    rows, length, _ = h.shape
    bias = jnp.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    for layer in params["layers"]:
        qkv = (_norm(h, layer["ln1"]) @ layer["qkv"]).reshape(rows, length, 3, HEADS, -1)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]) + bias
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        h = h + attn.reshape(rows, length, WIDTH) @ layer["out"]
        h = h + jax.nn.gelu(_norm(h, layer["ln2"]) @ layer["up"]) @ layer["down"]
    pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)


def loss_fn(q: jax.Array, p: jax.Array) -> tuple[jax.Array, dict]:
    return contrastive_loss(q, p.reshape(q.shape[0], GROUP, -1), variant="in_batch")


def direct_step(params: dict, qx: dict, px: dict) -> tuple:
    total = lambda prm: loss_fn(encode(prm, qx), encode(prm, px))
    return jax.value_and_grad(total, has_aux=True)(params)


def make_inputs(rows: int, length: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 4, length + 1, size=rows)
    return {
        "input_ids": jnp.asarray(rng.integers(0, VOCAB, size=(rows, length)), jnp.int32),
        "attention_mask": jnp.asarray(np.arange(length)[None] < lengths[:, None], jnp.int32),
    }


def compile_step(step: Callable, args: tuple) -> tuple[Callable, int]:
    compiled = jax.jit(step).lower(*args).compile()
    return compiled, compiled.memory_analysis().temp_size_in_bytes


def time_steps(steps: list[Callable], args: tuple, repeats: int) -> tuple[list, list, list]:
    """Median time of each step, median per-round ratio steps[0]/steps[-1], and the outputs.

    The steps run alternately, round after round, so that both see the same background load
    on a shared machine; small steps get more rounds (at least 2 s of the first step).
    """
    outs = [jax.block_until_ready(step(*args)) for step in steps]  # warm-up
    times: list[list[float]] = [[] for _ in steps]
    while len(times[0]) < repeats or sum(times[0]) < 2.0:
        for step, record in zip(steps, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(step(*args))
            record.append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times[0], times[-1], strict=True)]
    return [statistics.median(t) for t in times], statistics.median(ratios), outs


def max_rel_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))), a, b)
    return max(jax.tree.leaves(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--direct-max-batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    params = init_params()
    cached_step = functools.partial(
        gradcache_value_and_grad, encode, loss_fn, chunk_size=args.chunk
    )
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
    print(
        f"encoder: {LAYERS} layers, width {WIDTH}, {HEADS} heads; query {QUERY_LEN} tokens, "
        f"passage {PASSAGE_LEN} tokens, 1+{GROUP - 1} passages/query; loss in_batch; "
        f"chunk {args.chunk} rows"
    )
    header = (
        "| batch | GC temp MiB | GC temp / GC@first | direct temp MiB | direct / GC temp "
        "| GC ms | direct ms | GC / direct time | max rel grad diff |"
    )
    print(header)
    print("|---" * 9 + "|")
    base_temp = None
    for batch in args.batches:
        qx = make_inputs(batch, QUERY_LEN, seed=batch)
        px = make_inputs(batch * GROUP, PASSAGE_LEN, seed=batch + 1)
        cached, gc_temp = compile_step(cached_step, (params, qx, px))
        base_temp = base_temp or gc_temp
        row = [f"{batch}", f"{gc_temp / 2**20:.1f}", f"{gc_temp / base_temp:.2f}x"]
        if batch <= args.direct_max_batch:
            direct, d_temp = compile_step(direct_step, (params, qx, px))
            (gc_time, d_time), ratio, (gc_out, d_out) = time_steps(
                [cached, direct], (params, qx, px), args.repeats
            )
            row += [
                f"{d_temp / 2**20:.1f}",
                f"{d_temp / gc_temp:.1f}x",
                f"{gc_time * 1e3:.0f}",
                f"{d_time * 1e3:.0f}",
                f"{ratio:.2f}x",
                f"{max_rel_diff(gc_out[1], d_out[1]):.1e}",
            ]
        else:
            (gc_time,), _, _ = time_steps([cached], (params, qx, px), args.repeats)
            row += ["-", "-", f"{gc_time * 1e3:.0f}", "-", "-", "-"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
