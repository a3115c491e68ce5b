"""`jaxembed merge`: merge checkpoints (HF directories or Orbax steps)."""

from __future__ import annotations

import argparse

from jaxembed.cli.common import RUN_CONFIG_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    mg.add_argument("--config", default=None, help=RUN_CONFIG_HELP + " (Orbax inputs)")
    mg.add_argument("--max-shard-size", default="5GB", help="split weights above this size")
    mg.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
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
