"""`jaxembed data convert`: classification tables and sentence pairs to training JSONL."""

from __future__ import annotations

import argparse
import json

from jaxembed.errors import UserInputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="convert public dataset shapes to training JSONL")
    kinds = data.add_subparsers(dest="data_command", required=True)
    convert = kinds.add_parser("convert", help="a table (JSONL, CSV or TSV) to training records")
    shapes = convert.add_subparsers(dest="shape", required=True)

    cls = shapes.add_parser(
        "classification",
        help="(text, label) rows: the label name is the positive, other labels the negatives",
    )
    cls.add_argument("--text-field", default="text")
    cls.add_argument("--label-field", default="label")
    cls.add_argument(
        "--label-names", default="", help="comma-separated names of integer labels 0, 1, ..."
    )
    cls.add_argument("--num-negatives", type=int, default=4, help="other labels per record")
    cls.add_argument("--seed", type=int, default=0, help="which other labels each row gets")

    pairs = shapes.add_parser(
        "pairs", help="STS, paraphrase or bitext pairs: the second text is the first's positive"
    )
    pairs.add_argument("--first-field", default="sentence1")
    pairs.add_argument("--second-field", default="sentence2")
    pairs.add_argument("--score-field", default="", help="STS: keep pairs scoring >= --min-score")
    pairs.add_argument("--min-score", type=float, default=4.0)
    pairs.add_argument(
        "--both-directions", action="store_true", help="also the second -> first record"
    )
    for shape in (cls, pairs):
        shape.add_argument("--input", required=True, help="a .jsonl, .csv or .tsv table")
        shape.add_argument("--output", required=True, help="training JSONL to write")
        shape.add_argument(
            "--instruction", default="", help="on every record (else: the manifest's)"
        )
        shape.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from jaxembed.data.convert import classification_records, pair_records
    from jaxembed.io_utils import atomic_file

    if args.shape == "classification":
        if args.num_negatives < 0:
            raise UserInputError(f"--num-negatives {args.num_negatives}: must be >= 0")
        names = [n.strip() for n in args.label_names.split(",")] if args.label_names else []
        records = classification_records(
            args.input,
            text_field=args.text_field,
            label_field=args.label_field,
            label_names=names,
            num_negatives=args.num_negatives,
            instruction=args.instruction,
            seed=args.seed,
        )
    else:
        records = pair_records(
            args.input,
            first_field=args.first_field,
            second_field=args.second_field,
            score_field=args.score_field,
            min_score=args.min_score,
            both_directions=args.both_directions,
            instruction=args.instruction,
        )
    count = 0
    with atomic_file(args.output) as tmp:  # a bad row leaves no half-written output
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
    if not count:
        raise UserInputError(f"{args.input}: no record to write (every pair below --min-score?)")
    print(f"data convert: {count} records in {args.output}")
