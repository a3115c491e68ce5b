"""Atomic output: files and directories appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jaxembed.errors import UserInputError


def check_output_directories(*paths: str | Path) -> None:
    """Each output file's directory exists: checked before the work, not after it."""
    for path in map(Path, paths):
        if not path.parent.is_dir():
            raise UserInputError(f"{path}: output directory {path.parent} does not exist")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    check_output_directories(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)  # on disk before the rename: a power cut leaves the old file or the new
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserInputError(f"{path}: already exists (refusing to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_writable_directory(path: str | Path, what: str) -> None:
    """Create `path` if needed and prove a file can be written there, before any work is done
    (read-only storage, a full disk or a file in the way is named now, not at step 1000)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserInputError(f"{path}: {what} is not writable ({e.strerror or e})") from None
