"""`jaxembed mine`: positive-aware hard-negative mining."""

from __future__ import annotations

import argparse

from jaxembed.cli.common import parse_mesh
from jaxembed.errors import UserInputError
from jaxembed.mining.methods import FEWER, METHODS


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    mine.add_argument("--method", default="perc", choices=METHODS)
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
    mine.add_argument("--fewer", default="keep", choices=FEWER, help="when fewer than N survive")
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
    mine.add_argument("--mesh", type=parse_mesh, default=(-1, 1, 1), help="DATA,FSDP,TENSOR")
    mine.add_argument("--output", required=True, help="training JSONL to write")
    mine.add_argument("--report", default=None, help="JSON report (default: OUTPUT.report.json)")
    mine.add_argument("--quiet", action="store_true", help="no progress bars")
    mine.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
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
