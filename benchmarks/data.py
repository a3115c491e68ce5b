"""Data pipeline throughput vs what a tiny-model train step consumes, on this CPU.

Producer: `BatchIterator` examples/s (tokenized, padded, 1 query + 1 positive + N negatives
each), on real SciFact text when the shared assets are present, with a BPE tokenizer trained
in-process on that text. Consumer: a jitted forward+backward of mean-pooled InfoNCE over a
tiny bidirectional Llama (`jaxembed.models.llama`; a stand-in transformer if that module is
missing), at the same batch shapes. Also: the train step fed live by the pipeline vs fed one
cached batch, which shows whether data starves the step when both share the CPU.

    python benchmarks/data.py [--batch 32] [--negatives 4] [--steps 20] [--train-steps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jaxembed.data import (
    BatchIterator,
    DatasetSpec,
    PipelineConfig,
    beir_training_records,
    load_beir,
)

REPO = Path(__file__).resolve().parents[1]


def shared_scifact() -> Path | None:
    env = os.environ.get("JAXEMBED_SHARED_DATA")
    for root in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (root / "scifact" / "corpus.jsonl").is_file():
            return root / "scifact"
    return None


def load_data() -> tuple[list, list, str]:
    root = shared_scifact()
    if root is None:
        sys.path.insert(0, str(REPO / "tests"))
        from data_helpers.synthetic import make_records

        records = make_records(2000, passage_words=(50, 300), negatives=(4, 5))
        return records, [], "synthetic records (shared SciFact not found)"
    beir = load_beir(root, "train")
    records = beir_training_records(
        beir, instruction="Given a scientific claim, retrieve documents that support or refute it"
    )
    return records, list(beir.corpus.values()), "SciFact train (809 queries, negatives from corpus)"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"])
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def consumer(vocab_size: int):
    """(init(rng, ids, mask) -> params, encode(params, ids, mask) -> [B, T, H], description)."""
    try:
        from jaxembed.models.llama import LlamaConfig, LlamaModel
    except ImportError:
        return _stand_in(vocab_size)
    # stories260K-sized (llama2.c): dim 64, 5 layers, 8 heads, 4 kv heads.
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=172,
        num_layers=5,
        num_heads=8,
        num_kv_heads=4,
    )
    model = LlamaModel(cfg)

    def init(rng, ids, mask):
        import flax.linen as nn

        return nn.meta.unbox(model.init(rng, ids, mask)["params"])

    def encode(params, ids, mask):
        return model.apply({"params": params}, ids, mask)

    return init, encode, "jaxembed.models.llama LlamaModel (h64, 5 layers, 8/4 heads), bidir."


def _stand_in(vocab_size: int):
    hidden, layers = 64, 5

    def init(rng, ids, mask):
        keys = jax.random.split(rng, 2 + 4 * layers)
        w = lambda k, *s: jax.random.normal(k, s) * 0.02
        return {
            "embed": w(keys[0], vocab_size, hidden),
            "layers": [
                {
                    "qkv": w(keys[2 + 4 * i], hidden, 3 * hidden),
                    "o": w(keys[3 + 4 * i], hidden, hidden),
                    "up": w(keys[4 + 4 * i], hidden, 4 * hidden),
                    "down": w(keys[5 + 4 * i], 4 * hidden, hidden),
                }
                for i in range(layers)
            ],
        }

    def encode(params, ids, mask):
        x = params["embed"][ids]
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, -1e9)
        for p in params["layers"]:
            q, k, v = jnp.split(x @ p["qkv"], 3, axis=-1)
            heads = lambda t: t.reshape(*t.shape[:2], 8, -1).transpose(0, 2, 1, 3)
            att = jax.nn.softmax(heads(q) @ heads(k).transpose(0, 1, 3, 2) / 8.0 + bias)
            x = x + (att @ heads(v)).transpose(0, 2, 1, 3).reshape(x.shape) @ p["o"]
            x = x + jax.nn.gelu(x @ p["up"]) @ p["down"]
        return x

    return init, encode, "stand-in transformer (h64, 5 layers); jaxembed.models.llama missing"


def make_step(encode, tau: float = 0.02):
    def mean_pool(h, m):
        m = m.astype(h.dtype)[..., None]
        e = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

    def loss_fn(params, batch):
        q = mean_pool(
            encode(params, batch["query_input_ids"], batch["query_attention_mask"]),
            batch["query_pool_mask"],
        )
        b, g, lp = batch["passage_input_ids"].shape
        ids = batch["passage_input_ids"].reshape(b * g, lp)
        mask = batch["passage_attention_mask"].reshape(b * g, lp)
        p = mean_pool(encode(params, ids, mask), batch["passage_pool_mask"].reshape(b * g, lp))
        logits = (q @ p.T).astype(jnp.float32) / tau
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(b) * g).mean()

    @jax.jit
    def step(params, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), loss

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--query-len", type=int, default=64)
    ap.add_argument("--passage-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="pipeline batches timed")
    ap.add_argument("--train-steps", type=int, default=3, help="train steps timed")
    args = ap.parse_args()

    records, corpus, data_desc = load_data()
    texts = [r.query for r in records] + [p.full_text() for p in corpus[:2000]]
    tokenizer = train_tokenizer(texts, vocab_size=4096)
    cfg = PipelineConfig(
        global_batch_size=args.batch,
        num_negatives=args.negatives,
        query_max_length=args.query_len,
        passage_max_length=args.passage_len,
        # One bucket each: the consumer then compiles once and its timing is steady.
        query_buckets=(args.query_len,),
        passage_buckets=(args.passage_len,),
        prefetch=4,
    )
    spec = [DatasetSpec("data", records, corpus=corpus or None)]
    group = 1 + args.negatives

    # Producer alone: warm-up, then steady state.
    with BatchIterator(spec, tokenizer, cfg) as it:
        for _ in range(2):
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            batch = next(it)
        produce_s = (time.perf_counter() - t0) / args.steps
    produce_rate = args.batch / produce_s
    lengths = batch["passage_attention_mask"].sum(-1)

    # Consumer alone, on one cached batch.
    init, encode, model_desc = consumer(tokenizer.vocab_size)
    step = make_step(encode)
    dev = jax.tree.map(jnp.asarray, batch)
    params = init(jax.random.PRNGKey(0), dev["query_input_ids"], dev["query_attention_mask"])
    params, loss = step(params, dev)
    loss.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        params, loss = step(params, dev)
    loss.block_until_ready()
    consume_s = (time.perf_counter() - t0) / args.train_steps
    consume_rate = args.batch / consume_s

    # Consumer fed live by the pipeline (both share the CPU).
    with BatchIterator(spec, tokenizer, cfg) as it:
        params, loss = step(params, next(it))
        loss.block_until_ready()
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            params, loss = step(params, next(it))
        loss.block_until_ready()
        fed_s = (time.perf_counter() - t0) / args.train_steps

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, cpus: {os.cpu_count()}")
    print(f"data: {data_desc}; tokenizer: in-process BPE, vocab {tokenizer.vocab_size}")
    print(f"model: {model_desc}")
    print(
        f"batch: {args.batch} x (1 query [{args.query_len}] + {group} passages "
        f"[{args.passage_len}]), mean passage tokens {lengths.mean():.0f}"
    )
    print(f"pipeline:   {produce_rate:9.1f} examples/s ({produce_s * 1e3:.1f} ms/batch)")
    print(f"train step: {consume_rate:9.1f} examples/s ({consume_s * 1e3:.1f} ms/batch)")
    print(f"ratio pipeline / train step: {produce_rate / consume_rate:.1f}x (target >= 10x)")
    print(f"train step fed live / fed a cached batch: {consume_s / fed_s:.2f} (1.00 = no stall)")


if __name__ == "__main__":
    main()
