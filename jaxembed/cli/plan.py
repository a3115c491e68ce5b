"""`jaxembed plan`: compile the train step for a TPU slice from a CPU."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    pl.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
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
