"""`jaxembed rerank`: rerank the top-k of a retrieval run with a cross-encoder."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    rr.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
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
