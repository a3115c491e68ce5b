"""The exceptions the CLI reports as one line (no traceback unless JAXEMBED_DEBUG=1).

`UserInputError` is bad input (files, configs, flags): exit status 2. `RunStopped` is a run
that stopped on a fault it detected (a non-finite step, a failed checkpoint save, a lost
peer): exit status 1. Their messages name the file, line, key or step and what is wrong.
Anything else reaching the CLI is a bug, still reported in one line.
"""


class UserInputError(ValueError):
    """Bad input from the user; the message names the file, line or key and what is wrong."""


class RunStopped(RuntimeError):
    """A run stopped on a fault; the message says what happened and what a restart resumes."""


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`: an exception in one line, for reports that must
    stay one line (multi-line messages from Orbax or XLA would otherwise flood them)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
