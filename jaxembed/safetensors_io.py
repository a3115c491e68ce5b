"""Zero-copy reading of safetensors files (and sharded checkpoints) as numpy memmaps.

We parse the format ourselves (8-byte header length, JSON header, raw little-endian data) so
that bfloat16 tensors come back as `ml_dtypes.bfloat16` views and nothing is read until a
slice is asked for: importing an 8B checkpoint never holds a second full copy in memory.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxembed.errors import UserInputError

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
