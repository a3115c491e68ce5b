"""faiss inner-product search over a corpus that need not fit in memory.

`flat` (the default) is exact: the corpus streams through in chunks, each searched with
`IndexFlatIP`'s brute-force kernel (`faiss.knn`; `faiss.knn_gpu` when faiss sees a GPU), and a
faiss `ResultHeap` keeps each query's best k across chunks, so memory is one chunk plus the
[queries, k] heap however large the corpus. `ivf` (IVF{nlist},Flat) and `hnsw` (HNSW{m},Flat)
build one approximate index over the whole corpus (its vectors held by the index) for corpora
where exact search is too slow; their scores are still exact inner products, only the
candidate set is approximate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
from collections.abc import Iterator
from typing import Literal

import faiss
import numpy as np

from jaxembed.errors import UserInputError
from jaxembed.mining.sources import EmbeddingSource
from jaxembed.progress import progress_bar

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_KINDS = ("flat", "ivf", "hnsw")
GPU_MAX_K = 2048  # faiss GPU kernels return at most this many neighbours per query
CHUNK_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    kind: IndexKind = "flat"
    # Rows per streamed chunk (flat) or per add (ivf/hnsw); default: 64 MiB of float32 rows.
    corpus_chunk: int | None = None
    nlist: int | None = None  # IVF lists; default 4 * sqrt(corpus size), >= 39 rows per list
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 256  # raised to k when k is larger
    gpu: bool | None = None  # None: use faiss GPU when faiss.get_num_gpus() > 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise UserInputError(f"index {self.kind!r} is not one of {INDEX_KINDS}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("nlist", "corpus_chunk"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")

    def chunk_rows(self, dim: int) -> int:
        return self.corpus_chunk or max(1, CHUNK_BYTES // (4 * dim))


def _use_gpu(config: IndexConfig) -> bool:
    available = faiss.get_num_gpus() > 0 and hasattr(faiss, "StandardGpuResources")
    if config.gpu and not available:
        raise UserInputError("faiss GPU was requested but faiss sees no GPU (faiss-gpu build?)")
    return available if config.gpu is None else bool(config.gpu)


class CorpusSearch:
    """Top-k inner-product search over the rows of `corpus` where `keep` is True (all rows
    when None); ids returned are corpus rows, -1 (score -inf) where fewer than k exist."""

    def __init__(
        self,
        corpus: EmbeddingSource,
        keep: np.ndarray | None = None,
        config: IndexConfig = IndexConfig(),
        show_progress: bool = False,
    ) -> None:
        if corpus.n == 0:
            raise UserInputError(f"{corpus.name}: the corpus is empty")
        self.corpus, self.config, self.show_progress = corpus, config, show_progress
        # No mask when every row is kept: masking copies each chunk.
        self.keep = None if keep is None or np.all(keep) else np.asarray(keep, bool)
        self.gpu = _use_gpu(config)
        self._gpu_res = faiss.StandardGpuResources() if self.gpu else None
        self.index = None
        self.ids = None
        if config.kind != "flat":
            self._build()

    def _kept(self, start: int, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(start, start + len(block), dtype=np.int64)
        if self.keep is None:
            return block, rows
        mask = self.keep[start : start + len(block)]
        return np.ascontiguousarray(block[mask]), rows[mask]

    def _chunks(self, desc: str, nested: bool = False):
        size = self.config.chunk_rows(self.corpus.dim)
        chunks = self.corpus.chunks(size)
        total = math.ceil(self.corpus.n / size)
        # A bar nested under the query bar only reads well on a terminal, not in a log file.
        disable = not self.show_progress or total < 2 or (nested and not sys.stderr.isatty())
        for start, block in progress_bar(
            chunks, total=total, desc=desc, leave=False, disable=disable
        ):
            yield self._kept(start, block)

    def _build(self) -> None:
        c = self.config
        n = int(self.corpus.n if self.keep is None else self.keep.sum())
        d = self.corpus.dim
        if c.kind == "ivf":
            # Default 4 sqrt(n) lists, but no fewer than 39 training points each (faiss's minimum).
            nlist = min(c.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39)), n)
            index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
            # faiss wants 39..256 training points per list; a random sample bounds memory.
            rows = np.arange(self.corpus.n) if self.keep is None else np.flatnonzero(self.keep)
            rng = np.random.default_rng(c.seed)
            sample = np.sort(rng.choice(rows, size=min(len(rows), 256 * nlist), replace=False))
            index.train(self.corpus.rows(sample))
            faiss.extract_index_ivf(index).nprobe = min(c.nprobe, nlist)
        else:
            index = faiss.IndexHNSWFlat(d, c.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = c.ef_construction
        ids = []
        for vectors, rows in self._chunks(f"index ({c.kind})"):
            if len(rows):
                index.add(vectors)
                ids.append(rows)
        self.ids = np.concatenate(ids)
        if self.gpu and c.kind == "ivf":
            index = faiss.index_cpu_to_all_gpus(index)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k] float32, corpus rows [B, k] int64), best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.shape[1] != self.corpus.dim:
            raise UserInputError(
                f"query embeddings have dimension {queries.shape[1]} but {self.corpus.name} "
                f"has {self.corpus.dim}"
            )
        if self.index is not None:
            return self._search_index(queries, k)
        heap = faiss.ResultHeap(len(queries), k, keep_max=True)
        gpu = self.gpu and k <= GPU_MAX_K
        if self.gpu and not gpu:
            log.warning("k=%d is above faiss GPU's limit of %d: searching on CPU", k, GPU_MAX_K)
        with _blas_kernel():
            for vectors, rows in self._chunks("search", nested=True):
                if len(rows):
                    self._search_chunk(queries, vectors, rows, k, heap, gpu)
        heap.finalize()
        return _pad_missing(heap.D, heap.I)

    def _search_chunk(
        self,
        queries: np.ndarray,
        vectors: np.ndarray,
        rows: np.ndarray,
        k: int,
        heap: faiss.ResultHeap,
        gpu: bool,
    ) -> None:
        k = min(k, len(rows))
        if gpu:
            scores, local = faiss.knn_gpu(
                self._gpu_res, queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT
            )
        else:
            # IndexFlatIP's own kernel, without copying the chunk into an index.
            scores, local = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, rows[local])

    def _search_index(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.config.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.config.ef_search, k)
        scores, local = self.index.search(queries, k)
        ids = np.where(local >= 0, self.ids[np.maximum(local, 0)], -1)
        return _pad_missing(scores, ids)


@contextlib.contextmanager
def _blas_kernel() -> Iterator[None]:
    """faiss 1.15 sends fewer than 128,000 queries to a SIMD loop that runs 2-4x slower here
    than its BLAS path (measured on the 2-core CPU machine, 300 x 43,690 x 384); blocks of
    queries belong on BLAS, with 4096-row database tiles (16 MiB of scores per 1024 queries).
    The globals are restored afterwards."""
    cvar = faiss.cvar
    saved = cvar.distance_compute_blas_threshold, cvar.distance_compute_blas_database_bs
    cvar.distance_compute_blas_threshold, cvar.distance_compute_blas_database_bs = 20, 4096
    try:
        yield
    finally:
        cvar.distance_compute_blas_threshold, cvar.distance_compute_blas_database_bs = saved


def _pad_missing(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    return scores, ids.astype(np.int64)
