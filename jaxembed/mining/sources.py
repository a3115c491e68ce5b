"""Embedding matrices read a block of rows at a time, L2-normalized on the way in.

A `.npy` file is read with plain reads, never memory-mapped: mapped pages of a multi-GB
corpus would count in the process's resident memory, and the point of streaming is that a
corpus of any size costs one chunk of RAM. Teacher ensembles concatenate their teachers'
vectors, the query side scaled by 1/T, so one inner product is the mean of their scores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxembed.errors import UserInputError


class EmbeddingSource:
    """Rows of an [n, dim] matrix; every row comes back L2-normalized, float32."""

    name: str
    n: int
    dim: int

    def _read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # True when _read/_gather return fresh arrays, which are then normalized in place.
    _fresh = False

    def block(self, start: int, stop: int) -> np.ndarray:
        return _normalized(self._read(start, stop), self.name, start, fresh=self._fresh)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.n, size):
            yield start, self.block(start, min(start + size, self.n))

    def rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), np.float32)
        return _normalized(self._gather(rows), self.name, None, rows, fresh=self._fresh)


def _normalized(
    x: np.ndarray,
    name: str,
    start: int | None,
    rows: np.ndarray | None = None,
    fresh: bool = False,
) -> np.ndarray:
    # A chunk of a large corpus is the biggest buffer here: don't copy it once more.
    if fresh and x.dtype == np.float32 and x.flags.c_contiguous:
        out = x
    else:
        out = np.array(x, np.float32, order="C")
    # einsum, unlike np.linalg.norm, makes no chunk-sized temporary of squares.
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = start + i if rows is None else int(rows[i])
        what = "a zero vector" if norms[i] == 0 else "not finite"
        raise UserInputError(f"{name}: row {row} is {what}; cannot L2-normalize it")
    out /= norms[:, None]
    return out


_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class ArraySource(EmbeddingSource):
    def __init__(self, array: np.ndarray, name: str = "embeddings") -> None:
        array = np.asarray(array)
        if array.ndim != 2:
            raise UserInputError(f"{name}: expected a 2-D array, got shape {array.shape}")
        self.array, self.name = array, name
        self.n, self.dim = array.shape

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        return self.array[rows]


class NpySource(EmbeddingSource):
    """A `.npy` file of float16/32/64 rows, read by offset (no memory map)."""

    _fresh = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.is_file():
            raise UserInputError(f"{self.path}: file not found")
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = _HEADER_READERS.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, fortran, dtype = read_header(f)
            except ValueError as e:
                raise UserInputError(f"{self.path}: not a .npy file ({e})") from None
            self.offset = f.tell()
        if len(shape) != 2:
            raise UserInputError(f"{self.path}: expected a 2-D [rows, dim] array, got {shape}")
        if fortran:
            raise UserInputError(f"{self.path}: Fortran-ordered arrays are not supported")
        if dtype.kind != "f":
            raise UserInputError(f"{self.path}: expected floating-point rows, got {dtype}")
        self.dtype = dtype
        self.n, self.dim = shape
        self.row_bytes = self.dim * dtype.itemsize
        expected = self.offset + self.n * self.row_bytes
        if self.path.stat().st_size < expected:
            raise UserInputError(f"{self.path}: truncated ({shape} needs {expected} bytes)")

    def _read(self, start: int, stop: int) -> np.ndarray:
        count = (stop - start) * self.dim
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.row_bytes)
            out = np.fromfile(f, dtype=self.dtype, count=count)
        return out.reshape(stop - start, self.dim)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, row in enumerate(rows.tolist()):
                data = os.pread(fd, self.row_bytes, self.offset + row * self.row_bytes)
                out[i] = np.frombuffer(data, self.dtype)
        finally:
            os.close(fd)
        return out


class EnsembleSource(EmbeddingSource):
    """Teachers side by side, each normalized, then scaled (1/T on the query side)."""

    def __init__(self, sources: Sequence[EmbeddingSource], scale: float) -> None:
        if not sources:
            raise ValueError("an ensemble needs at least one source")
        n = {s.n for s in sources}
        if len(n) != 1:
            counts = ", ".join(f"{s.name}: {s.n}" for s in sources)
            raise UserInputError(f"teachers disagree on the number of rows ({counts})")
        self.sources, self.scale = list(sources), scale
        self.name = " + ".join(s.name for s in sources)
        self.n, self.dim = n.pop(), sum(s.dim for s in sources)

    def block(self, start: int, stop: int) -> np.ndarray:
        return self._combine([s.block(start, stop) for s in self.sources])

    def rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._combine([s.rows(rows) for s in self.sources])

    def _combine(self, parts: list[np.ndarray]) -> np.ndarray:
        x = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        return x if self.scale == 1.0 else np.ascontiguousarray(x * np.float32(self.scale))


def teacher_pair(
    queries: Sequence[EmbeddingSource], corpus: Sequence[EmbeddingSource]
) -> tuple[EmbeddingSource, EmbeddingSource]:
    """(query side, corpus side) whose inner product is the teachers' mean cosine score."""
    if len(queries) != len(corpus) or not queries:
        raise UserInputError(
            f"need one query and one corpus embedding file per teacher, got {len(queries)} "
            f"and {len(corpus)}"
        )
    for q, c in zip(queries, corpus, strict=True):
        if q.dim != c.dim:
            raise UserInputError(
                f"embedding dimensions differ: {q.name} has {q.dim}, {c.name} has {c.dim}"
            )
    if len(queries) == 1:
        return queries[0], corpus[0]
    return EnsembleSource(queries, 1.0 / len(queries)), EnsembleSource(corpus, 1.0)


def write_npy_header(f, n: int, dim: int) -> None:
    """Start a float32 [n, dim] .npy file whose rows are then appended with plain writes."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (n, dim)}
    np.lib.format.write_array_header_1_0(f, header)
