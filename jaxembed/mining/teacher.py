"""Teacher embeddings: precomputed `.npy` files, or a model encoded here: a local HF directory
or a jaxembed training workdir (its latest checkpoint, exported to a scratch HF directory).

A teacher model writes its embeddings chunk by chunk to `.npy` files in a scratch directory,
so a corpus of millions costs one chunk of host memory; mining then streams them back.
Queries are encoded with their instruction (the recipes' query format), documents without.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxembed.errors import UserInputError
from jaxembed.mining.inputs import MiningTask
from jaxembed.mining.sources import EmbeddingSource, NpySource, teacher_pair, write_npy_header

ENCODE_CHUNK = 16384  # texts per Encoder.encode call when writing embeddings


def precomputed_sources(
    task: MiningTask,
    query_files: Sequence[str | Path],
    corpus_files: Sequence[str | Path],
) -> tuple[EmbeddingSource, EmbeddingSource]:
    """One (queries.npy, corpus.npy) pair per teacher; row i is record i of the input files."""
    queries = [NpySource(p) for p in query_files]
    corpus = [NpySource(p) for p in corpus_files]
    for source in queries:
        if source.n != task.num_query_rows:
            raise UserInputError(
                f"{source.name}: {source.n} rows but {task.query_name} has "
                f"{task.num_query_rows} records (row i must embed record i)"
            )
    for source in corpus:
        if source.n != len(task.corpus):
            raise UserInputError(
                f"{source.name}: {source.n} rows but {task.corpus_name} has "
                f"{len(task.corpus)} documents (row i must embed document i)"
            )
    return teacher_pair(queries, corpus)


def _encode_to_npy(
    path: Path, n: int, encode: Callable[[int, int], np.ndarray], chunk: int = ENCODE_CHUNK
) -> NpySource:
    with open(path, "wb") as f:
        for start in range(0, n, chunk):
            emb = np.ascontiguousarray(encode(start, min(start + chunk, n)), dtype=np.float32)
            if start == 0:
                write_npy_header(f, n, emb.shape[1])
            f.write(emb.tobytes())
    return NpySource(path)


def _as_hf_directory(path: Path, scratch: Path) -> Path:
    """A training workdir (it has checkpoints/) is exported, latest step, with the run config
    it saved (WORKDIR/config.json); anything else is taken as a Hugging Face directory."""
    if (path / "checkpoints").is_dir():
        from jaxembed.hf_export import export

        return export(path, scratch)
    if not path.is_dir():
        raise UserInputError(f"{path}: teacher directory does not exist")
    return path


def teacher_sources(
    task: MiningTask,
    model_dirs: Sequence[str | Path],
    workdir: str | Path,
    *,
    batch_size: int = 32,
    max_length: int = 512,
    dtype: str | None = None,
    mesh=None,
    show_progress: bool = False,
) -> tuple[EmbeddingSource, EmbeddingSource]:
    """Encode the mined queries (row i = query i of the task) and the corpus with each model
    (HF directories or training workdirs)."""
    from jaxembed.models.encoder import Encoder

    workdir = Path(workdir)
    kw = dict(batch_size=batch_size, max_length=max_length, show_progress=show_progress)
    texts = [p.full_text() for p in task.corpus]
    queries, corpus = [], []
    for t, model_dir in enumerate(model_dirs):
        model_dir = _as_hf_directory(Path(model_dir), workdir / f"teacher_{t}")
        encoder = Encoder.from_pretrained(model_dir, mesh=mesh, dtype=dtype)

        def encode_queries(start: int, stop: int, encoder=encoder) -> np.ndarray:
            return encoder.encode_per_instruction(
                task.query_texts[start:stop], task.instructions[start:stop], **kw
            )

        def encode_corpus(start: int, stop: int, encoder=encoder) -> np.ndarray:
            return encoder.encode(texts[start:stop], **kw)

        queries.append(
            _encode_to_npy(workdir / f"queries_{t}.npy", len(task.query_texts), encode_queries)
        )
        corpus.append(_encode_to_npy(workdir / f"corpus_{t}.npy", len(texts), encode_corpus))
    return teacher_pair(queries, corpus)
