"""`jaxembed train`: train a bi-encoder or reranker from a config file."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxembed.errors import UserInputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser(
        "train",
        help="train a bi-encoder or reranker",
        description="Train from a config file; override any key with --config.KEY=VALUE.",
    )
    tr.add_argument("--config", default=None, help="configs/NAME.py[:ARG] (default: tiny)")
    tr.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard")
    tr.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process)")
    tr.add_argument("--num-processes", type=int, default=None)
    tr.add_argument("--process-id", type=int, default=None)
    tr.add_argument(
        "--launcher",
        choices=("auto", "explicit", "slurm", "tpu", "none"),
        default="auto",
        help="where multi-process settings come from (auto: flags, SLURM, TPU VM, else none)",
    )
    tr.add_argument(
        "--init-timeout", type=int, default=300, help="seconds to wait for every process"
    )
    tr.add_argument(
        "--peer-timeout",
        type=float,
        default=30.0,
        help="multi-process: seconds without a peer's heartbeat before the run stops",
    )
    tr.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import jax

    from jaxembed import distributed
    from jaxembed.checkpoint import describe_last_complete
    from jaxembed.config import apply_overrides, default_config, load_config
    from jaxembed.peers import watch_peers
    from jaxembed.train.loop import train
    from jaxembed.train.settings import run_settings

    config = load_config(args.config) if args.config else default_config()
    apply_overrides(config, args.overrides)
    distributed.initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        timeout_s=args.init_timeout,
        launcher=args.launcher,
    )
    watch = watch_peers(
        args.peer_timeout, lambda: describe_last_complete(Path(args.workdir) / "checkpoints")
    )
    try:
        result = train(run_settings(config, jax.device_count()), args.workdir)
    except BaseException as e:
        if watch is not None:
            # JAX's exit-time shutdown barrier would wait for peers that may never arrive.
            args.exit_at_once = True
            if not isinstance(e, UserInputError):
                watch.settle()  # a lost peer is reported (and exits) from the watch thread
            watch.finish(f"{type(e).__name__}: {str(e).strip()[:300]}")
        raise
    if watch is not None:
        watch.finish()
    status = "stopped by SIGTERM at" if result.preempted else "finished at"
    if distributed.is_main_process():
        print(f"training {status} step {result.final_step}; workdir {args.workdir}")
