"""What several subcommands' arguments share."""

from __future__ import annotations

import argparse

RUN_CONFIG_HELP = "the training run's config (default: WORKDIR/config.json); with --config.KEY=V"


def parse_mesh(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected DATA,FSDP,TENSOR, e.g. -1,1,1")
    return sizes  # type: ignore[return-value]
