"""`jaxembed eval`: retrieval metrics of a model on a BEIR split, or of a run file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxembed.cli.common import parse_mesh


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    ev.add_argument("--mesh", type=parse_mesh, default=(-1, 1, 1), help="DATA,FSDP,TENSOR")
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
    ev.set_defaults(func=run, check=check_args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def run(args: argparse.Namespace) -> None:
    import json

    from jaxembed import evaluate
    from jaxembed.io_utils import atomic_file, check_output_directories

    run_path = args.run_output or str(Path(args.output).with_suffix(".trec"))
    check_output_directories(args.output, *([] if args.run else [run_path]))
    if args.run:
        outcome = evaluate.evaluate_run_file(args.run, args.qrels, args.split, args.k)
        missing = outcome.missing_queries
        if missing:
            print(
                f"warning: the run answers no documents for {len(missing)} judged queries "
                f"(e.g. {missing[0]!r}); they are not averaged, as in trec_eval",
                file=sys.stderr,
            )
    else:
        from jaxembed.sharding import make_mesh

        outcome = evaluate.evaluate_model(
            args.model,
            args.data,
            args.split,
            ks=args.k,
            depth=args.depth,
            run_output=run_path,
            instruction=args.instruction,
            batch_size=args.batch_size,
            max_length=args.max_length,
            dtype=args.dtype,
            mesh=make_mesh(args.mesh),
            save_embeddings_to=args.save_embeddings,
            show_progress=not args.quiet,
        )
    with atomic_file(args.output) as tmp:
        tmp.write_text(json.dumps(outcome.result, indent=2) + "\n", encoding="utf-8")
    scores = outcome.scores
    shown = [f"{m}@{k}" for m in ("ndcg", "recall") for k in (10, 100) if k in set(args.k)]
    print("  ".join(f"{name} {scores[name.replace('@', '_at_')]:.5f}" for name in shown))
    print(f"wrote {args.output}" + ("" if args.run else f" and the run {run_path}"))
