"""Bad-record reporting: one exception type, and the skip-mode ledger that keeps rejects."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Literal

from jaxembed.errors import UserInputError

OnError = Literal["raise", "skip"]


class DataFormatError(UserInputError):
    """A record that cannot be used, located by file and 1-based line (the CLI reports it
    like any bad input: one line, exit status 2)."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}:{line}: {reason}")


class Rejects:
    """Counts skipped records and writes each one (location, reason, raw line) as JSONL.

    Skip mode must leave a trace of every record it drops, so readers refuse `on_error="skip"`
    without one of these.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.count = 0
        self.by_reason: collections.Counter[str] = collections.Counter()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")  # closed by close() / __exit__

    def add(self, error: DataFormatError, raw: bytes | str = b"") -> None:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        entry = {"file": error.path, "line": error.line, "reason": error.reason, "raw": raw}
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        self.count += 1
        # The reason's first clause is its kind; the detail after ':' varies per record.
        self.by_reason[error.reason.split(":")[0]] += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Rejects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ErrorPolicy:
    """Applies `on_error` to one bad record: raise it, or log it to the rejects file."""

    def __init__(self, on_error: OnError, rejects: Rejects | None) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if on_error == "skip" and rejects is None:
            raise ValueError("on_error='skip' needs a Rejects file: nothing is dropped silently")
        self.on_error = on_error
        self.rejects = rejects

    def handle(self, error: DataFormatError, raw: bytes | str = b"") -> None:
        if self.on_error == "raise":
            raise error
        assert self.rejects is not None
        self.rejects.add(error, raw)
