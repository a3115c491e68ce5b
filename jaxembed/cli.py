"""The `jaxembed` command line."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from jaxembed.errors import RunStopped, UserInputError, first_line
from jaxembed.host_memory import retain_freed_memory
from jaxembed.platforms import prefer_cpu_without_accelerators


def _parse_mesh(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected DATA,FSDP,TENSOR, e.g. -1,1,1")
    return sizes  # type: ignore[return-value]


def cmd_encode(args: argparse.Namespace) -> None:
    import numpy as np

    from jaxembed.data.formats import read_text_column
    from jaxembed.io_utils import atomic_file, check_output_directories
    from jaxembed.models.encoder import Encoder
    from jaxembed.sharding import make_mesh

    check_output_directories(args.output)
    texts = read_text_column(args.input)
    mesh = make_mesh(args.mesh)
    encoder = Encoder.from_pretrained(args.model, mesh=mesh, dtype=args.dtype)
    embeddings = encoder.encode(
        texts,
        instruction=args.instruction,
        batch_size=args.batch_size,
        max_length=args.max_length,
        show_progress=not args.quiet,
    )
    with atomic_file(args.output) as tmp, open(tmp, "wb") as f:
        np.save(f, embeddings.astype(np.float32))
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.output}")


def cmd_demo(args: argparse.Namespace) -> None:
    import time

    from jaxembed.demo import run_demo

    workdir = args.workdir or f"workdirs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    run_demo(workdir, seed=args.seed, steps=args.steps)


def cmd_train(args: argparse.Namespace) -> None:
    from jaxembed import distributed
    from jaxembed.checkpoint import describe_last_complete
    from jaxembed.config import apply_overrides, default_config, load_config
    from jaxembed.peers import watch_peers
    from jaxembed.train.loop import train

    config = load_config(args.config) if args.config else default_config()
    apply_overrides(config, args.overrides)
    distributed.initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        timeout_s=args.init_timeout,
        launcher=args.launcher,
    )
    watch = watch_peers(
        args.peer_timeout, lambda: describe_last_complete(Path(args.workdir) / "checkpoints")
    )
    try:
        result = train(config, args.workdir)
    except BaseException as e:
        if watch is not None:
            # JAX's exit-time shutdown barrier would wait for peers that may never arrive.
            args.exit_at_once = True
            if not isinstance(e, UserInputError):
                watch.settle()  # a lost peer is reported (and exits) from the watch thread
            watch.finish(f"{type(e).__name__}: {str(e).strip()[:300]}")
        raise
    if watch is not None:
        watch.finish()
    status = "stopped by SIGTERM at" if result.preempted else "finished at"
    if distributed.is_main_process():
        print(f"training {status} step {result.final_step}; workdir {args.workdir}")


def cmd_plan(args: argparse.Namespace) -> None:
    import json

    from jaxembed.config import apply_overrides, load_config
    from jaxembed.io_utils import atomic_file
    from jaxembed.plan import format_report, plan

    config = load_config(args.config)
    apply_overrides(config, args.overrides)
    report = plan(config, args.topology, label=args.config)
    print(format_report(report))
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def cmd_eval(args: argparse.Namespace) -> None:
    import json
    import time

    from jaxembed import evaluate
    from jaxembed.data.formats import read_beir_qrels
    from jaxembed.data.trec_run import read_trec_run, write_trec_run
    from jaxembed.io_utils import atomic_file, check_output_directories
    from jaxembed.metrics import evaluate_run

    started = time.perf_counter()
    ks = tuple(sorted(set(args.k)))
    run_path = args.run_output or str(Path(args.output).with_suffix(".trec"))
    check_output_directories(args.output, *([] if args.run else [run_path]))
    if args.run:
        run, qrels = read_trec_run(args.run), read_beir_qrels(args.qrels)
        scored = evaluate.score_run(qrels, run, ks)
        scores, missing = scored["scores"], scored["missing_queries"]
        if missing:
            print(
                f"warning: the run answers no documents for {len(missing)} judged queries "
                f"(e.g. {missing[0]!r}); they are not averaged, as in trec_eval",
                file=sys.stderr,
            )
        task, extra = Path(args.qrels).stem, {"run": args.run, "qrels": args.qrels}
    else:
        from jaxembed.models.encoder import Encoder
        from jaxembed.sharding import make_mesh

        data = evaluate.load_eval_split(args.data, args.split)
        encoder = Encoder.from_pretrained(args.model, mesh=make_mesh(args.mesh), dtype=args.dtype)
        embeddings = evaluate.encode_split(
            encoder,
            data,
            args.instruction,
            all_queries=args.save_embeddings is not None,
            batch_size=args.batch_size,
            max_length=args.max_length,
            show_progress=not args.quiet,
        )
        judged = [q for q in data.queries if q in data.qrels]
        run = evaluate.search_run(embeddings, judged, depth=args.depth)
        if args.save_embeddings:
            evaluate.save_embeddings(args.save_embeddings, embeddings)
        scores = evaluate_run(data.qrels, run, ks)
        write_trec_run(run_path, run)
        task = Path(args.data).resolve().name
        extra = {
            "model": args.model,
            "data": args.data,
            "instruction": args.instruction,
            "max_length": args.max_length or encoder.max_length,
            "run": run_path,
        }
    result = evaluate.mteb_result(
        scores,
        task_name=task,
        split=args.split,
        evaluation_time=time.perf_counter() - started,
        extra=extra,
    )
    with atomic_file(args.output) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    shown = [f"{m}@{k}" for m in ("ndcg", "recall") for k in (10, 100) if k in ks]
    print("  ".join(f"{name} {scores[name.replace('@', '_at_')]:.5f}" for name in shown))
    print(f"wrote {args.output}" + ("" if args.run else f" and the run {extra['run']}"))


MINING_METHODS = ("naive", "shift", "abs", "margin", "perc")


def cmd_mine(args: argparse.Namespace) -> None:
    from jaxembed.mining.inputs import load_beir_task, load_training_task
    from jaxembed.mining.methods import MiningConfig
    from jaxembed.mining.pipeline import default_report_path, run_mining
    from jaxembed.mining.search import IndexConfig

    if bool(args.train) == bool(args.queries or args.qrels):
        raise UserInputError("give either --queries and --qrels (BEIR) or --train (JSONL)")
    if not args.train and not (args.queries and args.qrels):
        raise UserInputError("--queries and --qrels go together")
    if bool(args.teacher) == bool(args.query_embeddings or args.corpus_embeddings):
        raise UserInputError(
            "give either --teacher DIR or --query-embeddings and --corpus-embeddings"
        )
    margin = args.margin
    if margin is None and args.method == "perc":
        margin = 0.95  # the paper's best TopK-PercPos setting
    config = MiningConfig(
        method=args.method,
        margin=margin,
        num_negatives=args.num_negatives,
        shift=args.shift,
        range_max=args.range_max,
        sampling=args.sampling,
        temperature=args.temperature,
        fewer=args.fewer,
        seed=args.seed,
    )
    index = IndexConfig(
        kind=args.index,
        corpus_chunk=args.corpus_chunk,
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        seed=args.seed,
    )
    if args.train:
        task = load_training_task(args.corpus, args.train, args.instruction or "")
    else:
        task = load_beir_task(args.corpus, args.queries, args.qrels, args.instruction or "")
    teacher_options = None
    if args.teacher:
        from jaxembed.sharding import make_mesh

        teacher_options = dict(
            batch_size=args.batch_size,
            max_length=args.max_length,
            dtype=args.dtype,
            mesh=make_mesh(args.mesh),
        )
    report = run_mining(
        task,
        config,
        args.output,
        index=index,
        report_path=args.report,
        query_embeddings=args.query_embeddings,
        corpus_embeddings=args.corpus_embeddings,
        teachers=args.teacher,
        teacher_options=teacher_options,
        query_block=args.query_block,
        show_progress=not args.quiet,
    )
    short = f", {report.short_queries} short of {config.num_negatives}"
    print(
        f"wrote {report.queries} queries with {report.negatives} negatives{short} to "
        f"{args.output}; report {args.report or default_report_path(args.output)}"
    )


def cmd_convert_llama2c(args: argparse.Namespace) -> None:
    from jaxembed import llama2c

    out = llama2c.convert(args.checkpoint, args.tokenizer, args.output)
    print(f"wrote Hugging Face Llama directory {out}")


def cmd_rerank(args: argparse.Namespace) -> None:
    from jaxembed.rerank import format_table, rerank_files

    result = rerank_files(
        args.model,
        args.data,
        args.run,
        args.output,
        split=args.split,
        top_k=args.top_k,
        metrics_output=args.metrics_output,
        batch_size=args.batch_size,
        max_length=args.max_length,
        query_max_length=args.query_max_length,
        show_progress=not args.quiet,
    )
    if result.short_queries:
        print(f"{result.short_queries} queries have fewer than {args.top_k} documents in the run; "
              "all of theirs were reranked")  # fmt: skip
    print(f"reranked the top {args.top_k} of {len(result.reranked)} queries ({result.pairs} pairs)")
    print(format_table(result))
    print(f"wrote {args.output}")


def cmd_export(args: argparse.Namespace) -> None:
    from jaxembed import tasks
    from jaxembed.run_steps import load_run_config

    common = dict(
        step=args.step,
        dtype=args.dtype,
        overwrite=args.overwrite,
        config_spec=args.config,
        overrides=args.overrides,
    )
    if args.adapter:
        from jaxembed.peft_export import export_adapter

        del common["dtype"]  # adapters are written in float32, as PEFT trains them
        out = export_adapter(args.workdir, args.output, **common)
        print(f"wrote PEFT LoRA adapter {out}")
        return
    task = tasks.get(load_run_config(args.workdir, args.config, args.overrides).model.task)
    out = task.export(args.workdir, args.output, max_shard_size=args.max_shard_size, **common)
    kind = "" if task.name == "embedding" else f"{task.name} "
    print(f"wrote Hugging Face {kind}directory {out}")


def cmd_merge(args: argparse.Namespace) -> None:
    from jaxembed.merge import merge, parse_weights

    out = merge(
        args.inputs,
        args.output,
        method=args.method,
        weights=parse_weights(args.weights),
        t=args.t,
        density=args.density,
        lam=args.lam,
        base=args.base,
        dtype=args.dtype,
        overwrite=args.overwrite,
        orbax_output=args.orbax_output,
        config_spec=args.config,
        overrides=args.overrides,
        max_shard_size=args.max_shard_size,
    )
    print(f"wrote merged Hugging Face directory {out}")


def _check_eval_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    by_model = args.model is not None or args.data is not None
    by_run = args.run is not None or args.qrels is not None
    if by_model == by_run:
        parser.error("eval: give either --model and --data, or --run and --qrels")
    if by_model and not (args.model and args.data):
        parser.error("eval: --model and --data go together")
    if by_run and not (args.run and args.qrels):
        parser.error("eval: --run and --qrels go together")
    if min(args.k) < 1 or args.depth < 1:
        parser.error("eval: --k values and --depth must be >= 1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxembed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="embed a JSONL file of {'text': ...} lines")
    enc.add_argument("--model", required=True, help="local HF directory (llama/mistral/qwen2)")
    enc.add_argument("--input", required=True, help="JSONL, one {'text': str} per line")
    enc.add_argument("--output", required=True, help=".npy file of float32 embeddings")
    enc.add_argument("--instruction", default=None, help="query task; adds the Instruct prefix")
    enc.add_argument("--batch-size", type=int, default=32)
    enc.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text (default: the model's max_seq_length, else 512)",
    )
    enc.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: float32)")
    enc.add_argument("--mesh", type=_parse_mesh, default=(-1, 1, 1), help="DATA,FSDP,TENSOR")
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=cmd_encode)

    demo = sub.add_parser("demo", help="offline end-to-end run on a built-in default")
    demo.add_argument("--workdir", default=None, help="default: workdirs/demo-DATE-TIME")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=600)
    demo.set_defaults(func=cmd_demo)

    tr = sub.add_parser(
        "train",
        help="train a bi-encoder",
        description="Train from a config file; override any key with --config.KEY=VALUE.",
    )
    tr.add_argument("--config", default=None, help="configs/NAME.py[:ARG] (default: tiny)")
    tr.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard")
    tr.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process)")
    tr.add_argument("--num-processes", type=int, default=None)
    tr.add_argument("--process-id", type=int, default=None)
    tr.add_argument(
        "--launcher",
        choices=("auto", "explicit", "slurm", "tpu", "none"),
        default="auto",
        help="where multi-process settings come from (auto: flags, SLURM, TPU VM, else none)",
    )
    tr.add_argument(
        "--init-timeout", type=int, default=300, help="seconds to wait for every process"
    )
    tr.add_argument(
        "--peer-timeout",
        type=float,
        default=30.0,
        help="multi-process: seconds without a peer's heartbeat before the run stops",
    )
    tr.set_defaults(func=cmd_train)

    pl = sub.add_parser(
        "plan",
        help="compile the train step for a TPU slice from a CPU: HBM per chip, fit, FLOPs, MFU",
        description="Ahead-of-time compile of the real train step with abstract inputs (no "
        "weights) for a TPU topology; needs the [tpu] extra (libtpu). Override any config key "
        "with --config.KEY=VALUE.",
    )
    pl.add_argument("--config", required=True, help="configs/NAME.py[:VARIANT]")
    pl.add_argument("--topology", required=True, help="e.g. v5p-128, v5p:4x4x4, v6e-8, v4-32")
    pl.add_argument("--json", default=None, help="also write the report as JSON here")
    pl.set_defaults(func=cmd_plan)

    ev = sub.add_parser(
        "eval",
        help="retrieval metrics (MTEB conventions) of a model on a BEIR split, or of a run file",
        description="Either --model DIR --data BEIR_DIR, or --run RUN.trec --qrels QRELS.tsv.",
    )
    ev.add_argument("--model", help="local HF directory (llama/mistral/qwen2/bert)")
    ev.add_argument("--data", help="BEIR directory: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    ev.add_argument("--split", default="test")
    ev.add_argument("--instruction", default=None, help="query task; adds the Instruct prefix")
    ev.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text (default: the model's max_seq_length, else 512)",
    )
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--depth", type=int, default=1000, help="documents retrieved per query")
    ev.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: float32)")
    ev.add_argument("--mesh", type=_parse_mesh, default=(-1, 1, 1), help="DATA,FSDP,TENSOR")
    ev.add_argument("--run", help="score this TREC run file instead of a model")
    ev.add_argument("--qrels", help="qrels TSV for --run (query-id, corpus-id, score)")
    ev.add_argument("--run-output", default=None, help="TREC run to write (default: OUTPUT.trec)")
    ev.add_argument(
        "--save-embeddings",
        default=None,
        metavar="DIR",
        help="also write DIR/queries.npy and DIR/corpus.npy (all queries, file order)",
    )
    ev.add_argument("--k", type=int, nargs="+", default=[1, 3, 5, 10, 20, 100, 1000])
    ev.add_argument("--output", required=True, help="metrics JSON, shaped like MTEB's results")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval, check=_check_eval_args)

    mine = sub.add_parser(
        "mine",
        help="positive-aware hard-negative mining (NV-Retriever) with faiss",
        description="Mine hard negatives for BEIR queries (--queries/--qrels) or a training "
        "JSONL file (--train) with a teacher model or precomputed embeddings.",
    )
    mine.add_argument("--corpus", required=True, help="BEIR corpus.jsonl")
    mine.add_argument("--queries", help="BEIR queries.jsonl (with --qrels)")
    mine.add_argument("--qrels", help="qrels .tsv: judged queries are mined, score > 0 = positive")
    mine.add_argument("--train", help="training JSONL whose positives carry corpus ids")
    mine.add_argument(
        "--teacher", action="append", default=[], help="local HF directory; repeat to average"
    )
    mine.add_argument(
        "--query-embeddings", action="append", default=[], help=".npy, row i = query line i"
    )
    mine.add_argument(
        "--corpus-embeddings", action="append", default=[], help=".npy, row i = corpus line i"
    )
    mine.add_argument("--instruction", default=None, help="query task (a --train record's wins)")
    mine.add_argument("--method", default="perc", choices=MINING_METHODS)
    mine.add_argument(
        "--margin", type=float, default=None, help="t (abs), m (margin) or p (perc, default 0.95)"
    )
    mine.add_argument("--num-negatives", type=int, default=4)
    mine.add_argument("--shift", type=int, default=0, help="skip this many top survivors")
    mine.add_argument(
        "--range-max", type=int, default=None, help="survivors eligible (default shift + 10 N)"
    )
    mine.add_argument("--sampling", default="top", choices=("top", "uniform", "softmax"))
    mine.add_argument("--temperature", type=float, default=1.0, help="softmax sampling")
    mine.add_argument(
        "--fewer", default="keep", choices=("keep", "fill"), help="when fewer than N survive"
    )
    mine.add_argument("--seed", type=int, default=0)
    mine.add_argument("--index", default="flat", choices=("flat", "ivf", "hnsw"))
    mine.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 sqrt(n))")
    mine.add_argument("--nprobe", type=int, default=32)
    mine.add_argument("--hnsw-m", type=int, default=32)
    mine.add_argument("--ef-search", type=int, default=256)
    mine.add_argument("--corpus-chunk", type=int, default=None, help="rows (default 64 MiB)")
    mine.add_argument("--query-block", type=int, default=16384, help="queries per block")
    mine.add_argument("--batch-size", type=int, default=32, help="teacher encoding")
    mine.add_argument("--max-length", type=int, default=512, help="teacher encoding")
    mine.add_argument("--dtype", default=None, help="teacher: float32 or bfloat16")
    mine.add_argument("--mesh", type=_parse_mesh, default=(-1, 1, 1), help="DATA,FSDP,TENSOR")
    mine.add_argument("--output", required=True, help="training JSONL to write")
    mine.add_argument("--report", default=None, help="JSON report (default: OUTPUT.report.json)")
    mine.add_argument("--quiet", action="store_true", help="no progress bars")
    mine.set_defaults(func=cmd_mine)

    conv = sub.add_parser("convert-llama2c", help="llama2.c checkpoint + tokenizer → HF dir")
    conv.add_argument("--checkpoint", required=True)
    conv.add_argument("--tokenizer", required=True)
    conv.add_argument("--output", required=True)
    conv.set_defaults(func=cmd_convert_llama2c)

    rr = sub.add_parser("rerank", help="rerank the top-k of a retrieval run; metrics before/after")
    rr.add_argument("--model", required=True, help="exported reranker (HF directory)")
    rr.add_argument("--data", required=True, help="BEIR-layout directory")
    rr.add_argument("--split", default="test")
    rr.add_argument("--run", required=True, help="TREC run file (e.g. from `jaxembed eval`)")
    rr.add_argument("--top-k", type=int, default=100, help="documents reranked per query")
    rr.add_argument("--output", required=True, help="reranked TREC run to write")
    rr.add_argument("--metrics-output", default=None, help="default: OUTPUT.metrics.json")
    rr.add_argument("--batch-size", type=int, default=32)
    rr.add_argument("--max-length", type=int, default=None, help="pair length (default: model's)")
    rr.add_argument("--query-max-length", type=int, default=None)
    rr.add_argument("--quiet", action="store_true")
    rr.set_defaults(func=cmd_rerank)

    run_config = "the training run's config (default: WORKDIR/config.json); with --config.KEY=V"
    ex = sub.add_parser("export", help="Orbax training checkpoint → Hugging Face directory")
    ex.add_argument("--workdir", required=True, help="training workdir (checkpoints/)")
    ex.add_argument("--step", default="latest", help="checkpoint step, or 'latest'")
    ex.add_argument("--output", required=True, help="HF directory to write")
    ex.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output")
    ex.add_argument("--config", default=None, help=run_config)
    ex.add_argument("--max-shard-size", default="5GB", help="split weights above this size")
    ex.add_argument(
        "--adapter",
        action="store_true",
        help="LoRA runs: write the adapters as a PEFT adapter directory instead of the model "
        "with the adapters merged into its weights (the default)",
    )
    ex.set_defaults(func=cmd_export)

    mg = sub.add_parser("merge", help="merge checkpoints (HF dirs or Orbax workdirs/steps)")
    mg.add_argument(
        "--inputs", nargs="+", required=True, help="HF dir, WORKDIR or WORKDIR/checkpoints/N"
    )
    mg.add_argument("--method", default="uniform", choices=("uniform", "weighted", "slerp", "ties"))
    mg.add_argument("--weights", nargs="+", default=None, help="one per input (weighted, ties)")
    mg.add_argument("--t", type=float, default=0.5, help="slerp: 0 = first input, 1 = second")
    mg.add_argument("--base", default=None, help="ties: the model task vectors are taken from")
    mg.add_argument(
        "--density", type=float, default=1.0, help="ties: fraction of each task vector kept"
    )
    mg.add_argument("--lambda", dest="lam", type=float, default=1.0, help="ties: delta scale")
    mg.add_argument("--output", required=True, help="HF directory to write")
    mg.add_argument("--orbax-output", default=None, help="also write an Orbax checkpoint here")
    mg.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16"), help="default: inputs'"
    )
    mg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    mg.add_argument("--config", default=None, help=run_config + " (Orbax inputs)")
    mg.add_argument("--max-shard-size", default="5GB", help="split weights above this size")
    mg.set_defaults(func=cmd_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --config.KEY=VALUE overrides are collected here; argparse sees the rest.
    overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
    parser = build_parser()
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    if overrides and args.command not in ("train", "export", "merge", "plan"):
        print(
            f"jaxembed {args.command}: error: --config.* is only for train, export, merge and plan",
            file=sys.stderr,
        )
        return 2
    args.overrides = overrides
    retain_freed_memory()  # before JAX starts its threads; see host_memory.py
    prefer_cpu_without_accelerators()  # before JAX starts a backend; see platforms.py
    if getattr(args, "check", None):
        args.check(parser, args)
    code = run_reporting_errors(args.command, lambda: args.func(args))
    if code and getattr(args, "exit_at_once", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _hide_orbax_logs() -> None:
    """Orbax logs each failure of its background save threads (with tracebacks) before the
    error reaches jaxembed, which then reports it in one line; its routine notes say nothing
    a user acts on either. JAXEMBED_DEBUG=1 keeps them."""
    import logging

    from absl import logging as absl_logging  # its logger class names the real caller

    def not_orbax(record: logging.LogRecord) -> bool:
        return f"{os.sep}orbax{os.sep}" not in record.pathname

    absl_logging.get_absl_logger().addFilter(not_orbax)


def run_reporting_errors(command: str, body: Callable[[], object]) -> int:
    """Run a command; every failure a user can reach is one line on stderr and an exit
    status (2 bad input, 1 a stopped run or an unexpected error, 130 interrupted). The
    traceback is shown only with JAXEMBED_DEBUG=1."""
    debug = os.environ.get("JAXEMBED_DEBUG", "") not in ("", "0")
    if not debug:
        _hide_orbax_logs()
    try:
        body()
        return 0
    except UserInputError as e:
        message, code = str(e), 2
    except RunStopped as e:
        message, code = str(e), 1
    except KeyboardInterrupt:
        message, code = "interrupted; outputs are written atomically, none was left half-done", 130
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        message, code = f"{where}{e.strerror or e}", 1
    except Exception as e:  # a bug or an unforeseen fault: still one line
        message = f"unexpected {first_line(e)}"
        if not debug:
            message += " (set JAXEMBED_DEBUG=1 for the traceback)"
        code = 1
    if debug:
        traceback.print_exc()
    print(f"jaxembed {command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
