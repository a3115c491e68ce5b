"""`jaxembed export`: a training step as a Hugging Face directory (or PEFT adapter)."""

from __future__ import annotations

import argparse

from jaxembed.cli.common import RUN_CONFIG_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="Orbax training checkpoint → Hugging Face directory")
    ex.add_argument("--workdir", required=True, help="training workdir (checkpoints/)")
    ex.add_argument("--step", default="latest", help="checkpoint step, or 'latest'")
    ex.add_argument("--output", required=True, help="HF directory to write")
    ex.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output")
    ex.add_argument("--config", default=None, help=RUN_CONFIG_HELP)
    ex.add_argument("--max-shard-size", default="5GB", help="split weights above this size")
    ex.add_argument(
        "--adapter",
        action="store_true",
        help="LoRA runs: write the adapters as a PEFT adapter directory instead of the model "
        "with the adapters merged into its weights (the default)",
    )
    ex.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from jaxembed import tasks
    from jaxembed.run_steps import load_run_config

    common = dict(
        step=args.step,
        dtype=args.dtype,
        overwrite=args.overwrite,
        config_spec=args.config,
        overrides=args.overrides,
    )
    if args.adapter:
        from jaxembed.peft_export import export_adapter

        del common["dtype"]  # adapters are written in float32, as PEFT trains them
        out = export_adapter(args.workdir, args.output, **common)
        print(f"wrote PEFT LoRA adapter {out}")
        return
    task = tasks.get(load_run_config(args.workdir, args.config, args.overrides).model.task)
    out = task.export(args.workdir, args.output, max_shard_size=args.max_shard_size, **common)
    kind = "" if task.name == "embedding" else f"{task.name} "
    print(f"wrote Hugging Face {kind}directory {out}")
