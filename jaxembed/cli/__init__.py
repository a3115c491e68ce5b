"""The `jaxembed` command line: one module per subcommand (argument parsing and a call into
the library), and `main`, which turns every failure a user can reach into one line."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from jaxembed.cli import (  # the subcommand modules import no JAX at load
    convert_llama2c,
    data,
    demo,
    encode,
    eval,
    export,
    merge,
    mine,
    plan,
    rerank,
    synth,
    train,
)
from jaxembed.errors import RunStopped, UserInputError, first_line
from jaxembed.host_memory import retain_freed_memory
from jaxembed.platforms import prefer_cpu_without_accelerators

SUBCOMMANDS = (
    encode, demo, train, plan, eval, mine, synth, data, convert_llama2c, rerank, export, merge,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxembed",
        description="Train, evaluate, mine, export and merge text embedding models and rerankers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --config.KEY=VALUE overrides are collected here; argparse sees the rest.
    overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
    parser = build_parser()
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    if overrides and args.command not in ("train", "export", "merge", "plan"):
        print(
            f"jaxembed {args.command}: error: --config.* is only for train, export, merge and plan",
            file=sys.stderr,
        )
        return 2
    args.overrides = overrides
    retain_freed_memory()  # before JAX starts its threads; see host_memory.py
    prefer_cpu_without_accelerators()  # before JAX starts a backend; see platforms.py
    if getattr(args, "check", None):
        args.check(parser, args)
    code = run_reporting_errors(args.command, lambda: args.func(args))
    if code and getattr(args, "exit_at_once", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _hide_orbax_logs() -> None:
    """Orbax logs each failure of its background save threads (with tracebacks) before the
    error reaches jaxembed, which then reports it in one line; its routine notes say nothing
    a user acts on either. JAXEMBED_DEBUG=1 keeps them."""
    import logging

    from absl import logging as absl_logging  # its logger class names the real caller

    def not_orbax(record: logging.LogRecord) -> bool:
        return f"{os.sep}orbax{os.sep}" not in record.pathname

    absl_logging.get_absl_logger().addFilter(not_orbax)


def run_reporting_errors(command: str, body: Callable[[], object]) -> int:
    """Run a command; every failure a user can reach is one line on stderr and an exit
    status (2 bad input, 1 a stopped run or an unexpected error, 130 interrupted). The
    traceback is shown only with JAXEMBED_DEBUG=1."""
    debug = os.environ.get("JAXEMBED_DEBUG", "") not in ("", "0")
    if not debug:
        _hide_orbax_logs()
    try:
        body()
        return 0
    except UserInputError as e:
        message, code = str(e), 2
    except RunStopped as e:
        message, code = str(e), 1
    except KeyboardInterrupt:
        message, code = "interrupted; outputs are written atomically, none was left half-done", 130
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        message, code = f"{where}{e.strerror or e}", 1
    except Exception as e:  # a bug or an unforeseen fault: still one line
        message = f"unexpected {first_line(e)}"
        if not debug:
            message += " (set JAXEMBED_DEBUG=1 for the traceback)"
        code = 1
    if debug:
        traceback.print_exc()
    print(f"jaxembed {command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
