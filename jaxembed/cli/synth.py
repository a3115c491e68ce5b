"""`jaxembed synth`: synthetic training data from OpenAI-compatible LLM servers."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxembed.errors import UserInputError

STRATEGIES = ("seed_corpus", "from_scratch", "classification")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate training data (queries, triplets, classification) with LLM servers",
        description="Ask one or more OpenAI-compatible servers (vLLM, NIM, llama.cpp, "
        "`transformers serve`) for training records; resumable: rerun the same command to "
        "continue an interrupted run.",
    )
    p.add_argument("--strategy", default="seed_corpus", choices=STRATEGIES)
    p.add_argument(
        "--endpoint", action="append", required=True, metavar="URL[,model=NAME][,weight=W]",
        help="an OpenAI base URL (e.g. http://127.0.0.1:8000/v1); repeat to mix models, "
        "each item's endpoint drawn by weight",
    )  # fmt: skip
    p.add_argument(
        "--task-endpoint", action="append", metavar="URL[,model=NAME][,weight=W]",
        help="two-step strategies: ask step 1 (the task lists) of these endpoints and step 2 "
        "of --endpoint (default: --endpoint for both)",
    )  # fmt: skip
    p.add_argument(
        "--tasks", metavar="FILE",
        help="two-step strategies: the tasks (one a line, or JSON {\"tasks\": [...]}) in "
        "place of step 1's brainstorm",
    )  # fmt: skip
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var with the API key")
    p.add_argument("--count", type=int, required=True, help="records to ask for")
    p.add_argument("--output", required=True, help="training JSONL (sidecar files beside it)")
    p.add_argument(
        "--corpus", help="seed_corpus: a BEIR corpus.jsonl (or its dataset directory) to sample"
    )
    p.add_argument("--queries-per-doc", type=int, default=1)
    p.add_argument("--max-document-words", type=int, default=400, help="seed_corpus: cut to")
    p.add_argument("--instruction", default="", help="seed_corpus: the records' instruction")
    p.add_argument("--num-tasks", type=int, default=20, help="two-step strategies: step 1")
    p.add_argument("--tasks-per-request", type=int, default=10)
    p.add_argument("--num-misleading", type=int, default=2, help="classification")
    p.add_argument("--language", default="English", help="from_scratch")
    p.add_argument(
        "--prompt", action="append", default=[], metavar="STEP=FILE",
        help="a prompt template file in place of the built-in one for STEP",
    )  # fmt: skip
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--rate", type=float, default=0.0, help="requests/s cap (0 = none)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=4, help="per request, on network/5xx/429")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay (doubles)")
    p.add_argument("--parse-retries", type=int, default=2, help="re-asks for a bad answer")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--no-json-mode", action="store_true", help="never send response_format")
    p.add_argument("--min-query-words", type=int, default=2)
    p.add_argument("--max-query-words", type=int, default=128)
    p.add_argument(
        "--near-duplicate", type=float, default=0.85,
        help="drop queries this similar (5-gram Jaccard, MinHash) to a kept one; 0 = off",
    )  # fmt: skip
    p.add_argument(
        "--teacher", default=None,
        help="seed_corpus: keep a query only if this embedder (a local HF directory) "
        "ranks its seed document in the top --teacher-top-k (Gecko's round trip)",
    )  # fmt: skip
    p.add_argument("--teacher-top-k", type=int, default=10)
    p.add_argument("--teacher-max-length", type=int, default=256)
    p.add_argument("--batch", type=int, default=16, help="items per atomic commit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from jaxembed.synth.client import ClientSettings
    from jaxembed.synth.endpoints import api_key, parse_endpoint
    from jaxembed.synth.filters import FilterSettings
    from jaxembed.synth.runner import RunOptions, run_synth

    positive = ("count", "concurrency", "batch", "num_tasks", "tasks_per_request",
                "queries_per_doc", "max_document_words", "num_misleading",
                "max_tokens")  # fmt: skip
    for name in positive:
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.retries < 0 or args.parse_retries < 0 or args.timeout <= 0 or args.rate < 0:
        raise UserInputError(
            "--retries and --parse-retries must be >= 0, --timeout > 0 and --rate >= 0"
        )
    if not 0 <= args.near_duplicate < 1:
        raise UserInputError(f"--near-duplicate {args.near_duplicate}: must be in [0, 1)")
    endpoints = [parse_endpoint(spec) for spec in args.endpoint]
    task_endpoints = [parse_endpoint(spec) for spec in args.task_endpoint or ()]
    strategy = build_strategy(args)
    if task_endpoints and strategy.task_step is None:
        raise UserInputError(f"--task-endpoint: the {args.strategy} strategy has no step 1")
    tasks = None
    if args.tasks is not None:
        if strategy.task_step is None:
            raise UserInputError(f"--tasks: the {args.strategy} strategy has no step 1")
        if task_endpoints:
            raise UserInputError("--tasks replaces step 1: drop --task-endpoint")
        from jaxembed.synth.task_list import read_task_list

        tasks = tuple(read_task_list(args.tasks))
    templates = build_templates(strategy, args.prompt)
    client = ClientSettings(
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        retries=args.retries,
        backoff_s=args.backoff,
        requests_per_second=args.rate,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        json_mode=not args.no_json_mode,
    )
    options = RunOptions(
        count=args.count,
        num_tasks=args.num_tasks,
        seed=args.seed,
        batch=args.batch,
        parse_retries=args.parse_retries,
        quiet=args.quiet,
        tasks=tasks,
    )
    filters = FilterSettings(args.min_query_words, args.max_query_words, args.near_duplicate)
    report = run_synth(
        strategy, templates, endpoints, client, api_key(args.api_key_env), args.output,
        options, filters, round_trip(args, strategy), task_endpoints,
    )  # fmt: skip
    totals = report["totals"]
    print(
        f"synth: {totals.get('kept', 0)} records kept, {totals.get('rejected', 0)} rejected, "
        f"{totals.get('filtered', 0)} filtered, in {args.output} (report: "
        f"{args.output}.report.json)"
    )


def round_trip(args: argparse.Namespace, strategy):
    if args.teacher is None:
        return None
    if args.strategy != "seed_corpus":
        raise UserInputError("--teacher checks a query against its seed document: seed_corpus only")
    if args.teacher_top_k < 1:
        raise UserInputError(f"--teacher-top-k {args.teacher_top_k}: must be >= 1")
    from jaxembed.synth.round_trip import RoundTrip

    return RoundTrip(
        args.teacher, strategy.corpus, args.teacher_top_k, args.teacher_max_length,
        show_progress=not args.quiet,
    )  # fmt: skip


def build_strategy(args: argparse.Namespace):
    from jaxembed.synth import strategies

    if args.strategy == "seed_corpus":
        if not args.corpus:
            raise UserInputError("--strategy seed_corpus needs --corpus (a BEIR corpus.jsonl)")
        from jaxembed.data.formats import read_beir_corpus

        corpus_path = Path(args.corpus)
        if (corpus_path / "corpus.jsonl").is_file():  # a BEIR dataset directory
            corpus_path = corpus_path / "corpus.jsonl"
        corpus = read_beir_corpus(corpus_path)
        if not corpus:
            raise UserInputError(f"{corpus_path}: no documents")
        return strategies.SeedCorpus(
            corpus, args.instruction, args.queries_per_doc, args.max_document_words
        )
    if args.strategy == "from_scratch":
        return strategies.FromScratch(args.tasks_per_request, args.language)
    return strategies.Classification(args.tasks_per_request, args.num_misleading)


def build_templates(strategy, overrides: list[str]) -> dict:
    from jaxembed.synth import templates

    steps = list(strategy.placeholders)
    chosen = {}
    for spec in overrides:
        step, sep, path = spec.partition("=")
        if not sep or step not in steps:
            raise UserInputError(
                f"--prompt {spec!r}: expected STEP=FILE with STEP one of {', '.join(steps)}"
            )
        chosen[step] = templates.from_file(step, path, strategy.placeholders[step])
    for step in steps:
        if step not in chosen:
            chosen[step] = templates.builtin(step)
            templates.check(chosen[step].text, strategy.placeholders[step], chosen[step].version)
    return chosen
