"""safetensors files (and sharded checkpoints): zero-copy reading as numpy memmaps, and
streaming writes.

We parse the format ourselves (8-byte header length, JSON header, raw little-endian data) so
that bfloat16 tensors come back as `ml_dtypes.bfloat16` views and nothing is read until a
slice is asked for: importing an 8B checkpoint never holds a second full copy in memory.
Writing takes the tensors one at a time from an iterator, in transformers' shard layout
(`model.safetensors`, or numbered shards plus `model.safetensors.index.json`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jaxembed.errors import UserInputError
from jaxembed.progress import progress_bar

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class SafetensorsFile:
    """One .safetensors file; `get(name)` returns a read-only memmap view."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserInputError(f"{self.path}: not a readable safetensors file ({e})") from e
        header.pop("__metadata__", None)
        self._entries = header
        self._data_start = 8 + header_len
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise UserInputError(
                f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}"
            )
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = entry["data_offsets"]
        raw = self._mmap[self._data_start + begin : self._data_start + end]
        return raw.view(dtype).reshape(entry["shape"])


class SafetensorsCheckpoint:
    """All tensors of a HF directory: `model.safetensors` or a sharded index."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        single_path = self.directory / SINGLE_NAME
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise UserInputError(f"{index_path}: malformed safetensors index ({e})") from e
            self._where = dict(weight_map)
        elif single_path.is_file():
            self._where = {name: SINGLE_NAME for name in self._file(SINGLE_NAME).keys()}
        else:
            found = sorted(p.name for p in self.directory.glob("*.bin")) + sorted(
                p.name for p in self.directory.glob("*.pt*")
            )
            hint = f" (found {found}: pickled weights are never loaded; convert to safetensors)"
            raise UserInputError(
                f"{self.directory}: no {SINGLE_NAME} or {INDEX_NAME}" + (hint if found else "")
            )

    def _file(self, filename: str) -> SafetensorsFile:
        if filename not in self._files:
            path = self.directory / filename
            if not path.is_file():
                raise UserInputError(f"{path}: shard named in {INDEX_NAME} does not exist")
            self._files[filename] = SafetensorsFile(path)
        return self._files[filename]

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def location(self, name: str) -> Path:
        return self.directory / self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(self._where[name]).shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._file(self._where[name]).get(name)


_SAFETENSORS_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float16): "F16",
}


DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' "5GB"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def parse_size(text: str | int) -> int:
    """`5GB`, `500MB`, `64KB` (decimal units, as transformers' max_shard_size) or bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise UserInputError(f"max shard size {text!r}: expected e.g. 5GB, 500MB or a byte count")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20}
    units["gib"] = 2**30
    size = int(float(match.group(1)) * units[(match.group(2) or "b").lower()])
    if size < 1:
        raise UserInputError(f"max shard size {text!r} must be positive")
    return size


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive tensors per file, each file at most `max_shard_bytes` (a bigger tensor gets
    a file of its own), as transformers' `save_pretrained` splits."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _header(specs: Sequence[TensorSpec]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        entries[spec.name] = {
            "dtype": _SAFETENSORS_DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment


def write_safetensors(
    directory: Path,
    specs: Sequence[TensorSpec],
    arrays: Iterable[np.ndarray],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_SIZE,
    desc: str = "write",
) -> list[str]:
    """Write `arrays` (produced lazily, in `specs` order) as `model.safetensors` or sharded
    files plus `model.safetensors.index.json`; each array is written and dropped in turn.
    Returns the file names."""
    shards = plan_shards(specs, max_shard_bytes)
    if len(shards) == 1:
        names = [SINGLE_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    produced: Iterator[np.ndarray] = iter(arrays)
    bar = progress_bar(total=len(specs), desc=desc, unit="tensor")
    for name, shard in zip(names, shards, strict=True):
        header = _header(shard)
        with open(directory / name, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for spec in shard:
                array = next(produced)
                if array.shape != spec.shape or array.dtype != spec.dtype:
                    raise ValueError(
                        f"{spec.name}: got {array.shape} {array.dtype}, "
                        f"planned {spec.shape} {spec.dtype}"
                    )
                f.write(np.ascontiguousarray(array).view(np.uint8).data)
                bar.update(1)
    bar.close()
    if next(produced, None) is not None:
        raise ValueError("more arrays than planned tensors")
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in specs)},
            "weight_map": {
                s.name: n for n, shard in zip(names, shards, strict=True) for s in shard
            },
        }
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names
