"""`jaxembed demo`: the main job on a built-in default, offline, in a few minutes on a CPU.

It writes a synthetic paraphrase-retrieval task (see `jaxembed.synthetic`), trains a BPE
tokenizer on it, trains a tiny bidirectional Llama from scratch with InfoNCE through the
real `jaxembed train` loop, and reports held-out nDCG@10 and Recall@10 before and after.
Then a reranking stage: a cross-encoder warm-started from the exported retriever is trained
with listwise InfoNCE over each training query's positive and 3 negatives sampled (per visit)
from the retriever's own top 20 for that query (the distribution it reranks at test time),
reranks the retriever's top 20 of every held-out query, and the table shows
retriever vs retriever+reranker nDCG@10.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

from jaxembed.config import default_config
from jaxembed.data.formats import BeirData, load_beir
from jaxembed.data.records import Passage
from jaxembed.errors import UserInputError
from jaxembed.evaluate import evaluate_retrieval, retrieve
from jaxembed.hf_export import export
from jaxembed.io_utils import atomic_file
from jaxembed.metrics import evaluate_run, ranked
from jaxembed.models.architectures import init_params
from jaxembed.models.build import model_config, pooling_mode
from jaxembed.models.encoder import Encoder, PoolingSettings
from jaxembed.models.reranker import Reranker
from jaxembed.rerank import rerank_run
from jaxembed.synthetic import make_task, write_task
from jaxembed.train.loop import train
from jaxembed.train.settings import run_settings


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


RERANK_TOP_K = 20
RESULTS_NAME = "results.json"  # held-out nDCG/Recall before, after, and after reranking
PAIR_TEMPLATE = "{query} | {passage}"  # short: the default's words are byte-level tokens here


def mine_training_negatives(encoder: Encoder, task, path: Path) -> Path:
    """Training JSONL whose negatives are the retriever's top RERANK_TOP_K (minus the
    positive) for each training query: the synthetic "related" negatives teach a shortcut
    (they often repeat a query word, which a positive never does) that fails on retrieved
    candidates."""
    records = task.train_records
    corpus = {r["positives"][0]["id"]: Passage(**r["positives"][0]) for r in records}
    queries = {f"tq{i}": r["query"] for i, r in enumerate(records)}
    qrels = {f"tq{i}": {r["positives"][0]["id"]: 1} for i, r in enumerate(records)}
    run = retrieve(encoder, BeirData(corpus, queries, qrels), task.instruction, depth=RERANK_TOP_K)
    with open(path, "w") as f:
        for i, record in enumerate(records):
            pos = record["positives"][0]["id"]
            hits = [d for d in ranked(run[f"tq{i}"]) if d != pos]
            negatives = [{"id": d, "text": corpus[d].text} for d in hits]
            f.write(json.dumps({**record, "negatives": negatives}) + "\n")
    return path


def reranker_config(train_file: Path, retriever_dir: Path, steps: int):
    """A cross-encoder starting from the trained retriever's backbone (a new score head)."""
    config = default_config()
    config.model.task = "reranker"
    config.model.init = "hf"
    config.model.hf_path = str(retriever_dir)
    config.data.train_files = (str(train_file),)
    config.data.pair_template = PAIR_TEMPLATE
    config.data.global_batch_size = 16
    config.data.num_negatives = 3
    config.data.query_max_length = 32
    config.data.passage_max_length = 40  # the joined pair
    config.loss.ranking = "listwise"
    # A sharp softmax: with a new head of std 0.02 and temperature 1 the backbone's gradient
    # is tiny and the loss sits at log(4) for hundreds of steps.
    config.loss.ranking_temperature = 0.05
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 20
    config.train.steps = steps
    config.train.log_every = 20
    config.train.checkpoint_every = steps
    return config


def rerank_stage(workdir: Path, data_dir: Path, held_out, encoder: Encoder, task, steps: int):
    """Train the reranker and rerank the retriever's top RERANK_TOP_K; both nDCG@10s."""
    retriever_dir = export(workdir / "run", workdir / "retriever_hf")
    mined = mine_training_negatives(encoder, task, data_dir / "rerank_train.jsonl")
    config = reranker_config(mined, retriever_dir, steps)
    result = train(run_settings(config, jax.device_count()), workdir / "rerank_run")
    run = retrieve(encoder, held_out, task.instruction, depth=RERANK_TOP_K)
    mcfg = model_config(config)
    tokenizer = encoder.tokenizer
    reranker = Reranker(
        mcfg, jax.device_get(result.params), tokenizer, template=config.data.pair_template
    )
    reranked = rerank_run(
        reranker,
        held_out,
        run,
        top_k=RERANK_TOP_K,
        max_length=config.data.passage_max_length,
        ks=(10,),
        show_progress=False,
    )
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    print(f"reranker training loss {first:.3f} → {last:.3f} over {result.final_step} steps")
    return {
        "retriever": evaluate_run(held_out.qrels, run, ks=(10,)),
        "reranked": reranked.after,
        "history": result.history,
    }


def run_demo(
    workdir: str | Path, seed: int = 0, steps: int = 600, rerank_steps: int = 600
) -> dict[str, Any]:
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
    pooling = PoolingSettings(mode=pooling_mode(config))
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
    result = train(run_settings(config, jax.device_count()), workdir / "run")
    trained = Encoder(mcfg, jax.device_get(result.params), tokenizer, pooling)
    after = evaluate_retrieval(trained, held_out, task.instruction, ks=(10,))
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    print(f"\ntraining loss {first:.3f} → {last:.3f} over {result.final_step} steps")
    print(f"\n{'held-out metric':<16}{'before':>10}{'after':>10}")
    for name in ("ndcg_at_10", "recall_at_10"):
        label = name.replace("_at_", "@").replace("ndcg", "nDCG").replace("recall", "Recall")
        print(f"{label:<16}{before[name]:>10.4f}{after[name]:>10.4f}")
    out = {"before": before, "after": after, "history": result.history}
    if rerank_steps:
        print("\nreranking stage: cross-encoder from the retriever's backbone")
        stage = rerank_stage(workdir, data_dir, held_out, trained, task, rerank_steps)
        print(f"\n{'held-out nDCG@10':<30}{'value':>10}")
        print(f"{'retriever':<30}{stage['retriever']['ndcg_at_10']:>10.4f}")
        label = f"retriever + reranker (top {RERANK_TOP_K})"
        print(f"{label:<30}{stage['reranked']['ndcg_at_10']:>10.4f}")
        out["rerank"] = stage
    summary = {"retriever_before": before, "retriever_after": after}
    if rerank_steps:
        summary["retriever_top_k"] = out["rerank"]["retriever"]
        summary["reranked"] = out["rerank"]["reranked"]
    # The held-out figures as data, so CI (and users) can check them without parsing the table.
    with atomic_file(workdir / RESULTS_NAME) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"\nworkdir: {workdir}  (metrics: {workdir / 'run' / 'metrics.jsonl'}, "
        f"held-out results: {workdir / RESULTS_NAME})"
    )
    return out
