"""`jaxembed convert-llama2c`: a llama2.c checkpoint and tokenizer as an HF directory."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    conv = sub.add_parser("convert-llama2c", help="llama2.c checkpoint + tokenizer → HF dir")
    conv.add_argument("--checkpoint", required=True)
    conv.add_argument("--tokenizer", required=True)
    conv.add_argument("--output", required=True)
    conv.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from jaxembed import llama2c

    out = llama2c.convert(args.checkpoint, args.tokenizer, args.output)
    print(f"wrote Hugging Face Llama directory {out}")
