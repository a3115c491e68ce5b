"""`jaxembed demo`: the main job on a built-in default, offline, in a few minutes on a CPU.

It writes a synthetic paraphrase-retrieval task (see `jaxembed.synthetic`), trains a BPE
tokenizer on it, trains a tiny bidirectional Llama from scratch with InfoNCE through the
real `jaxembed train` loop, and reports held-out nDCG@10 and Recall@10 before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from jaxembed.config import default_config
from jaxembed.data.formats import load_beir
from jaxembed.errors import UserInputError
from jaxembed.evaluate import evaluate_retrieval
from jaxembed.models.encoder import Encoder, PoolingSettings
from jaxembed.models.llama import init_params
from jaxembed.synthetic import make_task, write_task
from jaxembed.train.loop import model_config, train


def train_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A BPE tokenizer trained on `texts` (no downloads), with pad/unk/bos/eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def demo_config(data_dir: Path, tokenizer_dir: Path, vocab_size: int, steps: int):
    config = default_config()
    config.model.vocab_size = vocab_size
    config.data.train_files = (str(data_dir / "train.jsonl"),)
    config.data.tokenizer = str(tokenizer_dir)
    config.data.global_batch_size = 32
    config.data.num_negatives = 3
    config.data.query_max_length = 32
    config.data.passage_max_length = 48
    config.loss.variant = "in_batch"
    config.loss.temperature = 0.05
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 20
    config.train.steps = steps
    config.train.log_every = 20
    config.train.checkpoint_every = steps
    return config


def run_demo(workdir: str | Path, seed: int = 0, steps: int = 600) -> dict[str, Any]:
    workdir = Path(workdir).absolute()
    if workdir.exists() and any(workdir.iterdir()):
        raise UserInputError(
            f"{workdir}: already exists and is not empty; choose another --workdir"
        )
    task = make_task(seed)
    data_dir = write_task(task, workdir / "data")
    held_out = load_beir(data_dir / "eval", "test")
    texts = [r["query"] for r in task.train_records] + list(task.corpus.values())
    texts += [p["text"] for r in task.train_records for p in r["positives"]]
    texts += [task.instruction] * 10  # so the query prefix is a few tokens, not characters
    tokenizer = train_tokenizer(texts)
    tokenizer.save_pretrained(str(workdir / "tokenizer"))
    config = demo_config(data_dir, workdir / "tokenizer", len(tokenizer), steps)
    mcfg = model_config(config)
    pooling = PoolingSettings(mode=config.model.pooling)
    print(
        f"synthetic task: {len(task.train_records)} training queries, held-out "
        f"{len(task.queries)} queries over {len(task.corpus)} documents (no query shares a "
        "word with its document)"
    )
    print(f"model: bidirectional Llama, {mcfg.num_params():,} params, trained from scratch")
    # The same initial params the training run starts from (same seed, same init).
    init = jax.device_get(init_params(mcfg, jax.random.PRNGKey(config.seed)))
    untrained = Encoder(mcfg, init, tokenizer, pooling)
    before = evaluate_retrieval(untrained, held_out, task.instruction, ks=(10,))
    result = train(config, workdir / "run")
    trained = Encoder(mcfg, jax.device_get(result.params), tokenizer, pooling)
    after = evaluate_retrieval(trained, held_out, task.instruction, ks=(10,))
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    print(f"\ntraining loss {first:.3f} → {last:.3f} over {result.final_step} steps")
    print(f"\n{'held-out metric':<16}{'before':>10}{'after':>10}")
    for name in ("ndcg_at_10", "recall_at_10"):
        label = name.replace("_at_", "@").replace("ndcg", "nDCG").replace("recall", "Recall")
        print(f"{label:<16}{before[name]:>10.4f}{after[name]:>10.4f}")
    print(f"\nworkdir: {workdir}  (metrics: {workdir / 'run' / 'metrics.jsonl'})")
    return {"before": before, "after": after, "history": result.history}
