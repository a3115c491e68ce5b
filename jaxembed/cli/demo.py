"""`jaxembed demo`: the offline end-to-end run on a built-in default."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="offline end-to-end run on a built-in default")
    demo.add_argument("--workdir", default=None, help="default: workdirs/demo-DATE-TIME")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=600)
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import time

    from jaxembed.demo import run_demo

    workdir = args.workdir or f"workdirs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    run_demo(workdir, seed=args.seed, steps=args.steps)
